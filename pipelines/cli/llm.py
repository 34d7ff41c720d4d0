"""The standalone `selfguided score` and `selfguided judge` commands, on JSONL files.

`judge` grades with a jury (`--judges a,b@url,...`, one judge by default) and prints how far the
judges agree; `--mode pair` compares with a baseline model's answers (judging.pairwise).

`pipelines/cli/main.py` registers them (COMMANDS). Each subcommand sets `func`, a callable taking
the parsed arguments and returning the exit code: 0 when every record got a verdict, 1 when some
failed (they are in the output with their `error`, and rerunning the same command with the same
--cache retries only those), 2 when the input is unusable. Like the openai SDK, both read
OPENAI_BASE_URL and OPENAI_API_KEY; with neither set and no model asked for, they say so and use
the offline heuristic judge instead (a model asked for by name with no endpoint is an error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from selfguided.components.data.jsonl import DataError, write_jsonl
from selfguided.components.data.questions import load_questions
from selfguided.components.data.seed import load_seed
from selfguided.components.llm.config import DEFAULT_PRICES, STRUCTURED_OUTPUT_MODES, LLMConfig, endpoint_configured
from selfguided.components.llm.request import UsageSummary
from selfguided.components.judging.answers import load_answers
from selfguided.pipelines.options import add_option

_ENDPOINT_HELP = """\
endpoint:
  OPENAI_BASE_URL   OpenAI-compatible endpoint (vLLM, Azure, a proxy); default: the OpenAI API
  OPENAI_API_KEY    its key
  With neither set, the offline heuristic judge is used and no LLM is called; naming a
  model (--score-model / --judge-model) without an endpoint is an error.

resume:
  With --cache every answer is stored the moment it arrives. Rerunning the same command
  (after a crash, kill -9, or with failed records) sends requests only for what is missing.

limits:
  --llm-concurrency is a ceiling: when the endpoint answers 429 to requests beyond what it takes in
  flight, the client lowers its concurrency (shown as conc= on the progress bar) and grows it
  back while requests succeed. 429s are waited out within --rate-limit-budget and do not count
  as attempts; only real errors (5xx, timeouts) use up --max-attempts.
