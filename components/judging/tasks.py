"""LLM-backed scoring of seed data and judging of model answers, on the client in `llm.py`.

score_with_llm: a GPT-4 class model rates every seed record on the four Vicuna criteria
(helpfulness, relevance, accuracy, detail; 1-10). A scored record is the seed record plus
`scores`, `score` (their mean) and `judge` (model, prompt name and version, rationale). A record
the LLM could not score keeps its place with `scores: null, score: null, error: <reason>`.

judge_with_llm grades answers to FastChat `question.jsonl` questions:
- "single" (default): Vicuna-style single-answer grading of every turn, four criteria plus an
  overall rating; turn 1 with `judge-single`, later turns with `judge-single-multi`, which shows
  the judge the conversation so far and asks it to grade the answer to the last question (as
  FastChat's multi-turn single grading does). Rows come from `judging.judgment_row`.
- "pair": each answer against a reference model's answer to the same question, asked twice
  with the positions swapped (FastChat's g1 / g2). A win counts only when both orders agree;
  otherwise the pair is "inconsistent". The share of consistent pairs is reported.

Prompts are data: components/judging/prompts/<name>-v<version>.json (name, version, system,
user_template, output_format, reask, json_schema). A new wording is a new version, so cached
answers of the old one are never reused for it.

Parsing rules (checked in this order):
1. JSON: with structured output the answer is an object with the fields of the prompt's
   json_schema (a ```json fenced block, or the outermost {...} of the text, also counts).
2. Text, single answers and seed scores: labelled Vicuna ratings, one per criterion,
   "Helpfulness: [[7]]" (English or Korean label: 유용성, 관련성, 정확성, 상세함, 종합). Failing
   that, exactly as many bare "[[n]]" as expected ratings, taken in the prompt's order. Every
   rating must lie in 1-10. A missing overall rating is the mean of the four criteria.
3. Text, pairs: the last "[[A]]", "[[B]]" or "[[C]]" (tie); failing that, a score pair
   "[[8, 6]]" (the higher one wins, equal is a tie).
An answer that does not parse is asked once more for the verdict alone (the prompt's `reask`
message, with the first answer kept in the conversation). If that fails too, the record fails
with "unparsable verdict". parse_success_rate is the share of first answers that parsed;
`reasked` counts the re-asks, and `failed` what was still missing after them.

Korean rule: `judging.py` owns it (KoMT-Bench's square-root penalty on answers that are not in
Korean). The judge prompt says such answers are penalised; on top of the judge's verdict, single
grading applies the penalty through `judging.judgment_row`, and in pairwise grading, if exactly
one of the two answers is not Korean, the Korean one wins the pair whatever the judge said
(g1/g2 keep the judge's own verdicts, so consistency is the judge's).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from collections.abc import Callable

from selfguided.components.data import CATEGORY_LABELS_KO, DataError, iter_records
from selfguided.components.judging.rules import is_korean, judgment_row, mean_of_criteria, reference_for
from selfguided.components.llm.client import LLMClient, LLMConfig, LLMRequest, UsageSummary
from selfguided.components.model.prompting import CRITERIA, CRITERIA_KO

__all__ = [
    "Prompt", "UsageSummary", "answer_turns", "judge_with_llm", "load_answers", "load_prompt",
    "parse_pair_verdict", "parse_ratings", "score_with_llm",
]

SCORE_PROMPT = "score-v1"
JUDGE_PROMPTS = {"single": "judge-single-v1", "pair": "judge-pair-v1"}
MULTI_TURN_PROMPT = "judge-single-multi-v1"
# With a reference answer (questions of the reference categories, see data.attach_references).
REFERENCE_PROMPTS = {"judge-single-v1": "judge-single-ref-v1", "judge-single-multi-v1": "judge-single-multi-ref-v1"}
JUDGE_MODES = tuple(JUDGE_PROMPTS)
_PROMPT_FIELDS = ("name", "version", "system", "user_template")
ANSWER_PROMPT = "answer-v1"


# ---------------------------------------------------------------------------------------------
# Prompts


@dataclass(frozen=True)
class Prompt:
    """A versioned prompt loaded from components/judging/prompts/<name>-v<version>.json."""

    name: str
    version: int
    system: str
    user_template: str
    """str.format template of the user message (the fields differ per prompt)."""
    output_format: str = ""
    """How the verdict must be written in text mode; appended to the user message (judges and scorers)."""
    reask: str = ""
    """Follow-up message when an answer carries no parsable verdict (judges and scorers)."""
    json_schema: dict[str, Any] | None = None
    """OpenAI json_schema response format, used where the endpoint supports structured output."""

    @property
    def id(self) -> str:
        return f"{self.name}-v{self.version}"

    def request(self, **fields: str) -> LLMRequest:
        """The request for one item: JSON-schema variant with its text fallback (or text only)."""
        user = self.user_template.format(**fields)
        text = LLMRequest(self.id, [
            {"role": "system", "content": self.system},
            {"role": "user", "content": f"{user}\n\n{self.output_format}"},
        ])
        if self.json_schema is None:
            return text
        return LLMRequest(
            self.id,
            [{"role": "system", "content": self.system}, {"role": "user", "content": user}],
            response_format={"type": "json_schema", "json_schema": self.json_schema},
            text_fallback=text,
        )

    def reask_request(self, original: LLMRequest, answer: str) -> LLMRequest:
        """Ask once more for the verdict alone, keeping the unparsable answer in the conversation."""
        follow_up = self.reask if original.response_format is not None else f"{self.reask}\n\n{self.output_format}"
        return LLMRequest(
            self.id,
            [*original.messages, {"role": "assistant", "content": answer}, {"role": "user", "content": follow_up}],
            response_format=original.response_format,
            text_fallback=self.reask_request(original.text_fallback, answer) if original.text_fallback else None,
        )


def load_prompt(prompt_id: str) -> Prompt:
    """Load components/judging/prompts/<prompt_id>.json, e.g. 'judge-single-v1'; errors name the file and field."""
    path = Path(str(resources.files("selfguided.components.judging") / "prompts" / f"{prompt_id}.json"))
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.json"))
        raise DataError(f"{path}: no such prompt (known: {', '.join(known)})")
    data = json.loads(path.read_text(encoding="utf-8"))
    missing = [f for f in _PROMPT_FIELDS if not data.get(f)]
    if missing:
        raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
    prompt = Prompt(**{f: data[f] for f in _PROMPT_FIELDS}, output_format=data.get("output_format", ""),
                    reask=data.get("reask", ""), json_schema=data.get("json_schema"))
    if prompt.id != prompt_id:
        raise DataError(f"{path}: name {prompt.name!r} and version {prompt.version!r} do not match the file name")
    return prompt


# ---------------------------------------------------------------------------------------------
# Parsing

_RATING = r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"
_LABELS = {
    "helpfulness": ("helpfulness", CRITERIA_KO["helpfulness"]),
    "relevance": ("relevance", CRITERIA_KO["relevance"]),
    "accuracy": ("accuracy", CRITERIA_KO["accuracy"]),
    "detail": ("level of detail", "detail", CRITERIA_KO["detail"], "상세성"),
    "overall": ("overall", "종합", "총점"),
}


def _json_object(text: str) -> dict[str, Any] | None:
    if "{" not in text:
        return None
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.DOTALL)
    candidate = fenced[1] if fenced else text[text.find("{"): text.rfind("}") + 1]
    try:
        obj = json.loads(candidate)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _rating(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 1 <= number <= 10 else None


def parse_ratings(text: str, with_overall: bool = False) -> tuple[dict[str, float], str] | None:
    """(ratings, rationale) from a judge's answer, or None; see the module docstring for the rules.

    The ratings hold the four CRITERIA, plus "overall" when `with_overall`.
    """
    obj = _json_object(text)
    if obj is not None and all(c in obj for c in CRITERIA):
        ratings = {c: _rating(obj[c]) for c in CRITERIA}
        if with_overall and "overall" in obj:
            ratings["overall"] = _rating(obj["overall"])
        rationale = str(obj.get("rationale", "")).strip()
    else:
        names = (*CRITERIA, "overall") if with_overall else CRITERIA
        ratings = {}
        for name in names:
            labels = "|".join(re.escape(label) for label in _LABELS[name])
            match = re.search(rf"(?:{labels})[^\[\n]{{0,30}}{_RATING}", text, re.IGNORECASE)
            if match:
                ratings[name] = _rating(match[1])
        if not all(c in ratings for c in CRITERIA):
            bare = re.findall(_RATING, text)
            if len(bare) not in (len(CRITERIA), len(names)):
                return None
            ratings = {name: _rating(value) for name, value in zip(names, bare)}
        first = re.search(rf"^.*{_RATING}", text, re.MULTILINE)
        rationale = text[: first.start()].strip() if first else ""
    if any(value is None for value in ratings.values()):
        return None
    if with_overall and "overall" not in ratings:
        ratings["overall"] = mean_of_criteria(ratings)
    return ratings, rationale


def parse_pair_verdict(text: str) -> tuple[str, str] | None:
    """("A" | "B" | "tie", rationale) from a pairwise judgment, or None."""
    obj = _json_object(text)
    if obj is not None and str(obj.get("winner", "")).strip().lower() in ("a", "b", "tie", "c"):
        winner = str(obj["winner"]).strip().upper()
        return ("tie" if winner in ("TIE", "C") else winner), str(obj.get("rationale", "")).strip()
    verdicts = list(re.finditer(r"\[\[([ABC])\]\]", text))
    if verdicts:
        last = verdicts[-1]
        return {"A": "A", "B": "B", "C": "tie"}[last[1]], text[: last.start()].strip()
    pair = re.search(r"\[\[\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\]\]", text)
    if pair:
        a, b = float(pair[1]), float(pair[2])
        return ("A" if a > b else "B" if b > a else "tie"), text[: pair.start()].strip()
    return None


# ---------------------------------------------------------------------------------------------
# Ask, parse, re-ask once


@dataclass
class _Verdict:
    parsed: Any | None
    """What the parser returned, None when there is no verdict."""
    text: str
    """The judge's raw answer (and the re-asked one after it)."""
    error: str | None


