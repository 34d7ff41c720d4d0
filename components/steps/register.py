"""Register step: log every row of the evaluation to MLflow, register the trained models, move the aliases.

For each candidate (a trained model directory and its judge summary, paired by the pipeline's
loop) one MLflow run records the fine-tuning parameters, the training metrics as `train/<name>`
and the per-category judge metrics `judge/<category>/<criterion>` plus `judge/overall`. The run
logs the model as an MLflow pyfunc model (`pyfunc_model.KoreanWritingModel`) whose artifact is
the trained model directory (`trained_model.py` owns its layout): the LoRA adapter (or the full
weights) and the tokenizer; the base model is referenced by hub id and revision, not copied
(only a bundled base that no hub serves, the `tiny` test model, travels along). The version
ships the code it needs, so it loads where selfguided is not installed. Each model becomes a
version of one registered model, tagged with base_model, arm, train_data_sha256 and
pipeline_run; the runs also carry scored_data_sha256, the hash of the scored seed data.

Every row of the evaluation (trained, base, teacher, champion) gets one MLflow run per pipeline
run, a child of the pipeline run's parent run (which holds the compare step's report and
comparison), tagged `pipeline_run`, `row`, `row_kind`, `base_model`, `arm`, `judge`, with its
metrics (`judge/<category>/<criterion>` with CIs, `delta/...` against unscored) and its
per-question `judgments.jsonl`; trained rows also carry their training curve (`train/loss` per
step) and their training set as a run input, and become model versions.

Promotion uses aliases, and the decision is the compare step's (gate v2, paired against the
champion re-evaluated in the same run): its challenger becomes `challenger`, and `champion` only
when the gate promoted it and the champion has not moved since it was evaluated. The new champion
version remembers the one it replaced in its `previous_champion` tag, so `rollback_champion`
undoes a promotion in one call. What the step did is its JSON output (`RegisterReport.to_dict`).
"""

# No `from __future__ import annotations`: KFP reads the component's annotations as real types.
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Any, Iterable, List, Mapping, NamedTuple, Sequence

import mlflow
import pandas as pd
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model, Output
# The decorator from its own module, not `kfp.dsl.component`: while a component runs
# (_KFP_RUNTIME=true) kfp.dsl leaves out its compile-time names, and the body of `register`
# imports this module.
from kfp.dsl.component_decorator import component
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from tqdm.auto import tqdm

from selfguided.components.model import prompting
from selfguided.components.model import pyfunc as pyfunc_model
from selfguided.components.model import artifact as trained_model
from selfguided.components.evaluation.compare import GateDecision
from selfguided.components.data import CATEGORIES, DataError
from selfguided.components.images import CPU_IMAGE
from selfguided.components.judging.rules import SCORE_NAMES
from selfguided.components.model.artifact import ModelManifest, read_manifest

REGISTERED_MODEL_NAME = "korean-writing-assistant"
EXPERIMENT_NAME = "selfguided"
CHALLENGER = "challenger"
CHAMPION = "champion"
# Tag on a champion version naming the version it replaced: what `rollback_champion` goes back to.
PREVIOUS_CHAMPION_TAG = "previous_champion"


class RegistryError(RuntimeError):
    """The registry is not in a state the asked operation can work from."""


# ---------------------------------------------------------------------------------------------
# Candidates: a trained model directory plus its judge summary
# ---------------------------------------------------------------------------------------------


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

    model_dir: the trained model directory, as the finetune step wrote it (trained_model.py).
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
    made for the model's base model and arm) and raises DataError naming both files otherwise.
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
        if summary["row_kind"] != "trained" or (summary["base_model"], summary["arm"]) != (manifest.base_model, manifest.arm):
            raise DataError(f"{path}: judge summary of {summary['row']!r} paired with the model in {model_dir} "
                            f"({manifest.display_name})")
        if train_dir is not None and (Path(train_dir) / f"{manifest.arm}.jsonl").is_file():
            candidate.train_file = Path(train_dir) / f"{manifest.arm}.jsonl"
        candidates.append(candidate)
    return candidates


