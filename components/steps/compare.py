"""Step 6, compare: every row's judgments in; the evidence (components/evaluation) and the gate's decision out.

The challenger is the run's best candidate arm; its bar is the registry's champion re-evaluated in
this run (with no champion yet, the untuned base row of its base model). The step writes the
comparison and the decision as JSON (read by the register step, which logs them and moves the
aliases), the report as Markdown and as HTML with plots (shown in the Kubeflow UI, logged to
MLflow, printed by `selfguided run`).
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
import html
import json
from typing import Any, List, Mapping, Sequence

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.data import read_jsonl
from selfguided.components.evaluation.gate import Evaluation, GateDecision, PromotionGate, evaluate_run
from selfguided.components.evaluation.metrics import metrics_for_row
from selfguided.components.evaluation.report import ReportSection, report_html, report_markdown
from selfguided.components.evaluation.rows import RowJudgments
from selfguided.components.images import CPU_IMAGE
from selfguided.components.judging.agreement import review_judges
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
        llm_cost_usd=float(summary.get("llm_cost_usd", 0.0)), replicate=int(summary.get("replicate", 0) or 0))


def _evaluate(summary_files: Sequence[str], judgment_files: Sequence[str], gate: PromotionGate, gpu_hour_usd: float
              ) -> tuple[Evaluation, dict[str, Any]]:
    if len(summary_files) != len(judgment_files):
        raise ValueError(f"{len(summary_files)} judge summaries but {len(judgment_files)} judgment files")
    rows, notes, champion_summary = [], [], None
    for summary_path, judgments_path in zip(summary_files, judgment_files):
        summary, row = load_row(summary_path, judgments_path)
        if summary["row_kind"] == "champion":
            champion_summary = summary
        if row is None:
            notes.append(f"{summary['row']}: {summary.get('note') or 'no judgments'}")
        else:
            rows.append(row)
    existing = (champion_summary or {}).get("model") or None  # the champion's version, when there is one
    evaluation = evaluate_run(rows, gate, existing_champion=existing,
                              fallback=(champion_summary or {}).get("fallback") or None, gpu_hour_usd=gpu_hour_usd)
    context = {
        "champion_version": existing,
        "notes": notes,
        "metrics": {r.row: metrics_for_row(evaluation.comparison, r.row) for r in rows},
        "rows": [{"row": r.row, "row_kind": r.row_kind, "base_model": r.base_model, "arm": r.arm, "judge": r.judge,
                  "replicate": r.replicate} for r in rows],
    }
    return evaluation, context


def run_compare(summary_files: Sequence[str], judgment_files: Sequence[str], *, gate: PromotionGate,
                gpu_hour_usd: float = 0.0, min_judge_agreement: float = 0.0, scoring_model: str = "") -> dict[str, Any]:
    """Everything the compare step decides, as the JSON the register step reads (the step's own
    decision, jury hook included, without writing the reports).

    The i-th summary file belongs to the i-th judgments file (as the pipeline's loops collected
    them; checked against the judgments' model). The challenger is the best candidate arm
    (evaluation.gate.pick_challenger); its bar is the registry's champion re-evaluated in this run,
    or with no champion yet the untuned base row of its base model (evaluation.gate).
    """
    return _decide(summary_files, judgment_files, gate=gate, gpu_hour_usd=gpu_hour_usd,
                   min_judge_agreement=min_judge_agreement, scoring_model=scoring_model)[1]


def _decide(summary_files: Sequence[str], judgment_files: Sequence[str], *, gate: PromotionGate, gpu_hour_usd: float,
            min_judge_agreement: float, scoring_model: str) -> tuple[Evaluation, dict[str, Any], str]:
    """(the evaluation, the result JSON, the Judges section): the gate's decision, then the jury's
    agreement (judging/agreement.py: per-judge metrics, its warnings in the decision, and a refusal
    when the judges agree less than min_judge_agreement)."""
    evaluation, context = _evaluate(summary_files, judgment_files, gate, gpu_hour_usd)
    result = _result(evaluation, context)
    judges = review_judges(result, summary_files, judgment_files, scoring_model=scoring_model,
                           min_agreement=min_judge_agreement)
    return evaluation, result, judges


def _result(evaluation: Evaluation, context: Mapping[str, Any]) -> dict[str, Any]:
    return {"comparison": evaluation.comparison.to_dict(), "decision": evaluation.decision.to_dict(),
            "challenger": evaluation.challenger.to_dict(), **context}


def decision_line(result: Mapping[str, Any]) -> str:
    """The gate's verdict in one line, with its first reason."""
    decision = result["decision"]
    verb = "promote" if decision["promote"] else "keep the champion"
    return f"{verb}: challenger {result['challenger']['row']}; {decision['reasons'][0] if decision['reasons'] else ''}"


def run_compare_step(summary_files: Sequence[str], judgment_files: Sequence[str], result_path: str,
                     report_path: str, html_path: str, *, gate: PromotionGate, gpu_hour_usd: float = 0.0,
                     min_judge_agreement: float = 0.0, scoring_model: str = "", tracking_uri: str = "",
                     experiment_name: str = "") -> dict[str, Any]:
    """What the KFP component does: decide, then write the JSON result and both reports. With a
    tracking URI, the report also says how the judges fared against the editors' HUMAN scores of
    earlier runs' review samples (registry/review.py)."""
    evaluation, result, judges = _decide(summary_files, judgment_files, gate=gate, gpu_hour_usd=gpu_hour_usd,
                                         min_judge_agreement=min_judge_agreement, scoring_model=scoring_model)
    comparison, decision = evaluation.comparison, GateDecision.from_dict(result["decision"])
    notes = "".join(f"\n- {note}" for note in result["notes"])
    section = [ReportSection("Judges", judges.partition("\n")[2].strip())]  # review_judges writes "## Judges" first
    if tracking_uri:
        from selfguided.components.registry.review import editors_section

        try:
            editors = editors_section(tracking_uri, experiment_name)
        except Exception as exc:  # noqa: BLE001 - the decision never rests on it: say why it is missing
            editors = (f"## Judges against the editors\n\nThe editors' labels could not be read "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}).")
        if editors:  # its own "## ..." title first, as review_judges'
            title, _, body = editors.partition("\n")
            section.append(ReportSection(title.lstrip("# "), body.strip()))
    markdown = report_markdown(comparison, decision, extra=section) + (f"\n## Rows without answers\n{notes}\n"
                                                                        if notes else "")
    page = report_html(comparison, decision, extra=section)
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
    teacher_rows: Input[Artifact],
    min_improvement: float,
    promotion_tolerance: float,
    min_paired_questions: int,
    gpu_hour_usd: float,
    result: Output[Artifact],
    evidence: Output[Artifact],
    report: Output[Markdown],
    report_page: Output[HTML],
    metrics: Output[Metrics],
    min_judge_agreement: float = 0.0,
    scoring_model: str = "",
    tracking_uri: str = "",
    experiment_name: str = "",
) -> str:
    """Compare every row with its uncertainty and decide, on evidence, whether the challenger is promoted.

    Args:
        summaries: the trained rows' judge summaries (the i-th for the i-th judgments file).
        judgments: the trained rows' per-(question, turn) judgments.
        reference_summaries: the reference rows' judge summaries (base, champion).
        reference_judgments: the reference rows' judgments.
        teacher_rows: the teacher rows' judge summaries and judgments, judged by one task (a folder,
            evaluation/rows.write_evidence; empty without a teacher).
        min_improvement: the one-sided lower confidence bound (alpha 0.02 over the candidate arms) of
            the overall paired difference against the champion (or, first, the base) must exceed it.
        promotion_tolerance: a category credibly worse than the champion's by more than this
            (Holm-adjusted one-sided t test) blocks the promotion.
        min_paired_questions: shared questions (not (question, turn) pairs) needed to compare with the bar.
        gpu_hour_usd: price of a GPU hour, for the cost per 1000 answers of local models (0: omitted).
        result: the comparison, the gate's decision and every row's metrics (JSON).
        evidence: every row's judge summary and judgments as compare read them, paired (a folder,
            evaluation/rows.write_evidence): what the register step logs, without pairing them again.
        report: the paper's Table 4.1 with CIs, paired differences, length, cost, decision (Markdown).
        report_page: the same with a forest plot, a score-length scatter and a cost-quality chart.
        metrics: the overall score of every row, and the decision, in the Kubeflow UI.
        min_judge_agreement: refuse the promotion when the jury's Krippendorff's alpha is below this (0: off).
        scoring_model: the model that scored the seed data, for the circularity check of a jury.
        tracking_uri: MLflow tracking URI: the report adds the judges' agreement with the editors'
            HUMAN scores on earlier review samples (`selfguided review`); "" = left out.
        experiment_name: the MLflow experiment of the judged answers (its review samples are in
            `<experiment_name>-review`).

    Returns:
        The gate's decision in one line.
    """
    from selfguided.components.evaluation.gate import PromotionGate
    from selfguided.components.evaluation.rows import read_evidence, write_evidence
    from selfguided.components.steps.compare import decision_line, run_compare_step

    gate = PromotionGate(min_improvement=min_improvement, promotion_tolerance=promotion_tolerance,
                         min_paired_questions=min_paired_questions)
    teachers = read_evidence(teacher_rows.path)
    summary_files = [s.path for s in summaries] + [s.path for s in reference_summaries] + [t.summary for t in teachers]
    judgment_files = [j.path for j in judgments] + [j.path for j in reference_judgments] + [t.judgments for t in teachers]
    write_evidence(evidence.path, summary_files, judgment_files, trained=len(summaries))
    outcome = run_compare_step(summary_files, judgment_files, result.path, report.path, report_page.path, gate=gate, gpu_hour_usd=gpu_hour_usd,
                               min_judge_agreement=min_judge_agreement, scoring_model=scoring_model,
                               tracking_uri=tracking_uri, experiment_name=experiment_name)
    for row, values in outcome["metrics"].items():
        if "judge/overall" in values:
            metrics.log_metric(f"{row}/overall", values["judge/overall"])
    metrics.log_metric("promote", float(outcome["decision"]["promote"]))
    return decision_line(outcome)