def _ask(client: LLMClient, prompts: Prompt | list[Prompt], requests: list[LLMRequest],
         parse: Callable[[str], Any]) -> list[_Verdict]:
    """Run the requests, parse every answer, re-ask once (with the request's own prompt's
    re-ask message) where it did not parse."""
    by_id = {p.id: p for p in (prompts if isinstance(prompts, list) else [prompts])}
    results = client.run(requests)
    verdicts = []
    for result in results:
        parsed = parse(result.text) if result.ok else None
        verdicts.append(_Verdict(parsed, result.text or "", result.error))
    unparsed = [i for i, v in enumerate(verdicts) if v.error is None and v.parsed is None]
    answered = sum(1 for r in results if r.ok)
    client.usage.parse_success_rate = (answered - len(unparsed)) / answered if answered else None
    client.usage.reasked += len(unparsed)
    if unparsed:
        followups = client.run(
            [by_id[requests[i].prompt].reask_request(requests[i], verdicts[i].text) for i in unparsed],
            desc=f"{client.usage.step} re-ask ({client.config.model})",
        )
        for i, result in zip(unparsed, followups):
            verdict = verdicts[i]
            if result.ok:
                verdict.text += f"\n\n[re-asked for the verdict]\n{result.text}"
                verdict.parsed = parse(result.text)
            if verdict.parsed is None:
                verdict.error = result.error or f"unparsable verdict after one re-ask: {result.text[:200]!r}"
    return verdicts


