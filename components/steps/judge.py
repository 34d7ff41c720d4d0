"""Step 5, judge: Vicuna-style grading of one row's answers (every turn), per category.

Every answer turn is graded on helpfulness, relevance, accuracy and level of detail plus an
overall score (1-10), by a jury (judging/jury.py: one judge by default) whose judges are LLMs
through the client layer or, without an API, the `offline-heuristic` stand-in. The rules
(criteria, Korean penalty, the judgment row) are judging/rules.py's, the same for every judge. The
summary (evaluation/judge_summary.JudgeSummary: per category and criterion, plus `judge/overall`,
the mean over categories so that every category weighs the same) carries the row's identity as it
was given to the step, never parsed from a label, and the jury that graded it; it feeds the compare
and register steps, the KFP Metrics artifact and the reports.
"""

import base64
import html
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from selfguided.components.data.jsonl import write_jsonl
from selfguided.components.data.questions import load_questions
from selfguided.components.evaluation.judge_summary import ChampionFallback, JudgeSummary
from selfguided.components.images import CPU_IMAGE
from selfguided.components.judging.answers import load_answers
from selfguided.components.judging.jury import JuryConfig, JuryUsage, judge_with_jury, parse_judges
from selfguided.components.judging.jury_weights import parse_weights
from selfguided.components.judging.rules import SCORE_NAMES, judged_ok


def judge_answers(
    questions: list[dict[str, Any]], answers: list[dict[str, Any]], model: str, *, concurrency: int = 8,
    cache: str = "", base_url: str = "", judges: str = "", repeats: int = 1, min_judges: int = 0,
    aggregate: str = "mean", temperature: float = 0.0, weights: str = "",
) -> tuple[list[dict[str, Any]], dict[str, float], JuryUsage]:
    """Grade answers with the jury `judges` ("" = `model` alone: a jury of one), each judge through
    the LLM client layer or offline; returns judgments, usage metrics and the jury's usage.

    A turn the row did not answer (an API teacher that failed, see `error` on the answer row) is
    a failed judgment that says why: counted, never scored.
    """
    jury = JuryConfig(parse_judges(judges, default=model), aggregate=aggregate, min_judges=min_judges,
                      repeats=repeats, temperature=temperature, concurrency=concurrency, cache=cache,
                      base_url=base_url, weights=parse_weights(weights))
    judgments, jury_usage = judge_with_jury(questions, answers, jury)
    usage: dict[str, float] = {}
    if jury_usage.size == 1:
        usage = dict(jury_usage.judges[0].metrics)
    else:
        for judge in jury_usage.judges:
            usage |= {name.replace("llm/judge/", f"llm/judge/{judge.judge.model}/", 1): value
                      for name, value in judge.metrics.items()}
        usage["llm/judge/cost_usd"] = jury_usage.cost_usd()
    return judgments, usage, jury_usage


def judge_report_markdown(summary: JudgeSummary) -> str:
    disclaimer = summary.jury.as_judge().disclaimer
    lines = [
        f"# Judge report: {summary.row}",
        "",
        f"Judge: `{summary.judge.label}`, {summary.n_judged} answers graded, {summary.n_failed} failed."
        + (f" {disclaimer}" if disclaimer else ""),
        "",
        "| category | n | " + " | ".join(SCORE_NAMES) + " |",
        "|---" * (len(SCORE_NAMES) + 2) + "|",
    ]
    for category, values in summary.categories.items():
        lines.append(f"| {category} | {values['n']} | " + " | ".join(f"{values[n]:.2f}" for n in SCORE_NAMES) + " |")
    lines += ["", f"**Overall (mean over categories): {summary.overall:.2f}**"]
    lines += jury_lines(summary.jury)
    if summary.usage:
        lines += ["", "## LLM usage", ""] + [f"- {k}: {v}" for k, v in sorted(summary.usage.items())]
    return "\n".join(lines) + "\n"