"""


def _add_llm_options(parser: argparse.ArgumentParser, model_option: str, role: str) -> None:
    defaults = LLMConfig()
    group = parser.add_argument_group("LLM client")
    add_option(group, model_option, old=("--model",), dest="model", metavar="MODEL",
               help=f"the {role} model on the endpoint (default: {defaults.model} with an endpoint, else the "
                    "offline heuristic)")
    add_option(group, "--llm-concurrency", old=("--concurrency",), dest="concurrency", type=int,
               default=defaults.concurrency,
               help="requests in flight at most; fewer while the endpoint refuses that many with 429 "
                    "(default: %(default)s)")
    group.add_argument("--cache", metavar="PATH",
                       help="answer cache: a directory or s3://bucket/prefix; makes reruns resume (default: none)")
    group.add_argument("--batch", action="store_true",
                       help="use the OpenAI Batch API: half price, results within 24 h; needs --cache to resume")
    group.add_argument("--max-attempts", type=int, default=defaults.max_attempts,
                       help="attempts per request that end in a real error (5xx, timeout) before it is marked "
                            "failed; 429s do not count (default: %(default)s)")
    group.add_argument("--rate-limit-budget", type=float, default=defaults.rate_limit_budget_s, metavar="SECONDS",
                       help="how long one request may keep being refused with 429 before it is marked failed "
                            "(default: %(default)g)")
    group.add_argument("--max-input-tokens", type=int, default=defaults.max_input_tokens, metavar="N",
                       help="largest prompt sent, in estimated tokens (no tokenizer: 1 per Hangul or other "
                            "non-ASCII character, 1 per 3 ASCII characters); a larger one is never sent: score "
                            "sets its record aside as a reject (default: %(default)s)")
    group.add_argument("--timeout", type=float, default=defaults.timeout_s,
                       help="seconds to wait for one answer (default: %(default)s)")
    group.add_argument("--rpm", type=float, default=None,
                       help="requests per minute to stay under (default: learnt from x-ratelimit headers)")
    group.add_argument("--structured-output", choices=STRUCTURED_OUTPUT_MODES, default=defaults.structured_output,
                       help="json: JSON-schema answers; text: [[rating]] answers; auto: JSON where the endpoint "
                            "supports it (default: %(default)s)")
    group.add_argument("--poll-interval", type=float, default=defaults.poll_interval_s,
                       help="seconds between batch status polls (default: %(default)s)")
    group.add_argument("--price", nargs=3, action="append", metavar=("MODEL", "PROMPT_USD", "COMPLETION_USD"),
                       help="price per 1M tokens, repeatable (built in: "
                            + ", ".join(f"{m} {p}/{c}" for m, (p, c) in DEFAULT_PRICES.items()) + ")")


def _config(args: argparse.Namespace) -> LLMConfig:
    prices = dict(DEFAULT_PRICES)
    for model, prompt_usd, completion_usd in args.price or []:
        prices[model] = (float(prompt_usd), float(completion_usd))
    return LLMConfig(
        model=args.model or LLMConfig().model,
        concurrency=args.concurrency,
        max_attempts=args.max_attempts,
        timeout_s=args.timeout,
        structured_output=args.structured_output,
        rpm_limit=args.rpm,
        cache=args.cache,
        prices=prices,
        batch=args.batch,
        poll_interval_s=args.poll_interval,
        rate_limit_budget_s=args.rate_limit_budget,
        max_input_tokens=args.max_input_tokens,
    )


def add_score_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `score SEED.jsonl -o SCORED.jsonl`: rate seed records on the four criteria."""
    parser = subparsers.add_parser(
        "score",
        help="rate seed records (helpfulness, relevance, accuracy, detail) with an LLM",
        description=(
            "Rate every seed record (Alpaca, KoAlpaca or chat-messages JSONL) on helpfulness, relevance, "
            "accuracy and level of detail, 1-10 each, with a GPT-4 class model. The output has the seed "
            "record plus 'scores', 'score' (their mean) and 'judge'; a record that could not be scored keeps "
            "its place with 'scores': null and an 'error'. Unusable input lines (text fields that are not "
            "strings, a missing field, a prompt over --max-input-tokens, ...) go to OUTPUT.rejects.jsonl with "
            "the reason, before any request."
        ),
        epilog=_ENDPOINT_HELP
        + "\nexample:\n  selfguided score seed.jsonl -o scored.jsonl --cache .selfguided/llm-cache",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("seed", type=Path, help="seed records, JSONL")
    parser.add_argument("-o", "--output", type=Path, required=True, help="scored records, JSONL")
    _add_llm_options(parser, "--score-model", "scoring")
    parser.set_defaults(func=run_score)
    return parser


def add_judge_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `judge QUESTIONS.jsonl ANSWERS.jsonl -o JUDGMENTS.jsonl`: grade model answers."""
    parser = subparsers.add_parser(
        "judge",
        help="grade model answers to eval questions with an LLM judge (FastChat formats)",
        description=(
            "Grade every turn of FastChat model answers to FastChat question.jsonl questions. "
            "single: Vicuna-style grading on helpfulness, relevance, accuracy and detail plus an overall "
            "score, 1-10, by one judge or a jury (--judges); a jury's score is the mean (or median) of its "
            "judges', every judge's own scores stay in the row's 'judges'. pair: the first turn of each answer "
            "against --baseline answers, asked twice with the positions swapped; a win counts only when both "
            "orders agree. Answers not written in Korean are penalised as in KoMT-Bench (square root of the "
            "score; in pairs, the Korean answer wins)."
        ),
        epilog=_ENDPOINT_HELP
        + "\njury keys:\n  A judge name@url gets its key from SELFGUIDED_JUDGE_KEY_<NAME> (NAME upper-cased, other "
        "characters as _), never from OPENAI_API_KEY.\n"
        + "\nexample:\n  selfguided judge questions.jsonl answers.jsonl -o judgments.jsonl"
        " --cache .selfguided/llm-cache --judges gpt-4o,qwen@http://127.0.0.1:8000/v1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("questions", type=Path, help="FastChat question.jsonl (question_id, category, turns)")
    parser.add_argument("answers", type=Path, help="FastChat model_answer JSONL, one or more models")
    parser.add_argument("-o", "--output", type=Path, required=True, help="FastChat model_judgment JSONL")
    parser.add_argument("--mode", choices=("single", "pair"), default="single", help="grading mode (default: %(default)s)")
    parser.add_argument("--baseline", type=Path, metavar="ANSWERS.jsonl",
                        help="the baseline model's answers, required for --mode pair")
    jury = parser.add_argument_group("jury (single mode)")
    jury.add_argument("--judges", default="", metavar="A,B@URL,...",
                      help="judges: a model on the endpoint, or name@url on its own endpoint (default: --judge-model alone)")
    jury.add_argument("--judge-repeats", type=int, default=1, metavar="K",
                      help="grade a stratified sample K times per judge, to measure judge noise (default: 1)")
    jury.add_argument("--judge-temperature", type=float, default=0.0, metavar="T",
                      help="the judges' sampling temperature (default: 0)")
    jury.add_argument("--min-judges", type=int, default=0, metavar="N",
                      help="judges an item needs for a jury score; fewer: the item fails (default: 0 = all)")
    jury.add_argument("--jury-aggregate", dest="aggregate", choices=("mean", "median"), default="mean",
                      help="the jury's score from its judges' (default: %(default)s)")
    _add_llm_options(parser, "--judge-model", "judging")
    parser.set_defaults(func=run_judge)
    return parser


def _no_endpoint(step: str) -> None:
    print(
        f"{step}: no OpenAI-compatible endpoint configured (OPENAI_BASE_URL and OPENAI_API_KEY are unset); "
        "using the offline heuristic judge",
        file=sys.stderr,
    )


def _retry_advice(cache: str | None) -> str:
    """What to do about failed records: with a cache, only they are sent again."""
    if cache:
        return f"rerun the same command (same --cache {cache}) to retry only those"
    return "rerun the same command to retry them"


def _model_without_endpoint(step: str, args: argparse.Namespace) -> bool:
    """A model asked for by name with no endpoint to ask: said in one line (the caller exits 2)."""
    from selfguided.components.judging.jury import judge_named

    if args.model and judge_named(args.model).calls_llm and not endpoint_configured():
        option = "--score-model" if step == "score" else "--judge-model"
        print(f"{step}: {option} {args.model} needs an LLM endpoint: set OPENAI_BASE_URL and/or OPENAI_API_KEY, "
              f"or leave {option} out for the offline heuristic judge", file=sys.stderr)
        return True
    return False


def _finish(step: str, output: Path, rows: list[dict[str, Any]], usage: UsageSummary | None,
            cache: str | None = None) -> int:
    write_jsonl(output, rows)
    print(f"wrote {len(rows)} rows to {output}", file=sys.stderr)
    if usage is None:
        return 0
    print(usage.summary_line())
    if usage.failed:
        print(f"{step}: {usage.failed} failed (see their 'error' field); {_retry_advice(cache)}", file=sys.stderr)
        return 1
    return 0


def _checked_config(step: str, args: argparse.Namespace) -> LLMConfig | None:
    """The LLMConfig of the options, or None after saying which option is out of range."""
    try:
        return _config(args)
    except ValueError as exc:
        print(f"{step}: {exc}", file=sys.stderr)
        return None


def run_score(args: argparse.Namespace) -> int:
    from selfguided.components.judging.scoring import score_offline, score_with_llm, set_aside_too_long

    config = _checked_config("score", args)
    if config is None or _model_without_endpoint("score", args):
        return 2
    try:
        loaded = load_seed(args.seed)
    except DataError as exc:
        print(f"score: {exc}", file=sys.stderr)
        return 2
    records, too_long = set_aside_too_long(loaded, args.seed, args.max_input_tokens)
    rejects = sorted([*loaded.rejects, *too_long], key=lambda r: r.line)
    if rejects:
        rejects_path = args.output.with_name(args.output.stem + ".rejects.jsonl")
        write_jsonl(rejects_path, (r.to_json() for r in rejects))
        print(f"score: {len(rejects)} unusable record(s) set aside in {rejects_path}"
              + (f" ({len(too_long)} over --max-input-tokens {args.max_input_tokens})" if too_long else ""),
              file=sys.stderr)
    if not endpoint_configured():
        _no_endpoint("score")
        return _finish("score", args.output, score_offline(records), None)
    scored, usage = score_with_llm(records, config)
    return _finish("score", args.output, scored, usage, args.cache)


def run_judge(args: argparse.Namespace) -> int:
    if args.mode == "pair" and args.baseline is None:
        print("judge: --mode pair needs --baseline ANSWERS.jsonl", file=sys.stderr)
        return 2
    jury_options = {"--judges": args.judges != "", "--judge-repeats": args.judge_repeats != 1,
                    "--judge-temperature": args.judge_temperature != 0.0, "--min-judges": args.min_judges != 0,
                    "--jury-aggregate": args.aggregate != "mean"}
    if args.mode == "pair" and any(jury_options.values()):
        given = ", ".join(name for name, set_ in jury_options.items() if set_)
        print(f"judge: {given} grade with a jury, in --mode single only; --mode pair compares with one judge "
              "(--judge-model)", file=sys.stderr)
        return 2
    config = _checked_config("judge", args)
    if config is None or _model_without_endpoint("judge", args):
        return 2
    try:
        questions = load_questions(args.questions)
        answers = load_answers(args.answers)
        baseline = load_answers(args.baseline) if args.baseline else None
    except DataError as exc:
        print(f"judge: {exc}", file=sys.stderr)
        return 2
    if args.mode == "pair":
        if not endpoint_configured():
            print("judge: --mode pair needs an LLM endpoint (set OPENAI_BASE_URL or OPENAI_API_KEY)", file=sys.stderr)
            return 2
        from selfguided.components.judging.pairwise import judge_pairs

        try:
            rows, usage = judge_pairs(questions, answers, baseline or [], config)
        except DataError as exc:
            print(f"judge: {exc}", file=sys.stderr)
            return 2
        return _finish("judge", args.output, rows, usage, args.cache)
    return _run_jury(args, config, questions, answers)


def _run_jury(args: argparse.Namespace, config: LLMConfig, questions: list[dict[str, Any]],
              answers: list[dict[str, Any]]) -> int:
    from selfguided.components.evaluation.agreement import jury_agreement
    from selfguided.components.evaluation.report import judges_section
    from selfguided.components.evaluation.rows import RowJudgments
    from selfguided.components.judging.jury import JuryConfig, judge_with_jury, parse_judges
    from selfguided.components.judging.offline import OFFLINE_JUDGE_NAME

    default = config.model
    if not args.judges and not endpoint_configured():
        _no_endpoint("judge")
        default = OFFLINE_JUDGE_NAME
    try:
        jury = JuryConfig(parse_judges(args.judges, default=default), aggregate=args.aggregate,
                          min_judges=args.min_judges, repeats=args.judge_repeats, temperature=args.judge_temperature,
                          concurrency=config.concurrency, cache=config.cache or "", template=config)
        rows, usage = judge_with_jury(questions, answers, jury)
    except (ValueError, RuntimeError) as exc:
        print(f"judge: {exc}", file=sys.stderr)
        return 2
    write_jsonl(args.output, rows)
    print(f"wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    for judge in usage.judges:
        print(f"{judge.judge.model}: {judge.items} items, {judge.missing} without a verdict, cost ${judge.cost_usd:.4f}")
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    if usage.size > 1 or usage.repeats > 1:
        section = judges_section(jury_agreement([RowJudgments(model, "teacher", judged)
                                                 for model, judged in by_model.items()]))
        print(f"## {section.title}\n\n{section.markdown}")
    failed = sum(1 for r in rows if r.get("error"))
    if failed:
        print(f"judge: {failed} failed (see their 'error' field); {_retry_advice(args.cache)}", file=sys.stderr)
        return 1
    return 0
