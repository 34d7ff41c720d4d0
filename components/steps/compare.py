"""Step 6, compare: every row's judgments in; the evidence (compare.py's statistics) and the gate's decision out.

The challenger is the run's best trained row; the champion row is the registry's champion
re-evaluated in this run. The step writes the comparison and the decision as JSON (read by the
register step, which logs them and moves the aliases), the report as Markdown and as HTML with
plots (shown in the Kubeflow UI, logged to MLflow, printed by `selfguided run`).
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
import html
import json
import math
from typing import Any, List, Mapping, Sequence

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.evaluation.compare import (
    MIN_RESAMPLES,
    Comparison,
    GateDecision,
    PromotionGate,
    RowJudgments,
    compare_rows,
    decide_promotion,
    default_comparisons,
    metrics_for_row,
    report_html,
    report_markdown,
)
from selfguided.components.data import read_jsonl
from selfguided.components.images import CPU_IMAGE
from selfguided.components.judging.offline import OFFLINE_JUDGE_NAME


def load_row(summary_path: str, judgments_path: str) -> tuple[dict[str, Any], RowJudgments | None]:
    """A judge step's outputs as a row: (its summary, its RowJudgments, or None when the row has
    nothing to judge, e.g. no champion yet: the summary's `note` says why)."""
    with open(summary_path, encoding="utf-8") as fh:
        summary = json.load(fh)
    judgments = read_jsonl(judgments_path, allow_empty=True)  # a row with nothing to judge writes an empty file
    if not judgments:
        return summary, None
    models = {j.get("model") for j in judgments}
    if summary.get("answer_model") and models != {summary["answer_model"]}:
        raise ValueError(f"{judgments_path}: judgments of {sorted(map(str, models))} paired with the summary of "
                         f"{summary['row']!r} ({summary_path})")
    return summary, RowJudgments(
        row=summary["row"], row_kind=summary["row_kind"], judgments=judgments, base_model=summary["base_model"],
        arm=summary["arm"], judge=summary["judge"], answers=int(summary.get("answers", 0)),
        generate_seconds=float(summary.get("generate_seconds", 0.0)),
        llm_cost_usd=float(summary.get("llm_cost_usd", 0.0)))


CANDIDATE_ARMS = ("unscored", "self_guided")  # `control` is a yardstick, never a candidate


def pick_challenger(rows: Sequence[RowJudgments], overall: Mapping[str, float]) -> RowJudgments:
    """The run's best candidate (a trained row of an arm meant for promotion) by its overall mean
    (`overall`: row -> the judge summary's judge/overall), the first of equals in row order."""
    candidates = [r for r in rows if r.row_kind == "trained" and r.arm in CANDIDATE_ARMS]
    if not candidates:
        raise ValueError(f"no trained row of the arms {', '.join(CANDIDATE_ARMS)} to choose a challenger from")
    return max(candidates, key=lambda r: overall.get(r.row, -math.inf))


def run_compare(summary_files: Sequence[str], judgment_files: Sequence[str], *, gate: PromotionGate,
                gpu_hour_usd: float = 0.0, n_resamples: int = MIN_RESAMPLES) -> dict[str, Any]:
    """Everything the compare step decides, as JSON-ready data.

    The i-th summary file belongs to the i-th judgments file (as the pipeline's loops collected
    them; checked against the judgments' model). The challenger is the best trained row of the
    candidate arms (`control` is a yardstick, not a candidate); the champion row is the registry's
    champion re-evaluated in this run (absent: the first champion; the unpaired fallback when it
    exists but could not be re-evaluated; a refusal when it has no logged metrics either).
    """
    if len(summary_files) != len(judgment_files):
        raise ValueError(f"{len(summary_files)} judge summaries but {len(judgment_files)} judgment files")
    rows, notes, champion_summary, overall = [], [], None, {}
    for summary_path, judgments_path in zip(summary_files, judgment_files):
        summary, row = load_row(summary_path, judgments_path)
        if summary["row_kind"] == "champion":
            champion_summary = summary
        if row is None:
            notes.append(f"{summary['row']}: {summary.get('note') or 'no judgments'}")
        else:
            rows.append(row)
            overall[row.row] = float(summary["overall"])
    challenger = pick_challenger(rows, overall)
    comparison = compare_rows(rows, comparisons=default_comparisons(rows, challenger=challenger.row),
                              n_resamples=n_resamples, gpu_hour_usd=gpu_hour_usd)
    champion = next((r for r in rows if r.row_kind == "champion"), None)
    fallback = (champion_summary or {}).get("fallback") or {}
    existing = (champion_summary or {}).get("model")  # the champion's version, when there is one
    if champion is None and existing and not fallback.get("metrics"):
        # A champion exists but has no evidence to compare with: never replace it on none.
        decision = GateDecision(False, [f"champion v{existing} exists but could not be re-evaluated and has no "
                                        f"logged judge metrics ({champion_summary.get('note') or 'no answers'}); "
                                        "promote by hand with `selfguided promote --force` if intended"])
    else:
        decision = decide_promotion(challenger, champion, gate,
                                    fallback_champion_metrics=fallback.get("metrics") if champion is None and fallback
                                    else None,
                                    fallback_champion_judge=fallback.get("judge") if fallback else None)
    return {
        "comparison": comparison.to_dict(),
        "decision": decision.to_dict(),
        "challenger": {"row": challenger.row, "base_model": challenger.base_model, "arm": challenger.arm},
        "champion_version": (champion_summary or {}).get("model") or None,
        "notes": notes,
        "metrics": {r.row: metrics_for_row(comparison, r.row) for r in rows},
        "rows": [{"row": r.row, "row_kind": r.row_kind, "base_model": r.base_model, "arm": r.arm, "judge": r.judge}
                 for r in rows],
    }


