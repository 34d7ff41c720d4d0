"""Step 6, compare: every row's judgments in; the evidence (components/evaluation) and the gate's decision out.

The challenger is the run's best candidate arm; its bar is the registry's champion re-evaluated in
this run (with no champion yet, the untuned base row of its base model). The step writes the
comparison and the decision as JSON (read by the register step, which logs them and moves the
aliases), the report as Markdown and as HTML with plots (shown in the Kubeflow UI, logged to
MLflow, printed by `selfguided run`).
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
from typing import List, Sequence

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.evaluation.agreement import jury_agreement
from selfguided.components.evaluation.compare_result import CompareResult, RowIdentity
from selfguided.components.evaluation.decision import PromotionGate
from selfguided.components.evaluation.gate import evaluate_run
from selfguided.components.evaluation.gate_rules import judge_agreement_rule
from selfguided.components.evaluation.judge_summary import JudgeSummary, load_row
from selfguided.components.evaluation.metrics import metrics_for_row
from selfguided.components.evaluation.report import ReportSection, judges_section, report_html, report_markdown
from selfguided.components.evaluation.slices import slice_figures, slice_metrics, slices_section
from selfguided.components.images import CPU_IMAGE


def decide(summary_files: Sequence[str], judgment_files: Sequence[str], *, gate: PromotionGate,
           gpu_hour_usd: float = 0.0, min_judge_agreement: float = 0.0, scoring_model: str = ""
           ) -> tuple[CompareResult, list[JudgeSummary]]:
    """Everything the compare step decides, and the rows' summaries: every row read once
    (judge_summary.load_row; the i-th summary file belongs to the i-th judgments file, as the
    pipeline's loops collected them, checked against the judgments' model), the jury's agreement,
    and the gate's decision with every rule, the jury's included (gate_rules.judge_agreement_rule:
    a refusal below `min_judge_agreement`). The challenger is the best candidate arm
    (gate.pick_challenger); its bar is the registry's champion re-evaluated in this run, or with no
    champion yet the untuned base row of its base model (evaluation.gate)."""
    if len(summary_files) != len(judgment_files):
        raise ValueError(f"{len(summary_files)} judge summaries but {len(judgment_files)} judgment files")
    rows, notes, summaries = [], [], []
    for summary_path, judgments_path in zip(summary_files, judgment_files):
        summary, row = load_row(summary_path, judgments_path)
        summaries.append(summary)
        if row is None:
            notes.append(f"{summary.row}: {summary.note or 'no judgments'}")
        else:
            rows.append(row)
    champion = next((s for s in summaries if s.row_kind == "champion"), None)
    existing = (champion.model or None) if champion else None  # the champion's version, when there is one
    fallback = champion.fallback if champion else None
    agreement = jury_agreement(rows, scoring_model=scoring_model)
    evaluation = evaluate_run(rows, gate, existing_champion=existing, gpu_hour_usd=gpu_hour_usd,
                              fallback=fallback.to_json() if fallback else None,
                              rules=[lambda decision: judge_agreement_rule(decision, agreement, min_judge_agreement)])
    judge_metrics = agreement.metrics()
    metrics = {r.row: {**metrics_for_row(evaluation.comparison, r.row), **judge_metrics.get(r.row, {})} for r in rows}
    # The gate decided on fixed + unseen questions (gate.evaluate_run); every slice is reported apart.
    slices = slice_figures(rows, evaluation.challenger, gate_bar(evaluation.decision.figures),
                           min_category_questions=gate.min_category_questions)
    metrics.setdefault(evaluation.challenger.row, {}).update(slice_metrics(slices))
    result = CompareResult(evaluation.comparison, evaluation.decision, evaluation.challenger, existing, metrics,
                           [RowIdentity.of(r) for r in rows], agreement, notes, slices)
    return result, summaries


def gate_bar(figures: dict) -> str | None:
    """The row the gate compared the challenger with, pair by pair (champion, or base for the first
    champion), from its decision's figures; None when it had none (e.g. the unpaired fallback)."""
    mode = figures.get("mode")
    return figures.get("champion") if mode == "paired" else figures.get("base") if mode == "first_champion" else None


def measured_champion_cost(result: CompareResult, tracking_uri: str, registered_model_name: str,
                           gpu_hour_usd: float) -> None:
    """The champion row's cost per 1000 answers from its throughput measured under load, when
    `selfguided bench-serve --model-version` tagged its version with one (serving/serving_cost.py),
    instead of its generate step's batch time; the basis says so and names the bench run."""
    if not (tracking_uri and registered_model_name and result.champion_version):
        return
    from selfguided.components.serving.serving_cost import gpu_usd_per_1000, measured_answers_per_gpu_hour

    try:
        measured = measured_answers_per_gpu_hour(tracking_uri, registered_model_name, result.champion_version)
    except Exception as exc:  # noqa: BLE001 - the cost table keeps the generate time; the decision never rests on it
        print(f"[selfguided] compare: no measured serving throughput ({type(exc).__name__})", flush=True)
        return
    if measured is None:
        return
    per_hour, run_id = measured
    where = f"measured under load: {per_hour:,.0f} answers/GPU-hour (bench-serve, MLflow run {run_id})"
    for row in result.comparison.rows:
        if row.row_kind == "champion":
            row.usd_per_1000_answers = gpu_usd_per_1000(gpu_hour_usd, per_hour / 3600)
            row.cost_basis = (f"{where} at ${gpu_hour_usd:g}/GPU-hour" if row.usd_per_1000_answers is not None
                              else f"set gpu_hour_usd; {where}")