@dataclass
class ReferenceRow:
    """A reference row of the evaluation (base, teacher, champion): its summary and judgments."""

    summary: dict[str, Any]
    judgments_file: Path | None = None


# ---------------------------------------------------------------------------------------------
# The logged model: the trained model directory behind pyfunc_model.KoreanWritingModel
# ---------------------------------------------------------------------------------------------

MODEL_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([
        ParamSpec("max_new_tokens", "long", 256),
        ParamSpec("batch_size", "long", 8),
        ParamSpec("temperature", "double", 0.0),
    ]),
)
# The modules a version needs at load time; they import only torch, transformers, peft, mlflow.
SHIPPED_MODULES = (trained_model, prompting, pyfunc_model)


def _stage_code(root: Path) -> Path:
    """A minimal `selfguided` package with the SHIPPED_MODULES at their own paths, for the version's code path."""
    package = root / "selfguided"
    for module in SHIPPED_MODULES:
        target = package.joinpath(*module.__name__.split(".")[1:]).with_suffix(".py")
        for folder in [target.parent, *target.parent.parents]:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").touch()
            if folder == package:
                break
        shutil.copy2(module.__file__, target)
    return package


def log_trained_model(model_dir: str | Path, metadata: Mapping[str, Any]):
    """Log a trained model directory as a pyfunc model of the active run; returns its ModelInfo."""
    with tempfile.TemporaryDirectory(prefix="selfguided-log-") as staging:
        staging = Path(staging)
        artifact = trained_model.copy_artifact(model_dir, staging / "model_dir")  # no checkpoints
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_model.KoreanWritingModel(),
            artifacts={pyfunc_model.MODEL_DIR_ARTIFACT: str(artifact)},
            code_paths=[str(_stage_code(staging / "code"))],
            signature=MODEL_SIGNATURE,
            pip_requirements=_pip_requirements(),
            metadata=dict(metadata),
        )