def decision_line(result: Mapping[str, Any]) -> str:
    """The gate's verdict in one line, with its first reason."""
    decision = result["decision"]
    verb = "promote" if decision["promote"] else "keep the champion"
    return f"{verb}: challenger {result['challenger']['row']}; {decision['reasons'][0] if decision['reasons'] else ''}"


def run_compare_step(summary_files: Sequence[str], judgment_files: Sequence[str], result_path: str,
                     report_path: str, html_path: str, *, gate: PromotionGate, gpu_hour_usd: float = 0.0
                     ) -> dict[str, Any]:
    """What the KFP component does: decide, then write the JSON result and both reports."""
    result = run_compare(summary_files, judgment_files, gate=gate, gpu_hour_usd=gpu_hour_usd,
                         n_resamples=gate.n_resamples)
    comparison, decision = Comparison.from_dict(result["comparison"]), GateDecision.from_dict(result["decision"])
    notes = "".join(f"\n- {note}" for note in result["notes"])
    markdown = report_markdown(comparison, decision) + (f"\n## Rows without answers\n{notes}\n" if notes else "")
    page = report_html(comparison, decision)
    if any(row["judge"].startswith(OFFLINE_JUDGE_NAME) for row in result["rows"]):
        warning = (f"The judge is `{OFFLINE_JUDGE_NAME}`, a deterministic stand-in for runs without an LLM endpoint: "
                   "it exercises every step, it does not measure quality.")
        title, _, rest = markdown.partition("\n")
        markdown = f"{title}\n\n> {warning}\n{rest}"
        page = page.replace("<body>", f"<body><p><strong>{html.escape(warning)}</strong></p>", 1)
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, ensure_ascii=False, indent=1)
    with open(report_path, "w", encoding="utf-8") as fh:
        fh.write(markdown)
    with open(html_path, "w", encoding="utf-8") as fh:
        fh.write(page)
    print(f"[selfguided] compare: {len(result['rows'])} rows; {decision_line(result)}", flush=True)
    return result


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def compare(
    summaries: Input[List[Artifact]],
    judgments: Input[List[Dataset]],
    reference_summaries: Input[List[Artifact]],
    reference_judgments: Input[List[Dataset]],
    min_improvement: float,
    promotion_tolerance: float,
    min_paired_questions: int,
    gpu_hour_usd: float,
    result: Output[Artifact],
    report: Output[Markdown],
    report_page: Output[HTML],
    metrics: Output[Metrics],
) -> str:
    """Compare every row with its uncertainty and decide, on evidence, whether the challenger is promoted.

    Args:
        summaries: the trained rows' judge summaries (the i-th for the i-th judgments file).
        judgments: the trained rows' per-(question, turn) judgments.
        reference_summaries: the reference rows' judge summaries (base, teacher, champion).
        reference_judgments: the reference rows' judgments.
        min_improvement: the lower bound of the 95% CI of the overall paired difference
            against the champion must exceed it (1-10 scale).
        promotion_tolerance: a category credibly worse than the champion's by more than this
            (its CI's upper bound below -tolerance) blocks the promotion.
        min_paired_questions: shared (question, turn) pairs needed to compare with the champion.
        gpu_hour_usd: price of a GPU hour, for the cost per 1000 answers of local models (0: omitted).
        result: the comparison, the gate's decision and every row's metrics (JSON).
        report: the paper's Table 4.1 with CIs, paired differences, length, cost, decision (Markdown).
        report_page: the same with a forest plot, a score-length scatter and a cost-quality chart.
        metrics: the overall score of every row, and the decision, in the Kubeflow UI.

    Returns:
        The gate's decision in one line.
    """
    from selfguided.components.evaluation.compare import PromotionGate
    from selfguided.components.steps.compare import decision_line, run_compare_step

    gate = PromotionGate(min_improvement=min_improvement, promotion_tolerance=promotion_tolerance,
                         min_paired_questions=min_paired_questions)
    outcome = run_compare_step([s.path for s in summaries] + [s.path for s in reference_summaries],
                               [j.path for j in judgments] + [j.path for j in reference_judgments],
                               result.path, report.path, report_page.path, gate=gate, gpu_hour_usd=gpu_hour_usd)
    for row, values in outcome["metrics"].items():
        if "judge/overall" in values:
            metrics.log_metric(f"{row}/overall", values["judge/overall"])
    metrics.log_metric("promote", float(outcome["decision"]["promote"]))
    return decision_line(outcome)