# ---------------------------------------------------------------------------------------------
# Scoring seed data


def score_with_llm(records: list[dict[str, Any]], config: LLMConfig) -> tuple[list[dict[str, Any]], UsageSummary]:
    """Score seed records with the LLM; returns scored records (same order, none dropped) and usage."""
    prompt = load_prompt(SCORE_PROMPT)
    client = LLMClient(config, step="score")
    requests = [
        prompt.request(
            category=r["category"],
            category_label=CATEGORY_LABELS_KO.get(r["category"], r["category"]),
            instruction=r["instruction"],
            input=r.get("input") or "(없음)",
            output=r["output"],
        )
        for r in records
    ]
    verdicts = _ask(client, prompt, requests, parse_ratings)
    scored = []
    for record, verdict in zip(records, verdicts):
        judge = {"model": config.model, "prompt": prompt.name, "prompt_version": prompt.version, "rationale": None}
        if verdict.parsed is None:
            scored.append({**record, "scores": None, "score": None, "judge": judge, "error": verdict.error})
            continue
        ratings, rationale = verdict.parsed
        scores = {c: ratings[c] for c in CRITERIA}
        scored.append({
            **record,
            "scores": scores,
            "score": mean_of_criteria(scores),
            "judge": {**judge, "rationale": rationale},
        })
    usage = client.usage
    usage.records = len(records)
    usage.failed = sum(1 for r in scored if r["scores"] is None)
    usage.done = usage.records - usage.failed
    return scored, usage


