"""Evaluation rows as MLflow runs: one run per row per pipeline run, under the pipeline run's parent.

A trained row (a `Candidate`: its model directory and judge summary, paired by the pipeline's loop)
records its fine-tuning parameters, its training curve `train/<name>` per step, its judge metrics
(`judge/<category>/<criterion>` with CIs, from the compare step), its per-question
`judgments.jsonl`, its training set as a run input, and its model, which becomes a version of the
registered model tagged base_model, arm, train_data_sha256 and pipeline_run. A reference row
(base, teacher, champion) records its judge metrics and judgments. Tags on every row run:
`pipeline_run`, `row`, `row_kind`, `base_model`, `arm`, `judge`.
"""

import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import mlflow
import pandas as pd
from mlflow import MlflowClient

from selfguided.components.data.jsonl import DataError
from selfguided.components.evaluation.judge_summary import JudgeSummary, load_row
from selfguided.components.evaluation.metrics import OVERALL, is_judge_metric
from selfguided.components.evaluation.rows import RowJudgments, read_evidence
from selfguided.components.model import artifact as trained_model
from selfguided.components.model.artifact import ModelManifest, read_manifest
from selfguided.components.registry.logged_model import log_trained_model
from selfguided.components.registry.names import RegistryError
from selfguided.components.registry.traces import log_row_traces


@dataclass
class Candidate:
    """One trained model and the judge's verdict on it.

    model_dir: the trained model directory, as the finetune step wrote it (model/artifact.py).
    summary: the judge summary of this model.
    row: its judged row (the judgments, read once; their file is logged with its run), or None.
    """

    model_dir: Path
    summary: JudgeSummary
    row: RowJudgments | None = None
    train_file: Path | None = None
    """The training set it was trained on (`<arm>.jsonl`), logged as the run's input."""

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)

    @cached_property
    def manifest(self) -> ModelManifest:
        return read_manifest(self.model_dir)

    @property
    def label(self) -> str:
        return self.manifest.display_name


def load_candidates(model_dirs: Sequence[str | Path], summary_files: Sequence[str | Path],
                    judgment_files: Sequence[str | Path] | None = None, train_dir: str | Path | None = None
                    ) -> list[Candidate]:
    """Candidates from the pipeline loop's collected outputs: the i-th model with the i-th judge
    summary (and judgments, read once: judge_summary.load_row).

    The loop already paired them; this checks that each pair is what it claims (the summary was
    made for the model's base model, arm and training-seed replicate) and raises DataError naming
    both files otherwise.
    """
    if not model_dirs:
        raise DataError("no model directories given")
    if len(model_dirs) != len(summary_files):
        raise DataError(f"{len(model_dirs)} model directories but {len(summary_files)} judge summaries")
    candidates = []
    judgment_files = list(judgment_files) if judgment_files is not None else [None] * len(model_dirs)
    for model_dir, path, judgments in zip(model_dirs, summary_files, judgment_files):
        summary, row = load_row(path, judgments) if judgments else (JudgeSummary.read(path), None)
        candidate = Candidate(model_dir, summary, row)
        manifest = candidate.manifest
        claimed = (summary.base_model, summary.arm, summary.replicate)
        if summary.row_kind != "trained" or claimed != (manifest.base_model, manifest.arm, manifest.replicate):
            raise DataError(f"{path}: judge summary of {summary.row!r} paired with the model in {model_dir} "
                            f"({manifest.display_name}, replicate {manifest.replicate})")
        if train_dir is not None and (Path(train_dir) / f"{manifest.arm}.jsonl").is_file():
            candidate.train_file = Path(train_dir) / f"{manifest.arm}.jsonl"
        candidates.append(candidate)
    return candidates


@dataclass
class ReferenceRow:
    """A reference row of the evaluation (base, teacher, champion): its summary and judged row."""

    summary: JudgeSummary
    row: RowJudgments | None = None


def load_evidence(folder: str | Path, model_dirs: Sequence[str | Path], train_dir: str | Path | None = None
                  ) -> tuple[list[Candidate], list[ReferenceRow]]:
    """The candidates (the i-th model with the i-th trained row, checked by `load_candidates`) and
    the reference rows of an evidence folder (evaluation/rows.write_evidence), each row read once."""
    rows = read_evidence(folder)
    trained = [r for r in rows if r.trained]
    candidates = load_candidates(model_dirs, [r.summary for r in trained], [r.judgments for r in trained],
                                 train_dir=train_dir)
    references = [ReferenceRow(*load_row(r.summary, r.judgments)) for r in rows if not r.trained]
    return candidates, references


