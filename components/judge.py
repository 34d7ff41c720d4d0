"""Step 5, judge: Vicuna-style grading of a model's answers, per writing category.

Every answer is graded on helpfulness, relevance, accuracy and level of detail plus an overall
score (1-10), by an LLM judge through the client layer or, without an API, by the
`offline-heuristic` stand-in. Judgments are FastChat `model_judgment` rows extended with the
four criteria. The summary (per category and criterion, plus `judge/overall`, the mean over
categories so that every category weighs the same) feeds the register step, the KFP Metrics
artifact and the reports.
"""

import base64
import io
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from selfguided.components.data import CATEGORIES, CATEGORY_LABELS_KO, load_questions, write_jsonl
from selfguided.components.llm_tasks import first_turn, load_answers
from selfguided.components.offline_judge import (
    OFFLINE_JUDGE_NAME,
    OFFLINE_PROMPT_VERSION,
    heuristic_scores,
    korean_share,
    mean_score,
)
from selfguided.components.prompting import CRITERIA
from selfguided.components.images import CPU_IMAGE

SCORE_NAMES = (*CRITERIA, "overall")


def judge_offline(questions: list[dict[str, Any]], answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grade answers with the deterministic `offline-heuristic` stand-in (no LLM, no network)."""
    by_id = {q["question_id"]: q for q in questions}
    judgments = []
    for answer in answers:
        question = by_id.get(answer["question_id"])
        if question is None:
            raise ValueError(f"answer refers to unknown question_id {answer['question_id']!r}")
        text = first_turn(answer)
        scores, rationale = heuristic_scores(question["category"], question["turns"][0], text)
        judgments.append({
            "question_id": question["question_id"],
            "model": answer.get("model_id", "unknown"),
            "judge": [OFFLINE_JUDGE_NAME, OFFLINE_PROMPT_VERSION],
            "user_prompt": question["turns"][0],
            "judgment": rationale,
            "score": mean_score(scores),
            "scores": scores,
            "category": question["category"],
            "turn": 1,
            "tstamp": time.time(),
            "error": None,
            "korean_penalty": korean_share(text) < 0.5,
        })
    return judgments


def judge_answers(
    questions: list[dict[str, Any]], answers: list[dict[str, Any]], model: str, *, concurrency: int = 8,
    cache: str = "", base_url: str = "",
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Grade answers with `model` (LLM client layer) or offline; returns judgments and usage metrics."""
    if model == OFFLINE_JUDGE_NAME:
        return judge_offline(questions, answers), {}
    from selfguided.components.llm import llm_step_config
    from selfguided.components.llm_tasks import judge_with_llm

    config = llm_step_config("judge", model, base_url=base_url, concurrency=concurrency, cache=cache)
    judgments, usage = judge_with_llm(questions, answers, config)
    return judgments, usage.to_metrics("judge")


def summarize_judgments(
    judgments: list[dict[str, Any]], *, base_model: str, arm: str, judge_model: str, prompt_version: str,
    usage: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per-category means of each criterion and overall; `judge/...` metric names for MLflow and KFP."""
    ok = [j for j in judgments if not j.get("error") and j.get("scores")]
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for judgment in ok:
        grouped[judgment["category"]].append(judgment)
    categories: dict[str, dict[str, float]] = {}
    for category in [c for c in CATEGORIES if c in grouped] + sorted(set(grouped) - set(CATEGORIES)):
        rows = grouped[category]
        entry = {c: round(statistics.fmean(float(r["scores"][c]) for r in rows), 3) for c in CRITERIA}
        entry["overall"] = round(statistics.fmean(float(r["score"]) for r in rows), 3)
        entry["n"] = len(rows)
        categories[category] = entry
    overall = round(statistics.fmean(v["overall"] for v in categories.values()), 3) if categories else 0.0
    metrics = {f"judge/{cat}/{name}": values[name] for cat, values in categories.items() for name in SCORE_NAMES}
    metrics["judge/overall"] = overall
    return {
        "base_model": base_model,
        "arm": arm,
        "model_id": f"{base_model}:{arm}",
        "judge_model": judge_model,
        "prompt_version": prompt_version,
        "mode": "single",
        "categories": categories,
        "overall": overall,
        "metrics": metrics,
        "n_judged": len(ok),
        "n_failed": len(judgments) - len(ok),
        "usage": usage or {},
    }


def score_table(summaries: list[dict[str, Any]]) -> str:
    """Markdown table: one row per model, one column per category (overall), plus the mean."""
    categories = [c for c in CATEGORIES if any(c in s["categories"] for s in summaries)]
    head = "| model | " + " | ".join(f"{c} ({CATEGORY_LABELS_KO.get(c, c)})" for c in categories) + " | overall |"
    lines = [head, "|---" * (len(categories) + 2) + "|"]
    for s in summaries:
        cells = [f"{s['categories'][c]['overall']:.2f}" if c in s["categories"] else "-" for c in categories]
        lines.append(f"| {s['model_id']} | " + " | ".join(cells) + f" | {s['overall']:.2f} |")
    return "\n".join(lines)


def judge_report_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Judge report: {summary['model_id']}",
        "",
        f"Judge: `{summary['judge_model']}` ({summary['prompt_version']}), {summary['n_judged']} answers graded, "
        f"{summary['n_failed']} failed." + (" offline-heuristic is a deterministic stand-in, not a quality measure."
                                             if summary["judge_model"] == OFFLINE_JUDGE_NAME else ""),
        "",
        "| category | n | " + " | ".join(SCORE_NAMES) + " |",
        "|---" * (len(SCORE_NAMES) + 2) + "|",
    ]
    for category, values in summary["categories"].items():
        lines.append(f"| {category} | {values['n']} | " + " | ".join(f"{values[n]:.2f}" for n in SCORE_NAMES) + " |")
    lines += ["", f"**Overall (mean over categories): {summary['overall']:.2f}**"]
    if summary["usage"]:
        lines += ["", "## LLM usage", ""] + [f"- {k}: {v}" for k, v in sorted(summary["usage"].items())]
    return "\n".join(lines) + "\n"


def judge_report_html(summary: dict[str, Any]) -> str:
    """A self-contained HTML page: grouped bars per category and criterion (rendered in the KFP UI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(summary["categories"])
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    width = 0.8 / len(SCORE_NAMES)
    for i, name in enumerate(SCORE_NAMES):
        xs = [k + (i - (len(SCORE_NAMES) - 1) / 2) * width for k in range(len(categories))]
        ax.bar(xs, [summary["categories"][c][name] for c in categories], width, label=name)
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylim(0, 10)
    ax.set_ylabel("score (1-10)")
    ax.set_title(f"{summary['model_id']}: judge scores per category ({summary['judge_model']})")
    ax.legend(ncol=len(SCORE_NAMES), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    image = base64.b64encode(buffer.getvalue()).decode()
    rows = "".join(
        f"<tr><td>{c}</td><td>{v['n']}</td>" + "".join(f"<td>{v[n]:.2f}</td>" for n in SCORE_NAMES) + "</tr>"
        for c, v in summary["categories"].items()
    )
    header = "".join(f"<th>{n}</th>" for n in SCORE_NAMES)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Judge report</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style></head><body>"
        f"<h2>{summary['model_id']} &mdash; overall {summary['overall']:.2f}</h2>"
        f"<img alt='scores per category' src='data:image/png;base64,{image}'/>"
        f"<table><tr><th>category</th><th>n</th>{header}</tr>{rows}</table></body></html>"
    )


def run_judge_step(
    questions_path: str, answers_path: str, model: str, judgments_path: str, summary_path: str,
    report_path: str, html_path: str, *, concurrency: int = 8, cache: str = "", base_url: str = "",
) -> dict[str, Any]:
    questions = load_questions(questions_path)
    answers = load_answers(answers_path)
    if not answers:
        raise ValueError(f"{answers_path}: no answers to judge")
    model_ids = {a.get("model_id", "unknown") for a in answers}
    if len(model_ids) != 1:
        raise ValueError(f"{answers_path}: expected answers of one model, found {sorted(model_ids)}")
    base_model, _, arm = next(iter(model_ids)).rpartition(":")
    judgments, usage = judge_answers(questions, answers, model, concurrency=concurrency, cache=cache,
                                     base_url=base_url)
    write_jsonl(judgments_path, judgments)
    if not any(not j.get("error") for j in judgments):
        # Registering a model with no scores would only hide the failure; a retry may succeed.
        errors = sorted({str(j.get("error")) for j in judgments})[:3]
        raise RuntimeError(f"every one of {len(judgments)} judgments failed (e.g. {'; '.join(errors)}); "
                           f"judgments kept in {judgments_path}")
    prompt_version = judgments[0]["judge"][1] if judgments else ""
    summary = summarize_judgments(judgments, base_model=base_model, arm=arm, judge_model=model,
                                  prompt_version=prompt_version, usage=usage)
    Path(summary_path).write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    Path(report_path).write_text(judge_report_markdown(summary), encoding="utf-8")
    Path(html_path).write_text(judge_report_html(summary), encoding="utf-8")
    print(f"[selfguided] judge: {summary['model_id']} overall {summary['overall']:.2f} over "
          f"{len(summary['categories'])} categories ({summary['n_failed']} failed)", flush=True)
    return summary


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def judge(
    questions: Input[Dataset],
    answers: Input[Dataset],
    model: str,
    concurrency: int,
    cache: str,
    base_url: str,
    judgments: Output[Dataset],
    summary: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
    chart: Output[HTML],
):
    """Grade one model's answers per category on the four criteria plus overall.

    Args:
        questions: eval questions (FastChat question.jsonl).
        answers: the model's answers (FastChat model_answer rows, one model).
        model: judge model name, or `offline-heuristic` for runs without an API.
        concurrency: concurrent LLM requests.
        cache: LLM response cache (directory on a PVC or `s3://bucket/prefix`); "" = no cache.
        base_url: OpenAI-compatible endpoint (Azure, vLLM, ...); "" = OPENAI_BASE_URL or OpenAI.
        judgments: FastChat model_judgment rows with the four criteria (JSONL).
        summary: per-category scores and `judge/...` metrics for the register step (JSON).
        metrics: the `judge/<category>/<criterion>` scores, shown in the Kubeflow UI.
        report: the score table (Markdown).
        chart: a per-category bar chart (HTML).
    """
    from selfguided.components.judge import run_judge_step

    result = run_judge_step(questions.path, answers.path, model, judgments.path, summary.path, report.path,
                            chart.path, concurrency=concurrency, cache=cache, base_url=base_url)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    summary.metadata.update({"base_model": result["base_model"], "arm": result["arm"], "overall": result["overall"]})