# ---------------------------------------------------------------------------------------------
# Answering the test questions (teacher rows)


def answer_with_llm(questions: list[dict[str, Any]], config: LLMConfig) -> tuple[list[dict[str, Any]], UsageSummary]:
    """A teacher's FastChat model_answer rows: every turn asked with the conversation so far.

    A turn the API could not answer ends that conversation: the row keeps the turns answered
    before it and says why in `error`, so the judge records the rest as failed, never as a score.
    """
    prompt = load_prompt(ANSWER_PROMPT)
    client = LLMClient(config, step="teacher")
    answers: list[list[str]] = [[] for _ in questions]
    errors: dict[int, str] = {}
    for k in range(max((len(q["turns"]) for q in questions), default=0)):
        asked = [i for i, q in enumerate(questions) if len(q["turns"]) > k and i not in errors]
        requests = []
        for i in asked:
            messages = [{"role": "system", "content": prompt.system}]
            for turn, earlier in zip(questions[i]["turns"], answers[i]):
                messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": earlier}]
            messages.append({"role": "user", "content": questions[i]["turns"][k]})
            requests.append(LLMRequest(prompt.id, messages))
        for i, result in zip(asked, client.run(requests, desc=f"teacher turn {k + 1} ({config.model})")):
            if result.ok:
                answers[i].append(result.text.strip())
            else:
                errors[i] = f"turn {k + 1}: {result.error}"
    rows = [
        {"question_id": q["question_id"], "answer_id": f"{config.model}-{q['question_id']}", "model_id": config.model,
         "choices": [{"index": 0, "turns": texts}], "tstamp": time.time(), "category": q["category"],
         **({"error": errors[i]} if i in errors else {})}
        for i, (q, texts) in enumerate(zip(questions, answers))
    ]
    usage = client.usage
    usage.records = len(questions)
    usage.failed = len(errors)
    usage.done = usage.records - usage.failed
    return rows, usage


# ---------------------------------------------------------------------------------------------
# Judging model answers