def run_row(client: MlflowClient, run, row_kind: str | None = None) -> RowJudgments | None:
    """An evaluation row's MLflow run back as a judged row: its `judgments.jsonl` and its tags (`row`,
    `row_kind` unless given, `base_model`, `arm`, `judge`, `replicate`); None when the run logged no
    judgments (e.g. a row that had nothing to judge). The one reader of a row from MLflow (promote
    by hand, `selfguided plan-eval`)."""
    from mlflow.exceptions import MlflowException

    from selfguided.components.data.jsonl import read_jsonl

    tags = run.data.tags
    with tempfile.TemporaryDirectory(prefix="selfguided-judgments-") as staging:
        try:
            path = client.download_artifacts(run.info.run_id, "judgments.jsonl", staging)
        except (MlflowException, OSError):
            return None
        judgments = read_jsonl(path, allow_empty=True)
    if not judgments:
        return None
    return RowJudgments(row=tags.get("row", "") or run.info.run_id, row_kind=row_kind or tags.get("row_kind", ""),
                        judgments=judgments, base_model=tags.get("base_model", ""), arm=tags.get("arm", ""),
                        judge=tags.get("judge", ""), replicate=int(tags.get("replicate", 0) or 0))


def default_artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: `artifacts/` next to a SQLite database file.

    Other stores (an MLflow server, a database server) decide for themselves: None.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0]).resolve()
    return (db_path.parent / "artifacts").as_uri()


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))
    if experiment.lifecycle_stage != "active":
        raise RegistryError(f"MLflow experiment {name!r} at {tracking_uri} is deleted; restore it "
                            f"(MlflowClient().restore_experiment({experiment.experiment_id!r})) or use another name")
    return experiment.experiment_id


def _flatten(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    """Nested config -> flat MLflow params `prefix.key.sub`; lists as JSON."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(name, value))
        else:
            flat[name] = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, tuple)) else str(value)
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _row_tags(summary: JudgeSummary, pipeline_run: str, parent_run_id: str) -> dict[str, str]:
    """The tags of a row's run (DESIGN.md's MLflow conventions); `replicate` with --replicates."""
    return {"pipeline_run": pipeline_run, "row": summary.row, "row_kind": summary.row_kind,
            "base_model": summary.base_model, "arm": summary.arm, "judge": summary.judge.label,
            "replicate": str(summary.replicate), "mlflow.parentRunId": parent_run_id}


def _judge_params(summary: JudgeSummary) -> dict[str, str]:
    """Who graded the row, as run parameters: the judge's model and its prompt (name and version, the
    identity's `prompt_id`); the `judge` tag is its label."""
    return {"judge_model": summary.judge.model, "judge_prompt": summary.judge.prompt_id}


def _row_metrics(summary: JudgeSummary, evaluation_metrics: Mapping[str, float] | None) -> dict[str, float]:
    """The compare step's metrics of a row (with CIs), or the judge summary's means without them."""
    metrics = dict(evaluation_metrics) if evaluation_metrics else dict(summary.metrics)
    metrics.update({"judge_run/n_judged": float(summary.n_judged), "judge_run/n_failed": float(summary.n_failed)})
    metrics.update({f"judge_usage/{k}": float(v) for k, v in summary.usage.items()})
    return metrics


def _log_row_files(row: RowJudgments | None, summary: JudgeSummary) -> None:
    mlflow.log_dict(summary.to_json(), "judge_summary.json")
    if row is not None and row.judgments_file is not None and Path(row.judgments_file).is_file():
        with tempfile.TemporaryDirectory(prefix="selfguided-judgments-") as staging:
            named = Path(staging) / "judgments.jsonl"  # per (question, turn), whatever the step named the file
            shutil.copyfile(row.judgments_file, named)
            mlflow.log_artifact(str(named))
    if row is not None:
        log_row_traces(row)  # every judged answer as a trace of this run, for people to check


def log_dataset(path: Path, name: str, context: str) -> None:
    """A JSONL file as an MLflow run input (name, digest, schema, source)."""
    frame = pd.read_json(path, lines=True)
    mlflow.log_input(mlflow.data.from_pandas(frame, source=str(path), name=name), context=context)