def run_compare_step(summary_files: Sequence[str], judgment_files: Sequence[str], result_path: str,
                     report_path: str, html_path: str, *, gate: PromotionGate, gpu_hour_usd: float = 0.0,
                     min_judge_agreement: float = 0.0, scoring_model: str = "", tracking_uri: str = "",
                     experiment_name: str = "", registered_model_name: str = "") -> CompareResult:
    """What the KFP component does: decide, then write the result (CompareResult) and both reports.
    With a tracking URI, the report also says how the judges fared against the editors' HUMAN scores
    of earlier runs' review samples (registry/review.py), and with the registered model's name the
    champion's cost uses its throughput measured under load when there is one (measured_champion_cost)."""
    result, summaries = decide(summary_files, judgment_files, gate=gate, gpu_hour_usd=gpu_hour_usd,
                               min_judge_agreement=min_judge_agreement, scoring_model=scoring_model)
    measured_champion_cost(result, tracking_uri, registered_model_name, gpu_hour_usd)
    slices = slices_section(result.slices, result.challenger.row, gate_bar(result.decision.figures))
    sections = ([slices] if slices else []) + [judges_section(result.judges)]
    if tracking_uri:
        from selfguided.components.registry.review import editors_section

        try:
            editors = editors_section(tracking_uri, experiment_name)
        except Exception as exc:  # noqa: BLE001 - the decision never rests on it: say why it is missing
            editors = (f"## Judges against the editors\n\nThe editors' labels could not be read "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}).")
        if editors:  # its own "## ..." title first
            title, _, body = editors.partition("\n")
            sections.append(ReportSection(title.lstrip("# "), body.strip()))
    # Every judge that does not measure quality says so once, at the top (judging/judge.Judge.disclaimer).
    notice = " ".join(dict.fromkeys(d for s in summaries if (d := s.jury.as_judge().disclaimer)))
    notes = "".join(f"\n- {note}" for note in result.notes)
    markdown = report_markdown(result.comparison, result.decision, extra=sections, notice=notice) + (
        f"\n## Rows without answers\n{notes}\n" if notes else "")
    page = report_html(result.comparison, result.decision, extra=sections, notice=notice)
    result.write(result_path)
    with open(report_path, "w", encoding="utf-8") as fh:
        fh.write(markdown)
    with open(html_path, "w", encoding="utf-8") as fh:
        fh.write(page)
    print(f"[selfguided] compare: {len(result.rows)} rows; {result.decision_line()}", flush=True)
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
    registered_model_name: str = "",
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
        promotion_tolerance: a category of at least 5 questions whose paired difference is not shown
            above -promotion_tolerance blocks the promotion (evaluation/gate.py).
        min_paired_questions: shared questions (not (question, turn) pairs) needed to compare with the bar.
        gpu_hour_usd: price of a GPU hour, for the cost per 1000 answers of local models (0: omitted).
        result: the comparison, the gate's decision (every rule included), the challenger and every
            row's metrics (JSON, evaluation/compare_result.CompareResult).
        evidence: every row's judge summary and judgments as compare read them, paired (a folder,
            evaluation/rows.write_evidence): what the register step logs, without pairing them again.
        report: the paper's Table 4.1 with CIs, paired differences, length, cost, decision (Markdown).
        report_page: the same with a forest plot, a score-length scatter and a cost-quality chart.
        metrics: the overall score of every row, and the decision, in the Kubeflow UI.
        min_judge_agreement: the gate refuses the promotion when the jury's Krippendorff's alpha is below this (0: off).
        scoring_model: the model that scored the seed data, for the circularity check of a jury.
        tracking_uri: MLflow tracking URI: the report adds the judges' agreement with the editors'
            HUMAN scores on earlier review samples (`selfguided review`); "" = left out.
        experiment_name: the MLflow experiment of the judged answers (its review samples are in
            `<experiment_name>-review`).
        registered_model_name: the MLflow registered model: the champion's cost per 1000 answers uses
            the throughput `selfguided bench-serve` measured on its version, when there is one.

    Returns:
        The gate's decision in one line.
    """
    from selfguided.components.evaluation.decision import PromotionGate
    from selfguided.components.evaluation.metrics import OVERALL
    from selfguided.components.evaluation.rows import read_evidence, write_evidence
    from selfguided.components.steps.compare import run_compare_step

    gate = PromotionGate(min_improvement=min_improvement, promotion_tolerance=promotion_tolerance,
                         min_paired_questions=min_paired_questions)
    teachers = read_evidence(teacher_rows.path)
    summary_files = [s.path for s in summaries] + [s.path for s in reference_summaries] + [t.summary for t in teachers]
    judgment_files = [j.path for j in judgments] + [j.path for j in reference_judgments] + [t.judgments for t in teachers]
    write_evidence(evidence.path, summary_files, judgment_files, trained=len(summaries))
    outcome = run_compare_step(summary_files, judgment_files, result.path, report.path, report_page.path, gate=gate,
                               gpu_hour_usd=gpu_hour_usd, min_judge_agreement=min_judge_agreement,
                               scoring_model=scoring_model, tracking_uri=tracking_uri, experiment_name=experiment_name,
                               registered_model_name=registered_model_name)
    for row, values in outcome.metrics.items():
        if OVERALL in values:
            metrics.log_metric(f"{row}/overall", values[OVERALL])  # the KFP UI's name: row, then its overall
    for name, value in outcome.metrics.get(outcome.challenger.row, {}).items():
        if name.startswith("slice/"):  # the test-set slices (evaluation/slices.py), when harvested questions ran
            metrics.log_metric(name, value)
    metrics.log_metric("promote", float(outcome.decision.promote))
    return outcome.decision_line()
