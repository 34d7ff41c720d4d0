"""Register step: log every row of the evaluation to MLflow, register the trained models, move the aliases.

The work is the registry library's (`components/registry/`): `runs.py` logs one MLflow run per
evaluation row (trained rows also become model versions, `logged_model.py`), `promotion.py` moves
the `challenger` and `champion` aliases as the compare step's gate decided. What the step did is
its JSON output (`RegisterReport.to_dict`), which `selfguided run` prints.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations as real types.
from typing import List, NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model, Output
# The decorator from its own module, not `kfp.dsl.component`: while a component runs
# (_KFP_RUNTIME=true) kfp.dsl leaves out its compile-time names.
from kfp.dsl.component_decorator import component

from selfguided.components.images import CPU_IMAGE


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def register(
    models: Input[List[Model]],
    evidence: Input[Artifact],
    evaluation: Input[Artifact],
    evaluation_report: Input[Markdown],
    evaluation_page: Input[HTML],
    scored_data: Input[Dataset],
    train_data: Input[Dataset],
    questions: Input[Dataset],
    registered_model_name: str,
    tracking_uri: str,
    experiment_name: str,
    pipeline_run: str,
    report: Output[Markdown],
) -> NamedTuple("Outputs", [("result", str), ("promoted", bool), ("champion_version", str),
                            ("champion_storage_uri", str)]):
    """Log every row of the evaluation to MLflow, register every trained model, move the aliases as the
    compare step decided.

    Args:
        models: trained model directories (finetune outputs), one per (base model, arm, replicate),
            in the order the loop collected them.
        evidence: the compare step's rows (evaluation/rows.write_evidence): every row's judge summary
            and judgments, the trained rows first, in the models' order.
        evaluation: the compare step's result (evaluation/compare_result.CompareResult: comparison,
            decision, challenger, metrics, the champion version it evaluated).
        evaluation_report: the compare step's Markdown report (logged on the parent run).
        evaluation_page: the compare step's HTML report (logged on the parent run).
        scored_data: the scored seed JSONL (its SHA-256 tags every run; logged as an input).
        train_data: the split's training sets (each trained run logs its own as an input).
        questions: the split's test questions, the judges' input: the experiment's evaluation dataset
            (its Datasets page; every row run's input), with the run's judges on its Judges page.
        registered_model_name: MLflow registered model to add versions to.
        tracking_uri: MLflow tracking URI (`http://...` server, or `sqlite:////abs/mlflow.db`).
        experiment_name: MLflow experiment holding the pipeline run's parent run and one run per row.
        pipeline_run: id of this pipeline run, tagged on runs and versions.
        report: Markdown report: versions, per-category scores, the decision and its reasons.

    Returns:
        result: what the step did as JSON (RegisterReport.to_dict): the decision line first, then
            whether it promoted, the reasons, every version registered, and the evaluation report;
        promoted: whether a new champion was promoted;
        champion_version: the version `champion` points at now ("" when none).
        champion_storage_uri: where a newly promoted champion's merged weights are ("" otherwise).
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    from selfguided.components.data.hashing import file_sha256
    from selfguided.components.evaluation.compare_result import CompareResult
    from selfguided.components.registry.promotion import register_candidates
    from selfguided.components.registry.runs import load_evidence

    candidates, references = load_evidence(evidence.path, [m.path for m in models], train_dir=train_data.path)
    result = register_candidates(
        candidates,
        evaluation=CompareResult.read(evaluation.path),
        references=references,
        tracking_uri=tracking_uri,
        registered_model_name=registered_model_name,
        experiment_name=experiment_name,
        pipeline_run=pipeline_run,
        scored_data_sha256=file_sha256(scored_data.path),
        scored_data=scored_data.path,
        reports={"report.md": evaluation_report.path, "report.html": evaluation_page.path},
        questions=questions.path,
    )
    Path(report.path).write_text(result.to_markdown(), encoding="utf-8")
    report.metadata.update({"challenger": result.challenger.version, "champion": result.champion_after or "",
                            "promoted": result.decision.promote})
    outputs = namedtuple("Outputs", ["result", "promoted", "champion_version", "champion_storage_uri"])
    return outputs(json.dumps(result.to_dict(), ensure_ascii=False), result.decision.promote,
                   result.champion_after or "", result.champion_storage_uri)