@dataclass
class RegisteredVersion:
    """A candidate after registration: where it went and what it scored."""

    label: str  # readable, e.g. "tiny/self_guided"; never parsed
    base_model: str
    arm: str
    version: str
    run_id: str
    model_uri: str
    metrics: dict[str, float]  # the judge metrics, `judge/...`


def log_candidate(
    client: MlflowClient,
    candidate: Candidate,
    *,
    experiment_id: str,
    registered_model_name: str,
    pipeline_run: str,
    parent_run_id: str,
    scored_data_sha256: str,
    evaluation_metrics: Mapping[str, float] | None,
) -> RegisteredVersion:
    """One MLflow run for one candidate: params, metrics, curve, judgments, the logged model and its version."""
    manifest, summary = candidate.manifest, candidate.summary
    identity = {"base_model": manifest.base_model, "arm": manifest.arm}
    origin = {"base_model_ref": manifest.base_model_ref, "base_revision": manifest.base_revision or "",
              "strategy": manifest.strategy, "method": manifest.method}
    train_metrics = manifest.train_metrics
    params = {
        **identity,
        **origin,
        **_flatten("finetune", manifest.config),
        # Non-numeric training facts (device, dtype) are parameters of the run, not metrics.
        **{f"train.{k}": str(v) for k, v in train_metrics.items() if not _is_number(v)},
        **_judge_params(summary),
    }
    judge_metrics = _row_metrics(summary, evaluation_metrics)
    metrics = {**{f"train/{k}": float(v) for k, v in train_metrics.items() if _is_number(v)}, **judge_metrics}
    version_tags = {**identity, "pipeline_run": pipeline_run, "train_data_sha256": manifest.train_data_sha256,
                    "replicate": str(summary.replicate)}  # which training seed of its (base, arm)
    run_tags = {**_row_tags(summary, pipeline_run, parent_run_id), "scored_data_sha256": scored_data_sha256,
                "train_data_sha256": manifest.train_data_sha256}
    with mlflow.start_run(experiment_id=experiment_id, run_name=candidate.label, tags=run_tags) as run:
        mlflow.log_params(params)
        _log_row_files(candidate.row, summary)
        for row in trained_model.read_train_log(candidate.model_dir):  # the training curve
            step = int(row.get("step", 0))
            curve = {f"train/{k}": float(v) for k, v in row.items() if k != "step" and _is_number(v)}
            if curve:
                mlflow.log_metrics(curve, step=step)
        if candidate.train_file is not None:
            log_dataset(candidate.train_file, f"{manifest.arm}.jsonl", context="training")
        info = log_trained_model(candidate.model_dir, {
            **identity, **origin,
            "base_weights": "bundled" if manifest.bundled_base else "referenced",
        })
        # Logged with the model id, the metrics show on the run and on the LoggedModel.
        mlflow.log_metrics(metrics, model_id=info.model_id)
        model_version = client.create_model_version(
            registered_model_name,
            source=info.model_uri,
            run_id=run.info.run_id,
            model_id=info.model_id,
            tags={**version_tags, **origin, "judge_overall": f"{judge_metrics[OVERALL]:.4f}"},
        )
    return RegisteredVersion(
        label=candidate.label,
        base_model=manifest.base_model,
        arm=manifest.arm,
        version=str(model_version.version),
        run_id=run.info.run_id,
        model_uri=f"models:/{registered_model_name}/{model_version.version}",
        metrics={k: v for k, v in judge_metrics.items() if is_judge_metric(k)},
    )


def log_reference(reference: ReferenceRow, *, experiment_id: str, pipeline_run: str, parent_run_id: str,
                   evaluation_metrics: Mapping[str, float] | None) -> str:
    """One MLflow run for a reference row (base, teacher, champion); returns its run id."""
    summary = reference.summary
    tags = {**_row_tags(summary, pipeline_run, parent_run_id), "model": summary.model}
    if summary.note:
        tags["note"] = summary.note[:5000]
    with mlflow.start_run(experiment_id=experiment_id, run_name=summary.row, tags=tags) as run:
        mlflow.log_params(_judge_params(summary))
        _log_row_files(reference.row, summary)
        if summary.n_judged:
            mlflow.log_metrics(_row_metrics(summary, evaluation_metrics))
    return run.info.run_id