def _pip_requirements() -> list[str]:
    """Pinned serving requirements, given explicitly: inferring them would load the model."""
    pins = []
    for name in ("torch", "transformers", "peft", "tokenizers", "safetensors", "accelerate"):
        try:
            pins.append(f"{name}=={package_version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


# ---------------------------------------------------------------------------------------------
# Registration and promotion
# ---------------------------------------------------------------------------------------------


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


@dataclass
class RegisterReport:
    """What one register step did: versions, scores, and the promotion decision."""

    registered_model_name: str
    pipeline_run: str
    versions: list[RegisteredVersion]
    challenger: RegisteredVersion
    decision: GateDecision
    champion_before: str | None  # version that held `champion` before this step
    champion_after: str | None
    parent_run_id: str = ""
    report_markdown: str = ""  # the compare step's report, for `selfguided run` to print
    champion_storage_uri: str = ""  # merged weights of a newly promoted champion, for serving engines

    def decision_line(self) -> str:
        """The outcome in one line of text (the KFP step's return value)."""
        if self.decision.promote:
            return (f"promoted {self.registered_model_name} v{self.challenger.version} ({self.challenger.label}) "
                    f"to champion" + (f", replacing v{self.champion_before}" if self.champion_before else ""))
        kept = f"kept champion v{self.champion_before}" if self.champion_before else "no champion"
        return (f"{kept}; challenger v{self.challenger.version} ({self.challenger.label}) "
                f"not promoted: {self.decision.reasons[0]}")

    def to_dict(self) -> dict[str, Any]:
        """What the step did, as JSON-ready data: the step's output, read by `selfguided run`."""
        return {
            "decision": self.decision_line(),
            "promoted": self.decision.promote,
            "reasons": list(self.decision.reasons),
            "registered_model_name": self.registered_model_name,
            "pipeline_run": self.pipeline_run,
            "challenger": self.challenger.version,
            "champion_before": self.champion_before,
            "champion_after": self.champion_after,
            "parent_run_id": self.parent_run_id,
            "champion_storage_uri": self.champion_storage_uri,
            "versions": [asdict(v) for v in self.versions],
            "report_markdown": self.report_markdown,
        }

    def to_markdown(self) -> str:
        rows = [(f"{v.label} (v{v.version})", v.metrics) for v in self.versions]
        categories = _categories(*(metrics for _, metrics in rows))
        lines = [
            f"# Register: {self.registered_model_name}",
            "",
            f"Pipeline run `{self.pipeline_run}`; {len(self.versions)} version(s) registered; "
            f"challenger v{self.challenger.version} ({self.challenger.label}).",
            "",
            "## Judge score per category (overall, 1-10)",
            "",
            "| model | " + " | ".join(categories) + " | overall |",
            "|---" * (len(categories) + 2) + "|",
        ]
        for label, metrics in rows:
            cells = [_fmt(metrics.get(f"judge/{c}/overall")) for c in categories]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(metrics.get('judge/overall'))} |")
        lines += ["", "## By criterion", "", "| model | category | " + " | ".join(SCORE_NAMES) + " |",
                  "|---" * (len(SCORE_NAMES) + 2) + "|"]
        for version in self.versions:
            for category in categories:
                cells = [_fmt(version.metrics.get(f"judge/{category}/{f}")) for f in SCORE_NAMES]
                lines.append(f"| {version.label} | {category} | " + " | ".join(cells) + " |")
        verdict = "promoted to `champion`" if self.decision.promote else "not promoted"
        lines += ["", f"## Promotion: {verdict}", ""]
        lines += [f"- {reason}" for reason in self.decision.reasons]
        lines += ["", f"`champion` is now v{self.champion_after}." if self.champion_after else "No `champion` yet.", ""]
        return "\n".join(lines)


def _categories(*metric_sets: Mapping[str, float]) -> tuple[str, ...]:
    """Categories with a `judge/<category>/overall` metric, the six writing ones first."""
    found = {name.split("/")[1] for metrics in metric_sets for name in metrics
             if name.startswith("judge/") and name.endswith("/overall") and name.count("/") == 2}
    return tuple(c for c in CATEGORIES if c in found) + tuple(sorted(found - set(CATEGORIES)))


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: `artifacts/` next to a SQLite database file.

    Other stores (an MLflow server, a database server) decide for themselves: None.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0]).resolve()
    return (db_path.parent / "artifacts").as_uri()


