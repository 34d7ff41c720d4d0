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

from selfguided.components.data import DataError
from selfguided.components.evaluation.rows import read_evidence
from selfguided.components.model import artifact as trained_model
from selfguided.components.model.artifact import ModelManifest, read_manifest
from selfguided.components.registry.logged_model import log_trained_model
from selfguided.components.registry.names import RegistryError
from selfguided.components.registry.traces import log_row_traces


def read_summary(path: str | Path) -> dict[str, Any]:
    """Read and check a judge summary JSON file (the judge step's output)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: judge summary file not found")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(summary, dict):
        raise DataError(f"{path}: expected a JSON object")
    for key in ("row", "row_kind", "base_model", "arm"):
        if not isinstance(summary.get(key), str):
            raise DataError(f"{path}: field {key!r} is missing or not a string")
    for key in ("metrics", "usage"):
        values = summary.get(key, {})
        if not isinstance(values, dict):
            raise DataError(f"{path}: field {key!r} must be a JSON object of name -> number")
        bad = [k for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise DataError(f"{path}: field {key!r} has non-numeric values for {', '.join(bad[:5])}")
    if "judge/overall" not in summary.get("metrics", {}):
        raise DataError(f"{path}: field 'metrics' has no 'judge/overall'")
    return summary


@dataclass
class Candidate:
    """One trained model and the judge's verdict on it.

    model_dir: the trained model directory, as the finetune step wrote it (model/artifact.py).
    summary: the judge summary of this model (see `read_summary`).
    """

    model_dir: Path
    summary: dict[str, Any]
    judgments_file: Path | None = None
    """The judge step's per-(question, turn) judgments of this model, logged with its run."""
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
    """Candidates from the pipeline loop's collected outputs: the i-th model with the i-th summary.

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
        candidate = Candidate(model_dir, read_summary(path), Path(judgments) if judgments else None)
        manifest, summary = candidate.manifest, candidate.summary
        claimed = (summary["base_model"], summary["arm"], int(summary.get("replicate", 0) or 0))
        if summary["row_kind"] != "trained" or claimed != (manifest.base_model, manifest.arm, manifest.replicate):
            raise DataError(f"{path}: judge summary of {summary['row']!r} paired with the model in {model_dir} "
                            f"({manifest.display_name}, replicate {manifest.replicate})")
        if train_dir is not None and (Path(train_dir) / f"{manifest.arm}.jsonl").is_file():
            candidate.train_file = Path(train_dir) / f"{manifest.arm}.jsonl"
        candidates.append(candidate)
    return candidates


@dataclass
class ReferenceRow:
    """A reference row of the evaluation (base, teacher, champion): its summary and judgments."""

    summary: dict[str, Any]
    judgments_file: Path | None = None


def load_evidence(folder: str | Path, model_dirs: Sequence[str | Path], train_dir: str | Path | None = None
                  ) -> tuple[list[Candidate], list[ReferenceRow]]:
    """The candidates (the i-th model with the i-th trained row, checked by `load_candidates`) and
    the reference rows of an evidence folder (evaluation/rows.write_evidence)."""
    rows = read_evidence(folder)
    trained = [r for r in rows if r.trained]
    candidates = load_candidates(model_dirs, [r.summary for r in trained], [r.judgments for r in trained],
                                 train_dir=train_dir)
    references = [ReferenceRow(read_summary(r.summary), r.judgments) for r in rows if not r.trained]
    return candidates, references


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


def _row_tags(summary: Mapping[str, Any], pipeline_run: str, parent_run_id: str) -> dict[str, str]:
    return {"pipeline_run": pipeline_run, "row": str(summary["row"]), "row_kind": str(summary["row_kind"]),
            "base_model": str(summary.get("base_model", "")), "arm": str(summary.get("arm", "")),
            "judge": str(summary.get("judge", "")), "mlflow.parentRunId": parent_run_id}


def _row_metrics(summary: Mapping[str, Any], evaluation_metrics: Mapping[str, float] | None) -> dict[str, float]:
    """The compare step's metrics of a row (with CIs), or the judge summary's means without them."""
    metrics = dict(evaluation_metrics) if evaluation_metrics else {k: float(v) for k, v in summary["metrics"].items()}
    metrics.update({f"judge_run/{k}": float(summary[k]) for k in ("n_judged", "n_failed") if _is_number(summary.get(k))})
    metrics.update({f"judge_usage/{k}": float(v) for k, v in summary.get("usage", {}).items() if _is_number(v)})
    return metrics


def _log_row_files(judgments_file: Path | None, summary: Mapping[str, Any]) -> None:
    mlflow.log_dict(dict(summary), "judge_summary.json")
    if judgments_file is not None and Path(judgments_file).is_file():
        with tempfile.TemporaryDirectory(prefix="selfguided-judgments-") as staging:
            named = Path(staging) / "judgments.jsonl"  # per (question, turn), whatever the step named the file
            shutil.copyfile(judgments_file, named)
            mlflow.log_artifact(str(named))
    log_row_traces(judgments_file, summary)  # every judged answer as a trace of this run, for people to check


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
        "judge_model": str(summary.get("judge_model", "")),
        "prompt_version": str(summary.get("prompt_version", "")),
    }
    judge_metrics = _row_metrics(summary, evaluation_metrics)
    metrics = {**{f"train/{k}": float(v) for k, v in train_metrics.items() if _is_number(v)}, **judge_metrics}
    version_tags = {**identity, "pipeline_run": pipeline_run, "train_data_sha256": manifest.train_data_sha256,
                    "replicate": str(summary.get("replicate", 0))}  # which training seed of its (base, arm)
    run_tags = {**_row_tags(summary, pipeline_run, parent_run_id), "scored_data_sha256": scored_data_sha256,
                "train_data_sha256": manifest.train_data_sha256}
    with mlflow.start_run(experiment_id=experiment_id, run_name=candidate.label, tags=run_tags) as run:
        mlflow.log_params(params)
        _log_row_files(candidate.judgments_file, summary)
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
            tags={**version_tags, **origin, "judge_overall": f"{judge_metrics['judge/overall']:.4f}"},
        )
    return RegisteredVersion(
        label=candidate.label,
        base_model=manifest.base_model,
        arm=manifest.arm,
        version=str(model_version.version),
        run_id=run.info.run_id,
        model_uri=f"models:/{registered_model_name}/{model_version.version}",
        metrics={k: v for k, v in judge_metrics.items() if k.startswith("judge/")},
    )


def log_reference(reference: ReferenceRow, *, experiment_id: str, pipeline_run: str, parent_run_id: str,
                   evaluation_metrics: Mapping[str, float] | None) -> str:
    """One MLflow run for a reference row (base, teacher, champion); returns its run id."""
    summary = reference.summary
    tags = {**_row_tags(summary, pipeline_run, parent_run_id), "model": str(summary.get("model", ""))}
    if summary.get("note"):
        tags["note"] = str(summary["note"])[:5000]
    with mlflow.start_run(experiment_id=experiment_id, run_name=str(summary["row"]), tags=tags) as run:
        mlflow.log_params({"judge_model": str(summary.get("judge_model", "")),
                           "prompt_version": str(summary.get("prompt_version", ""))})
        _log_row_files(reference.judgments_file, summary)
        if summary.get("n_judged"):
            mlflow.log_metrics(_row_metrics(summary, evaluation_metrics))
    return run.info.run_id