def jury_lines(jury: JuryUsage) -> list[str]:
    """The jury's members, what each lacks and costs (Markdown lines); none for a jury of one graded once."""
    if jury.size < 2 and jury.repeats < 2:
        return []
    lines = ["", f"## Jury: {jury.size} judge(s), {jury.aggregate} of the judges; an item needs "
                 f"{jury.min_judges}; {jury.repeats} grading(s) of the repeated sample", "",
             "| judge | endpoint | items | missing | cost (USD) |", "|---|---|---|---|---|"]
    for judge in jury.judges:
        lines.append(f"| {judge.judge.model} | {judge.endpoint or 'run endpoint'} | {judge.items} | "
                     f"{judge.missing} | {judge.cost_usd:.4f} |")
    for judge in jury.judges:
        if judge.missing:
            lines.append(f"\n{judge.judge.model} lacks {judge.missing} item(s): " + "; ".join(judge.errors))
    if jury.partial_items:
        lines.append(f"\n{jury.partial_items} item(s) were scored by fewer than all judges.")
    return lines


def judge_report_html(summary: JudgeSummary) -> str:
    """A self-contained HTML page: grouped bars per category and criterion (rendered in the KFP UI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    categories = list(summary.categories)
    fig = Figure(figsize=(9, 4), dpi=110)  # no pyplot: no global state in a long-lived process
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(SCORE_NAMES)
    for i, name in enumerate(SCORE_NAMES):
        xs = [k + (i - (len(SCORE_NAMES) - 1) / 2) * width for k in range(len(categories))]
        ax.bar(xs, [summary.categories[c][name] for c in categories], width, label=name)
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylim(0, 10)
    ax.set_ylabel("score (1-10)")
    ax.set_title(f"{summary.row}: judge scores per category ({summary.judge.model})")
    ax.legend(ncol=len(SCORE_NAMES), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    image = base64.b64encode(buffer.getvalue()).decode()
    rows = "".join(
        f"<tr><td>{c}</td><td>{v['n']}</td>" + "".join(f"<td>{v[n]:.2f}</td>" for n in SCORE_NAMES) + "</tr>"
        for c, v in summary.categories.items()
    )
    header = "".join(f"<th>{n}</th>" for n in SCORE_NAMES)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Judge report</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style></head><body>"
        f"<h2>{html.escape(summary.row)} &mdash; overall {summary.overall:.2f}</h2>"
        f"<img alt='scores per category' src='data:image/png;base64,{image}'/>"
        f"<table><tr><th>category</th><th>n</th>{header}</tr>{rows}</table></body></html>"
    )


def run_judge_step(
    questions_path: str, answers_path: str, model: str, judgments_path: str, summary_path: str,
    report_path: str, html_path: str, *, row_kind: str, base_model: str = "", arm: str = "", row_model: str = "",
    generate_seconds: float = 0.0, llm_cost_usd: float = 0.0, note: str = "", fallback: str = "",
    concurrency: int = 8, cache: str = "", base_url: str = "", judges: str = "", repeats: int = 1,
    min_judges: int = 0, aggregate: str = "mean", replicate: int = 0, temperature: float = 0.0, weights: str = "",
) -> JudgeSummary:
    """Judge one row's answers (by the jury `judges`, "" = `model` alone) and write its judgments,
    summary and reports.

    A reference row that could not answer (no champion yet) comes with a `note` and no answers:
    its summary says why, and `fallback` (JSON: the champion's logged metrics and judge) travels
    on for the gate's unpaired fallback.
    """
    questions = load_questions(questions_path)
    answers = load_answers(answers_path, allow_empty=bool(note))  # a reference row that could not answer
    if not answers and not note:
        raise ValueError(f"{answers_path}: no answers to judge")
    judgments, usage, jury = judge_answers(questions, answers, model, concurrency=concurrency, cache=cache,
                                           base_url=base_url, judges=judges, repeats=repeats, min_judges=min_judges,
                                           aggregate=aggregate, temperature=temperature, weights=weights)
    write_jsonl(judgments_path, judgments)
    if answers and row_kind == "trained" and not any(judged_ok(j) for j in judgments):
        # Registering a model with no scores would only hide the failure; a retry may succeed.
        errors = sorted({str(j.get("error")) for j in judgments})[:3]
        raise RuntimeError(f"every one of {len(judgments)} judgments failed (e.g. {'; '.join(errors)}); "
                           f"judgments kept in {judgments_path}")
    if answers and not any(judged_ok(j) for j in judgments):  # a reference row: reported, not fatal
        note = note or "every judgment failed, e.g. " + "; ".join(sorted({str(j.get("error")) for j in judgments})[:2])
    summary = JudgeSummary.of_judgments(
        judgments, jury, row_kind=row_kind, base_model=base_model, arm=arm, model=row_model, replicate=replicate,
        usage=usage, generate_seconds=generate_seconds, llm_cost_usd=llm_cost_usd, note=note,
        fallback=ChampionFallback.from_json(json.loads(fallback)) if fallback else None,
        answer_model=answers[0].get("model_id", "unknown") if answers else "")  # what the judgments name
    summary.write(summary_path)
    Path(report_path).write_text(judge_report_markdown(summary), encoding="utf-8")
    Path(html_path).write_text(judge_report_html(summary), encoding="utf-8")
    if note:
        print(f"[selfguided] judge: {summary.row}: nothing to judge ({note})", flush=True)
        return summary
    print(f"[selfguided] judge: {summary.row} overall {summary.overall:.2f} over "
          f"{len(summary.categories)} categories, {summary.n_judged} answer turns "
          f"({summary.n_failed} failed)", flush=True)
    return summary


def run_judge_rows(questions_path: str, rows_folder: str, evidence_folder: str, report_path: str, *, model: str,
                   **options: Any) -> list[JudgeSummary]:
    """What the `judge_rows` component does: judge every row of a folder of answered rows
    (judging/answers.write_answer_rows, e.g. every teacher's) as `run_judge_step` judges one, and
    hand them on as a folder of judged rows (evaluation/rows.write_evidence). `options` are
    `run_judge_step`'s keywords (the jury, its cache and endpoint)."""
    from selfguided.components.evaluation.rows import write_evidence
    from selfguided.components.judging.answers import read_answer_rows

    judged, reports = [], []
    with tempfile.TemporaryDirectory() as work:
        summaries, judgment_files = [], []
        for i, (row, answers_path) in enumerate(read_answer_rows(rows_folder)):
            out = Path(work) / str(i)
            out.mkdir()
            summary = run_judge_step(
                questions_path, str(answers_path), model, str(out / "judgments.jsonl"), str(out / "summary.json"),
                str(out / "report.md"), str(out / "chart.html"), row_kind=row["row_kind"],
                base_model=row.get("base_model", ""), arm=row.get("arm", ""), row_model=row.get("row_model", ""),
                generate_seconds=float(row.get("generate_seconds", 0.0)),
                llm_cost_usd=float(row.get("answer_cost_usd", 0.0)), note=row.get("note", ""), **options)
            summaries.append(out / "summary.json")
            judgment_files.append(out / "judgments.jsonl")
            judged.append(summary)
            reports.append(judge_report_markdown(summary))
        write_evidence(evidence_folder, summaries, judgment_files, trained=0)
    Path(report_path).write_text("\n\n".join(reports) if reports else "No rows to judge.\n", encoding="utf-8")
    return judged


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def judge(
    questions: Input[Dataset],
    answers: Input[Dataset],
    row_kind: str,
    base_model: str,
    arm: str,
    row_model: str,
    generate_seconds: float,
    answer_cost_usd: float,
    note: str,
    fallback: str,
    model: str,
    concurrency: int,
    cache: str,
    base_url: str,
    judges: str,
    judge_repeats: int,
    min_judges: int,
    jury_aggregate: str,
    judgments: Output[Dataset],
    summary: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
    chart: Output[HTML],
    replicate: int = 0,
    judge_temperature: float = 0.0,
    jury_weights: str = "",
):
    """Grade one row's answers (every turn) per category on the four criteria plus overall.

    Args:
        questions: eval questions (FastChat question.jsonl).
        answers: the row's answers (FastChat model_answer rows, one model).
        row_kind: `trained`, `base`, `teacher` or `champion`.
        base_model: the base model of a trained or base row ("" otherwise).
        arm: the arm of a trained row ("" otherwise).
        row_model: the model of a teacher row, or the version of a champion row ("" otherwise).
        generate_seconds: measured time to generate the answers (for the cost per answer).
        answer_cost_usd: API cost of the answers (teacher rows; 0 otherwise).
        note: why a reference row has no answers ("" when it has some).
        fallback: JSON of the champion's logged metrics and judge when it could not be re-evaluated.
        model: judge model name, or `offline-heuristic` for runs without an API.
        concurrency: concurrent LLM requests.
        cache: LLM response cache (directory on a PVC or `s3://bucket/prefix`); "" = no cache.
        base_url: OpenAI-compatible endpoint (Azure, vLLM, ...); "" = OPENAI_BASE_URL or OpenAI.
        judges: the jury, comma-separated `name` (on base_url) or `name@url` (its own endpoint, its
            key from SELFGUIDED_JUDGE_KEY_<NAME> or the selfguided-judge-keys Secret); "" = `model` alone.
        judge_repeats: gradings of a stratified sample by every judge (judge noise); 1 = none.
        min_judges: judges an item needs for a jury score (0 = all); fewer: the item fails, named.
        jury_aggregate: `mean` or `median` of the judges' scores.
        judgments: FastChat model_judgment rows with the four criteria (JSONL).
        summary: the row's identity, jury, per-category scores and `judge/...` metrics (JSON,
            evaluation/judge_summary.JudgeSummary).
        metrics: the `judge/<category>/<criterion>` scores, shown in the Kubeflow UI.
        report: the score table (Markdown).
        chart: a per-category bar chart (HTML).
        judge_temperature: the judges' sampling temperature (repeats measure judge noise only above 0).
        replicate: the training-seed replicate of a trained row (0 otherwise); r > 0 names the row `<row>#r`.
        jury_weights: the judges' weights in the jury's mean, `a=0.8,b=0.2` (`selfguided calibrate`
            learns them from the editors); "" = equal.
    """
    from selfguided.components.steps.judge import run_judge_step

    result = run_judge_step(questions.path, answers.path, model, judgments.path, summary.path, report.path,
                            chart.path, row_kind=row_kind, base_model=base_model, arm=arm, row_model=row_model,
                            generate_seconds=generate_seconds, llm_cost_usd=answer_cost_usd, note=note,
                            fallback=fallback, concurrency=concurrency, cache=cache, base_url=base_url,
                            judges=judges, repeats=judge_repeats, min_judges=min_judges, aggregate=jury_aggregate,
                            replicate=replicate, temperature=judge_temperature, weights=jury_weights)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    summary.metadata.update({"row": result.row, "overall": result.overall})


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def judge_rows(
    questions: Input[Dataset],
    rows: Input[Artifact],
    model: str,
    concurrency: int,
    cache: str,
    base_url: str,
    judges: str,
    judge_repeats: int,
    min_judges: int,
    jury_aggregate: str,
    evidence: Output[Artifact],
    report: Output[Markdown],
    judge_temperature: float = 0.0,
    jury_weights: str = "",
):
    """Grade several rows' answers (e.g. every teacher's, answered by one task) as `judge` grades one.

    Args:
        questions: eval questions (FastChat question.jsonl).
        rows: a folder of answered rows and their identities (judging/answers.write_answer_rows).
        model: judge model name, or `offline-heuristic` for runs without an API.
        concurrency: concurrent LLM requests.
        cache: LLM response cache (directory on a PVC or `s3://bucket/prefix`); "" = no cache.
        base_url: OpenAI-compatible endpoint (Azure, vLLM, ...); "" = OPENAI_BASE_URL or OpenAI.
        judges: the jury, as for `judge`; "" = `model` alone.
        judge_repeats: gradings of a stratified sample by every judge (judge noise); 1 = none.
        min_judges: judges an item needs for a jury score (0 = all).
        jury_aggregate: `mean` or `median` of the judges' scores.
        evidence: every row's judge summary and judgments (a folder, evaluation/rows.write_evidence).
        report: every row's score table (Markdown).
        judge_temperature: the judges' sampling temperature.
        jury_weights: the judges' weights in the jury's mean, as for `judge`; "" = equal.
    """
    from selfguided.components.steps.judge import run_judge_rows

    run_judge_rows(questions.path, rows.path, evidence.path, report.path, model=model, concurrency=concurrency,
                   cache=cache, base_url=base_url, judges=judges, repeats=judge_repeats, min_judges=min_judges,
                   aggregate=jury_aggregate, temperature=judge_temperature, weights=jury_weights)