def load_answers(path: str | Path, *, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Read FastChat model_answer rows; errors name the file, the line and the field."""
    answers = []
    for number, obj in iter_records(path, ("question_id", "model_id", "choices"), allow_empty=allow_empty):
        try:
            answer_turns(obj)
        except ValueError as exc:
            raise DataError(f"{path}:{number}: {exc}") from None
        answers.append(obj)
    return answers


def answer_turns(answer: dict[str, Any]) -> list[str]:
    """The answer texts, one per turn: the turns of the first choice of a FastChat model_answer row."""
    choices = answer.get("choices")
    turns = choices[0].get("turns") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns) or not (turns or answer.get("error")):
        raise ValueError("'choices' must be [{\"index\": 0, \"turns\": [\"<answer>\", ...]}]")
    return turns


def first_turn(answer: dict[str, Any]) -> str:
    return answer_turns(answer)[0]


def check_answers(answers: list[dict[str, Any]], questions: dict[Any, dict[str, Any]]) -> None:
    """Raise DataError naming the answer when it has no turns, no matching question, or more
    turns than its question."""
    for answer in answers:
        where = f"answer {answer.get('answer_id', '')!s} of model {answer.get('model_id')!r}"
        try:
            turns = answer_turns(answer)
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
        question = questions.get(answer.get("question_id"))
        if question is None:
            raise DataError(f"{where}: question_id {answer.get('question_id')!r} is not among the questions")
        if len(turns) > len(question["turns"]):
            raise DataError(f"{where}: {len(turns)} answer turns for a question of {len(question['turns'])}")


def judge_with_llm(
    questions: list[dict[str, Any]],
    answers: list[dict[str, Any]],
    config: LLMConfig,
    mode: str = "single",
    reference_answers: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], UsageSummary]:
    """Judge answers; returns FastChat model_judgment rows and usage.

    mode "single" grades every turn of every answer; mode "pair" compares the first turn of every
    answer with the reference model's answer to the same question (`reference_answers`), in both
    orders.
    """
    if mode not in JUDGE_MODES:
        raise ValueError(f"unknown judge mode {mode!r} (known: {', '.join(JUDGE_MODES)})")
    by_id = {q["question_id"]: q for q in questions}
    check_answers(answers, by_id)
    prompt = load_prompt(JUDGE_PROMPTS[mode])
    client = LLMClient(config, step="judge")
    if mode == "single":
        prompts = {p.id: p for p in (prompt, load_prompt(MULTI_TURN_PROMPT))}
        prompts |= {REFERENCE_PROMPTS[i]: load_prompt(REFERENCE_PROMPTS[i]) for i in list(prompts)}
        rows = _judge_single(client, prompts, by_id, answers)
    else:
        if not reference_answers:
            raise ValueError("pairwise judging needs reference_answers (the reference model's answers)")
        rows = _judge_pairs(client, prompt, by_id, answers, reference_answers)
    usage = client.usage
    usage.records = len(rows)
    usage.failed = sum(1 for r in rows if r["error"] is not None)
    usage.done = usage.records - usage.failed
    return rows, usage


def _fields(question: dict[str, Any]) -> dict[str, str]:
    category = question["category"]
    return {"category": category, "category_label": CATEGORY_LABELS_KO.get(category, category),
            "question": question["turns"][0]}


def _conversation(question: dict[str, Any], answers: list[str], turn: int) -> str:
    """The conversation before `turn` (1-based), as the multi-turn judge prompt shows it."""
    lines = []
    for k in range(turn - 1):
        lines += [f"### User:\n{question['turns'][k]}", f"### Assistant:\n{answers[k]}"]
    return "\n\n".join(lines)


def _user_prompt(request: LLMRequest) -> str:
    return request.messages[-1]["content"]


def _judge_single(
    client: LLMClient, prompts: dict[str, Prompt], questions: dict[Any, dict[str, Any]],
    answers: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Turn 1 with judge-single, later turns with judge-single-multi; each with its -ref variant
    when the question carries a reference answer for that turn."""
    items = [(a, questions[a["question_id"]], k + 1) for a in answers for k in range(len(answer_turns(a)))]
    requests, used = [], []
    for answer, question, turn in items:
        texts = answer_turns(answer)
        fields = {**_fields(question), "question": question["turns"][turn - 1], "answer": texts[turn - 1]}
        name = JUDGE_PROMPTS["single"] if turn == 1 else MULTI_TURN_PROMPT
        if turn > 1:
            fields["conversation"] = _conversation(question, texts, turn)
        if reference_for(question, turn):
            name, fields["reference"] = REFERENCE_PROMPTS[name], reference_for(question, turn)
        used.append(prompts[name])
        requests.append(prompts[name].request(**fields))
    verdicts = _ask(client, list(prompts.values()), requests, lambda text: parse_ratings(text, with_overall=True))
    rows = []
    for (answer, question, turn), request, verdict, prompt in zip(items, requests, verdicts, used):
        rows.append(judgment_row(
            question=question, turn=turn, answer=answer_turns(answer)[turn - 1], model=answer["model_id"],
            judge=(client.config.model, prompt.id),
            user_prompt=_user_prompt(client.as_sent(request)), judgment=verdict.text,
            ratings=verdict.parsed[0] if verdict.parsed is not None else None, error=verdict.error,
        ))
    return rows


def _judge_pairs(
    client: LLMClient,
    prompt: Prompt,
    questions: dict[Any, dict[str, Any]],
    answers: list[dict[str, Any]],
    reference_answers: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    references = {r["question_id"]: r for r in reference_answers}
    reference_model = reference_answers[0].get("model_id")
    pairs = [(a, _reference_for(a, references)) for a in answers if a.get("model_id") != reference_model]
    requests = []
    for answer, reference in pairs:
        fields = _fields(questions[answer["question_id"]])
        mine, theirs = first_turn(answer), first_turn(reference)
        requests.append(prompt.request(**fields, answer_a=mine, answer_b=theirs))  # g1: model_1 first
        requests.append(prompt.request(**fields, answer_a=theirs, answer_b=mine))  # g2: swapped
    verdicts = _ask(client, prompt, requests, parse_pair_verdict)
    rows = []
    consistent = judged = 0
    for k, (answer, reference) in enumerate(pairs):
        g1, g2 = verdicts[2 * k], verdicts[2 * k + 1]
        g1_winner = _winner(g1, swapped=False)
        g2_winner = _winner(g2, swapped=True)
        error = g1.error or g2.error
        if error is None:
            judged += 1
            consistent += g1_winner == g2_winner
        winner = "error" if error else g1_winner if g1_winner == g2_winner else "inconsistent"
        penalty = {"model_1": not is_korean(first_turn(answer)), "model_2": not is_korean(first_turn(reference))}
        if error is None and penalty["model_1"] != penalty["model_2"]:
            winner = "model_2" if penalty["model_1"] else "model_1"
        question = questions[answer["question_id"]]
        rows.append({
            "question_id": answer["question_id"],
            "model_1": answer["model_id"],
            "model_2": reference["model_id"],
            "g1_winner": g1_winner,
            "g2_winner": g2_winner,
            "winner": winner,
            "judge": [client.config.model, prompt.id],
            "g1_user_prompt": _user_prompt(client.as_sent(requests[2 * k])),
            "g1_judgment": g1.text,
            "g2_user_prompt": _user_prompt(client.as_sent(requests[2 * k + 1])),
            "g2_judgment": g2.text,
            "category": question["category"],
            "turn": 1,
            "tstamp": time.time(),
            "error": error,
            "korean_penalty": penalty,
        })
    client.usage.pair_consistency = consistent / judged if judged else None
    return rows


def _reference_for(answer: dict[str, Any], references: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    reference = references.get(answer["question_id"])
    if reference is None:
        raise DataError(f"reference answers: none for question_id {answer['question_id']!r}")
    try:
        first_turn(reference)
    except ValueError as exc:
        raise DataError(f"reference answer to question_id {answer['question_id']!r}: {exc}") from None
    return reference


def _winner(verdict: _Verdict, swapped: bool) -> str:
    """The verdict in model_1 / model_2 terms (g2 shows model_2's answer as A), or "error"."""
    if verdict.parsed is None:
        return "error"
    side = verdict.parsed[0]
    if side == "tie":
        return "tie"
    return {"A": "model_2", "B": "model_1"}[side] if swapped else {"A": "model_1", "B": "model_2"}[side]