def _experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))
    if experiment.lifecycle_stage != "active":
        raise RegistryError(f"MLflow experiment {name!r} at {tracking_uri} is deleted; restore it "
                            f"(MlflowClient().restore_experiment({experiment.experiment_id!r})) or use another name")
    return experiment.experiment_id


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(
            name, description="Korean writing assistants distilled from a GPT-4 class judge (selfguided)."
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


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


def _log_dataset(path: Path, name: str, context: str) -> None:
    """A JSONL file as an MLflow run input (name, digest, schema, source)."""
    frame = pd.read_json(path, lines=True)
    mlflow.log_input(mlflow.data.from_pandas(frame, source=str(path), name=name), context=context)


def _log_candidate(
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
    version_tags = {**identity, "pipeline_run": pipeline_run, "train_data_sha256": manifest.train_data_sha256}
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
            _log_dataset(candidate.train_file, f"{manifest.arm}.jsonl", context="training")
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


def _log_reference(reference: ReferenceRow, *, experiment_id: str, pipeline_run: str, parent_run_id: str,
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


def _log_merged(client: MlflowClient, model_dir: Path, run_id: str) -> str:
    """Log a champion's merged bf16 weights (adapter folded in, tokenizer with its chat template)
    on its run, for engines that cannot serve LoRA on GPT-NeoX (vLLM, KServe's Hugging Face
    runtime); returns their artifact URI."""
    import torch

    with tempfile.TemporaryDirectory(prefix="selfguided-merged-") as staging:
        merged = trained_model.export_merged(model_dir, Path(staging) / "merged", dtype=torch.bfloat16)
        client.log_artifacts(run_id, str(merged), artifact_path="merged")
    return storage_uri(f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/merged")


def storage_uri(artifact_uri: str) -> str:
    """Where an artifact lies for a reader outside MLflow (KServe's storage initializer): an MLflow
    server that proxies artifacts answers `mlflow-artifacts:/<path>`, which lies at
    `<its --artifacts-destination>/<path>`; MLFLOW_ARTIFACTS_DESTINATION (the server's own setting,
    given to the register step) translates it. Other URIs are returned as they are."""
    from urllib.parse import urlsplit

    destination = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "").rstrip("/")
    if artifact_uri.startswith("mlflow-artifacts:") and destination:
        return f"{destination}/{urlsplit(artifact_uri).path.lstrip('/')}"  # also mlflow-artifacts://host:port/...
    return artifact_uri


def _alias_version(client: MlflowClient, name: str, alias: str):
    """The ModelVersion behind `alias`, or None when the alias (or the model) does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def register_candidates(
    candidates: Iterable[Candidate],
    *,
    evaluation: Mapping[str, Any],
    tracking_uri: str,
    registered_model_name: str = REGISTERED_MODEL_NAME,
    experiment_name: str = EXPERIMENT_NAME,
    pipeline_run: str,
    scored_data_sha256: str,
    references: Iterable[ReferenceRow] = (),
    scored_data: str | Path | None = None,
    reports: Mapping[str, str | Path] | None = None,
) -> RegisterReport:
    """Log every row of the evaluation, register every candidate, and move the aliases as the
    compare step decided.

    evaluation: the compare step's result (compare_step.run_compare): the challenger's identity,
        the gate's decision, every row's metrics, and the champion version it evaluated.
    tracking_uri: `http(s)://` MLflow server, or `sqlite:////abs/path/mlflow.db` (artifacts of a
        new experiment then go to `artifacts/` beside the database file). Like
        `mlflow.set_tracking_uri`, this also points the process's fluent MLflow API at it.
    pipeline_run: id of the pipeline run that produced the candidates (tag on runs and versions).
    scored_data_sha256: hash of the scored seed data the models were trained from (run tag).
    scored_data: that file, logged as the parent run's input.
    reports: files logged on the parent run under the given names: `report.md` and `report.html`
        (the compare step's reports).
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("register_candidates needs at least one candidate")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = _experiment_id(client, experiment_name, tracking_uri)
    _ensure_registered_model(client, registered_model_name)
    # mlflow's fluent API (start_run, log_model) follows the process-wide tracking URI.
    mlflow.set_tracking_uri(tracking_uri)
    decision = GateDecision.from_dict(evaluation["decision"])
    row_metrics = evaluation.get("metrics", {})
    with mlflow.start_run(experiment_id=experiment_id, run_name=pipeline_run,
                         tags={"pipeline_run": pipeline_run, "row_kind": "pipeline"}) as parent:
        mlflow.log_dict(dict(evaluation), "comparison.json")
        mlflow.log_metric("promote", float(decision.promote))
        with tempfile.TemporaryDirectory(prefix="selfguided-reports-") as staging:
            for name, path in (reports or {}).items():  # under readable names: report.md, report.html
                shutil.copyfile(path, Path(staging) / name)
                mlflow.log_artifact(str(Path(staging) / name))
        if scored_data is not None:
            _log_dataset(Path(scored_data), "scored.jsonl", context="scored")
    versions = [
        _log_candidate(client, c, experiment_id=experiment_id, registered_model_name=registered_model_name,
                       pipeline_run=pipeline_run, parent_run_id=parent.info.run_id,
                       scored_data_sha256=scored_data_sha256, evaluation_metrics=row_metrics.get(c.summary["row"]))
        for c in tqdm(candidates, desc="register", unit="model")
    ]
    for reference in references:
        _log_reference(reference, experiment_id=experiment_id, pipeline_run=pipeline_run,
                       parent_run_id=parent.info.run_id, evaluation_metrics=row_metrics.get(reference.summary["row"]))

    wanted = evaluation["challenger"]
    challenger = next((v for v in versions if (v.base_model, v.arm) == (wanted["base_model"], wanted["arm"])), None)
    if challenger is None:
        raise DataError(f"the compare step's challenger {wanted['row']!r} is not among the registered candidates "
                        f"({', '.join(v.label for v in versions)})")
    client.set_registered_model_alias(registered_model_name, CHALLENGER, challenger.version)
    champion = _alias_version(client, registered_model_name, CHAMPION)
    evaluated = evaluation.get("champion_version")
    if decision.promote and champion is not None and str(champion.version) != str(evaluated or ""):
        # The evidence is about the champion this run evaluated; another run moved it since.
        decision = GateDecision(False, [f"the champion moved to v{champion.version} while this run compared the "
                                        f"challenger with {'v' + str(evaluated) if evaluated else 'no champion'}; "
                                        "rerun to compare with the current one"] + decision.reasons,
                                decision.figures)
    storage_uri = ""
    if decision.promote:  # the servable weights first: a failure here leaves nothing half-promoted
        winner = next(c for c in candidates if c.label == challenger.label)
        storage_uri = _log_merged(client, winner.model_dir, challenger.run_id)
        client.set_model_version_tag(registered_model_name, challenger.version, "merged_weights", storage_uri)
    client.set_model_version_tag(registered_model_name, challenger.version, "promotion",
                                 (("promoted: " if decision.promote else "rejected: ") + "; ".join(decision.reasons))[:5000])
    if decision.promote:
        client.set_registered_model_alias(registered_model_name, CHAMPION, challenger.version)
        if champion is not None:
            client.set_model_version_tag(registered_model_name, challenger.version, PREVIOUS_CHAMPION_TAG,
                                         str(champion.version))
    markdown = Path(reports["report.md"]).read_text(encoding="utf-8") if reports and "report.md" in reports else ""
    return RegisterReport(
        registered_model_name=registered_model_name,
        pipeline_run=pipeline_run,
        versions=versions,
        challenger=challenger,
        decision=decision,
        champion_before=str(champion.version) if champion is not None else None,
        champion_after=challenger.version if decision.promote else (str(champion.version) if champion else None),
        parent_run_id=parent.info.run_id,
        report_markdown=markdown,
        champion_storage_uri=storage_uri,
    )


def rollback_champion(
    tracking_uri: str, registered_model_name: str = REGISTERED_MODEL_NAME, version: str | int | None = None,
    *, by: str = "", reason: str = "",
) -> str:
    """Move `champion` back and return the version it now points at.

    version: the version to make champion; None means the one the current champion replaced
        (its `previous_champion` tag). Rolling back twice walks two promotions back.
    by, reason: who rolled back and why, recorded on the version that loses the alias.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    current = _alias_version(client, registered_model_name, CHAMPION)
    if version is None:
        if current is None:
            raise RegistryError(f"{registered_model_name!r} has no champion to roll back")
        version = current.tags.get(PREVIOUS_CHAMPION_TAG)
        if not version:
            raise RegistryError(f"{registered_model_name!r} champion v{current.version} replaced no earlier "
                                "champion (no previous_champion tag); pass version= explicitly")
    version = str(version)
    client.get_model_version(registered_model_name, version)  # fails clearly on an unknown version
    client.set_registered_model_alias(registered_model_name, CHAMPION, version)
    if current is not None and str(current.version) != version:
        note = f"champion moved to v{version}" + (f" by {by}" if by else "") + (f": {reason}" if reason else "")
        client.set_model_version_tag(registered_model_name, current.version, "rolled_back", note[:5000])
    return version


def ensure_merged_weights(client: MlflowClient, registered_model_name: str, version: str) -> str:
    """The artifact URI of a version's merged bf16 weights, logged on its run the first time it is
    asked for (a champion promoted by hand gets them as the pipeline's do)."""
    model_version = client.get_model_version(registered_model_name, str(version))
    if model_version.tags.get("merged_weights"):
        return model_version.tags["merged_weights"]
    with tempfile.TemporaryDirectory(prefix="selfguided-version-") as staging:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{registered_model_name}/{version}",
                                                         dst_path=staging))
        uri = _log_merged(client, local / "artifacts" / pyfunc_model.MODEL_DIR_ARTIFACT, model_version.run_id)
    client.set_model_version_tag(registered_model_name, str(version), "merged_weights", uri)
    return uri


def version_row(client: MlflowClient, registered_model_name: str, version: str, row_kind: str = "trained"):
    """A registered version as a compare row: its judgments.jsonl and identity, from its run."""
    from selfguided.components.evaluation.compare import RowJudgments
    from selfguided.components.data import read_jsonl

    model_version = client.get_model_version(registered_model_name, str(version))
    run = client.get_run(model_version.run_id)
    with tempfile.TemporaryDirectory(prefix="selfguided-judgments-") as staging:
        try:
            path = client.download_artifacts(run.info.run_id, "judgments.jsonl", staging)
        except MlflowException as exc:
            raise RegistryError(f"v{version} has no judgments.jsonl on its run {run.info.run_id}: it cannot be "
                                "compared on evidence (promote with --force to skip the gate)") from exc
        judgments = read_jsonl(path)
    tags = run.data.tags
    return RowJudgments(row=f"v{version} {tags.get('row', '')}".strip(), row_kind=row_kind, judgments=judgments,
                        base_model=tags.get("base_model", ""), arm=tags.get("arm", ""), judge=tags.get("judge", ""))


def promote_version(
    tracking_uri: str, version: str | int, registered_model_name: str = REGISTERED_MODEL_NAME, *,
    force: bool = False, by: str = "", reason: str = "", gate=None,
) -> GateDecision:
    """Make `version` the champion by hand: through gate v2 (its judgments paired with the current
    champion's, same judge required) unless `force`. Who and why are recorded in tags either way.
    Returns the decision; the alias moves only when it promotes."""
    from selfguided.components.evaluation.compare import PromotionGate, decide_promotion

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)  # models:/ downloads resolve through the process's registry
    mlflow.set_registry_uri(tracking_uri)
    version = str(version)
    client.get_model_version(registered_model_name, version)  # fails clearly on an unknown version
    current = _alias_version(client, registered_model_name, CHAMPION)
    if current is not None and str(current.version) == version:
        return GateDecision(False, [f"v{version} is already the champion"])
    if force:
        decision = GateDecision(True, ["forced: the gate was not consulted"])
    else:
        champion = version_row(client, registered_model_name, str(current.version), "champion") if current else None
        decision = decide_promotion(version_row(client, registered_model_name, version), champion,
                                    gate or PromotionGate())
    record = ("promoted" if decision.promote else "rejected") + (f" by {by}" if by else "") + \
        (f" ({reason})" if reason else "") + ": " + "; ".join(decision.reasons)
    client.set_model_version_tag(registered_model_name, version, "promotion", record[:5000])
    if decision.promote:
        ensure_merged_weights(client, registered_model_name, version)
        client.set_registered_model_alias(registered_model_name, CHAMPION, version)
        if current is not None:
            client.set_model_version_tag(registered_model_name, version, PREVIOUS_CHAMPION_TAG, str(current.version))
    return decision


def list_versions(tracking_uri: str, registered_model_name: str = REGISTERED_MODEL_NAME) -> list[dict[str, Any]]:
    """Every version, newest first: aliases, identity, overall score with its CI, the gate's record."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        aliases = client.get_registered_model(registered_model_name).aliases
    except MlflowException as exc:
        raise RegistryError(f"no registered model {registered_model_name!r} at {tracking_uri} "
                            "(`selfguided run` creates it)") from exc
    by_version: dict[str, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(str(number), []).append(alias)
    rows = []
    for v in sorted(client.search_model_versions(f"name = '{registered_model_name}'"), key=lambda v: -int(v.version)):
        metrics = client.get_run(v.run_id).data.metrics if v.run_id else {}
        rows.append({
            "version": str(v.version), "aliases": sorted(by_version.get(str(v.version), [])),
            "base_model": v.tags.get("base_model", ""), "arm": v.tags.get("arm", ""),
            "pipeline_run": v.tags.get("pipeline_run", ""), "overall": metrics.get("judge/overall"),
            "overall_ci": (metrics.get("judge/overall_ci_low"), metrics.get("judge/overall_ci_high")),
            "promotion": v.tags.get("promotion", ""), "rolled_back": v.tags.get("rolled_back", ""),
        })
    return rows


# ---------------------------------------------------------------------------------------------
# KFP component
# ---------------------------------------------------------------------------------------------

@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def register(
    models: Input[List[Model]],
    judge_summaries: Input[List[Artifact]],
    judgments: Input[List[Dataset]],
    reference_summaries: Input[List[Artifact]],
    reference_judgments: Input[List[Dataset]],
    evaluation: Input[Artifact],
    evaluation_report: Input[Markdown],
    evaluation_page: Input[HTML],
    scored_data: Input[Dataset],
    train_data: Input[Dataset],
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
        models: trained model directories (finetune outputs), one per (base model, arm).
        judge_summaries: their judge summaries, the i-th for the i-th model, as the loop collected them.
        judgments: their per-(question, turn) judgments, in the same order.
        reference_summaries: judge summaries of the reference rows (base, teacher, champion).
        reference_judgments: their judgments, in the same order.
        evaluation: the compare step's result (comparison, decision, challenger, metrics).
        evaluation_report: the compare step's Markdown report (logged on the parent run).
        evaluation_page: the compare step's HTML report (logged on the parent run).
        scored_data: the scored seed JSONL (its SHA-256 tags every run; logged as an input).
        train_data: the split's training sets (each trained run logs its own as an input).
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

    from selfguided.components.data import file_sha256
    from selfguided.components.steps.register import ReferenceRow, load_candidates, read_summary, register_candidates

    candidates = load_candidates([m.path for m in models], [s.path for s in judge_summaries],
                                 [j.path for j in judgments], train_dir=train_data.path)
    references = [ReferenceRow(read_summary(s.path), Path(j.path))
                  for s, j in zip(reference_summaries, reference_judgments)]
    result = register_candidates(
        candidates,
        evaluation=json.loads(Path(evaluation.path).read_text(encoding="utf-8")),
        references=references,
        tracking_uri=tracking_uri,
        registered_model_name=registered_model_name,
        experiment_name=experiment_name,
        pipeline_run=pipeline_run,
        scored_data_sha256=file_sha256(scored_data.path),
        scored_data=scored_data.path,
        reports={"report.md": evaluation_report.path, "report.html": evaluation_page.path},
    )
    Path(report.path).write_text(result.to_markdown(), encoding="utf-8")
    report.metadata.update({"challenger": result.challenger.version, "champion": result.champion_after or "",
                            "promoted": result.decision.promote})
    outputs = namedtuple("Outputs", ["result", "promoted", "champion_version", "champion_storage_uri"])
    return outputs(json.dumps(result.to_dict(), ensure_ascii=False), result.decision.promote,
                   result.champion_after or "", result.champion_storage_uri)
