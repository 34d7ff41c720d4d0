"""Register step: log every trained model with its judge scores to MLflow, then promote the best.

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

Promotion uses aliases. The run's best candidate by `judge/overall` becomes `challenger`; an
explicit gate (`evaluate_gate`: every category scored, overall better than the champion's, no
category worse beyond a tolerance) decides whether it also becomes `champion`. The new champion
version remembers the one it replaced in its `previous_champion` tag, so `rollback_champion`
undoes a promotion in one call. What the step did is its JSON output (`RegisterReport.to_dict`).
"""

# No `from __future__ import annotations`: KFP reads the component's annotations as real types.
import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Sequence

import mlflow
import pandas as pd
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output
# The decorator from its own module, not `kfp.dsl.component`: while a component runs
# (_KFP_RUNTIME=true) kfp.dsl leaves out its compile-time names, and the body of `register`
# imports this module.
from kfp.dsl.component_decorator import component
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from tqdm.auto import tqdm

from selfguided.components import prompting, pyfunc_model, trained_model
from selfguided.components.data import CATEGORIES, DataError
from selfguided.components.images import CPU_IMAGE
from selfguided.components.judging import SCORE_NAMES
from selfguided.components.trained_model import ModelManifest, read_manifest

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

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)

    @cached_property
    def manifest(self) -> ModelManifest:
        return read_manifest(self.model_dir)

    @property
    def label(self) -> str:
        return self.manifest.display_name


def load_candidates(model_dirs: Sequence[str | Path], summary_files: Sequence[str | Path]) -> list[Candidate]:
    """Candidates from the pipeline loop's collected outputs: the i-th model with the i-th summary.

    The loop already paired them; this checks that each pair is what it claims (the summary was
    made for the model's base model and arm) and raises DataError naming both files otherwise.
    """
    if not model_dirs:
        raise DataError("no model directories given")
    if len(model_dirs) != len(summary_files):
        raise DataError(f"{len(model_dirs)} model directories but {len(summary_files)} judge summaries")
    candidates = []
    for model_dir, path in zip(model_dirs, summary_files):
        candidate = Candidate(model_dir, read_summary(path))
        manifest, summary = candidate.manifest, candidate.summary
        if summary["row_kind"] != "trained" or (summary["base_model"], summary["arm"]) != (manifest.base_model, manifest.arm):
            raise DataError(f"{path}: judge summary of {summary['row']!r} paired with the model in {model_dir} "
                            f"({manifest.display_name})")
        candidates.append(candidate)
    return candidates


# ---------------------------------------------------------------------------------------------
# The promotion gate: a pure function of two sets of judge metrics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionGate:
    """When a challenger may replace the champion. Scores are on the judge's 1-10 scale.

    required_categories: categories the challenger must have a finite `judge/<cat>/overall` for;
        empty (the default): the categories the evaluation questions carry, as found in the
        challenger's and the champion's metrics.
    tolerance: how much worse than the champion any single category may be (points).
    min_improvement: how much the challenger's `judge/overall` must exceed the champion's; 0.0
        means strictly better.
    """

    required_categories: tuple[str, ...] = ()
    tolerance: float = 0.25
    min_improvement: float = 0.0

    def __post_init__(self) -> None:
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ValueError(f"PromotionGate.tolerance must be a finite number >= 0, got {self.tolerance}")
        if not (self.min_improvement >= 0 and math.isfinite(self.min_improvement)):
            raise ValueError(f"PromotionGate.min_improvement must be a finite number >= 0, got {self.min_improvement}")


@dataclass
class GateDecision:
    """The gate's verdict and one sentence per check explaining it."""

    promote: bool
    reasons: list[str]


def _score(metrics: Mapping[str, float], name: str) -> float | None:
    value = metrics.get(name)
    return float(value) if value is not None and math.isfinite(value) else None


def _categories(*metric_sets: Mapping[str, float]) -> tuple[str, ...]:
    """Categories with a `judge/<category>/overall` metric, the six writing ones first."""
    found = {name.split("/")[1] for metrics in metric_sets for name in metrics
             if name.startswith("judge/") and name.endswith("/overall") and name.count("/") == 2}
    return tuple(c for c in CATEGORIES if c in found) + tuple(sorted(found - set(CATEGORIES)))


def evaluate_gate(
    challenger_scores: Mapping[str, float],
    champion_scores: Mapping[str, float] | None,
    gate: PromotionGate = PromotionGate(),
    *,
    challenger_judge: str | None = None,
    champion_judge: str | None = None,
) -> GateDecision:
    """Decide whether the challenger replaces the champion.

    Both score mappings are judge metrics as logged to MLflow: `judge/overall` and
    `judge/<category>/overall` (other keys are ignored). `champion_scores` is None when the
    registered model has no champion yet; the challenger is then promoted if it scored every
    required category. A NaN or missing score counts as not scored. `challenger_judge` and
    `champion_judge` ("<judge model>/<prompt version>") guard against comparing scores of
    different judges: when both are known and differ, nothing is promoted automatically.
    """
    blocking: list[str] = []
    notes: list[str] = []
    required = gate.required_categories or _categories(challenger_scores, champion_scores or {})
    if not required:
        blocking.append("the challenger has no per-category scores (no judge/<category>/overall)")
    challenger = {c: _score(challenger_scores, f"judge/{c}/overall") for c in required}
    for category, score in challenger.items():
        if score is None:
            blocking.append(f"category {category} is not scored (no judge/{category}/overall)")
    overall = _score(challenger_scores, "judge/overall")
    if overall is None:
        blocking.append("the challenger has no judge/overall score")

    if champion_scores is None:
        notes.append("no champion yet: nothing to compare against")
    elif challenger_judge and champion_judge and challenger_judge != champion_judge:
        blocking.append(f"judged by {challenger_judge}, the champion by {champion_judge}: the scores are not "
                        "comparable; re-judge the champion with the same judge, or promote by hand")
    else:
        champion_overall = _score(champion_scores, "judge/overall")
        if champion_overall is None:
            blocking.append("the champion has no judge/overall score to compare against; promote by hand")
        elif overall is not None:
            gain = overall - champion_overall
            verdict = f"overall {overall:.3f} vs champion {champion_overall:.3f} ({gain:+.3f}"
            if gain > gate.min_improvement:
                notes.append(f"{verdict}, more than the required {gate.min_improvement:+.3f})")
            else:
                blocking.append(f"{verdict}): not better than the champion by more than {gate.min_improvement:.3f}")
        worse = []
        for category, score in challenger.items():
            champion_score = _score(champion_scores, f"judge/{category}/overall")
            if champion_score is None:
                notes.append(f"category {category}: the champion has no score, not compared")
            elif score is not None and champion_score - score > gate.tolerance:
                worse.append(category)
                blocking.append(f"category {category} is worse by {champion_score - score:.3f} "
                                f"({score:.3f} vs champion {champion_score:.3f}) > tolerance {gate.tolerance:.3f}")
        if not worse and champion_overall is not None:
            notes.append(f"no category worse than the champion's by more than {gate.tolerance:.3f}")
    return GateDecision(promote=not blocking, reasons=blocking + notes)


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
    """A minimal `selfguided` package with the SHIPPED_MODULES, for the version's code path."""
    package = root / "selfguided"
    (package / "components").mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "components" / "__init__.py").write_text("", encoding="utf-8")
    for module in SHIPPED_MODULES:
        shutil.copy2(module.__file__, package / "components" / Path(module.__file__).name)
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
    champion_before_metrics: dict[str, float] | None
    champion_after: str | None

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
            "versions": [asdict(v) for v in self.versions],
        }

    def to_markdown(self) -> str:
        rows = [(f"{v.label} (v{v.version})", v.metrics) for v in self.versions]
        categories = _categories(*(metrics for _, metrics in rows))
        if self.champion_before_metrics is not None:
            rows.append((f"champion before (v{self.champion_before})", self.champion_before_metrics))
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


def _log_candidate(
    client: MlflowClient,
    candidate: Candidate,
    *,
    experiment_id: str,
    registered_model_name: str,
    pipeline_run: str,
    scored_data_sha256: str,
) -> RegisteredVersion:
    """One MLflow run for one candidate: params, metrics, the logged model and its version."""
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
    judge_metrics = {k: float(v) for k, v in summary["metrics"].items()}
    metrics = {
        **{f"train/{k}": float(v) for k, v in train_metrics.items() if _is_number(v)},
        **judge_metrics,
        **{f"judge_run/{k}": float(summary[k]) for k in ("n_judged", "n_failed") if _is_number(summary.get(k))},
        **{f"judge_usage/{k}": float(v) for k, v in summary.get("usage", {}).items()},
    }
    version_tags = {**identity, "pipeline_run": pipeline_run, "train_data_sha256": manifest.train_data_sha256}
    run_tags = {**version_tags, "scored_data_sha256": scored_data_sha256, "row": candidate.label,
                "row_kind": "trained", "judge": str(summary.get("judge", ""))}
    with mlflow.start_run(experiment_id=experiment_id, run_name=candidate.label, tags=run_tags) as run:
        mlflow.log_params(params)
        mlflow.log_dict(summary, "judge_summary.json")
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
        metrics=judge_metrics,
    )


def _alias_version(client: MlflowClient, name: str, alias: str):
    """The ModelVersion behind `alias`, or None when the alias (or the model) does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _judge_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    return {k: v for k, v in client.get_run(run_id).data.metrics.items() if k.startswith("judge/")}


def _judge_of_run(client: MlflowClient, run_id: str) -> str | None:
    """"<judge model>/<prompt version>" a run was judged with, from its params."""
    params = client.get_run(run_id).data.params
    return f"{params['judge_model']}/{params.get('prompt_version', '')}" if params.get("judge_model") else None


def register_candidates(
    candidates: Iterable[Candidate],
    *,
    tracking_uri: str,
    registered_model_name: str = REGISTERED_MODEL_NAME,
    experiment_name: str = EXPERIMENT_NAME,
    pipeline_run: str,
    scored_data_sha256: str,
    gate: PromotionGate = PromotionGate(),
) -> RegisterReport:
    """Log and register every candidate, alias the best `challenger`, promote it if the gate passes.

    tracking_uri: `http(s)://` MLflow server, or `sqlite:////abs/path/mlflow.db` (artifacts of a
        new experiment then go to `artifacts/` beside the database file). Like
        `mlflow.set_tracking_uri`, this also points the process's fluent MLflow API at it.
    pipeline_run: id of the pipeline run that produced the candidates (tag on runs and versions).
    scored_data_sha256: hash of the scored seed data the models were trained from (run tag).
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("register_candidates needs at least one candidate")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = _experiment_id(client, experiment_name, tracking_uri)
    _ensure_registered_model(client, registered_model_name)
    # mlflow's fluent API (start_run, log_model) follows the process-wide tracking URI.
    mlflow.set_tracking_uri(tracking_uri)
    versions = [
        _log_candidate(client, c, experiment_id=experiment_id, registered_model_name=registered_model_name,
                       pipeline_run=pipeline_run, scored_data_sha256=scored_data_sha256)
        for c in tqdm(candidates, desc="register", unit="model")
    ]

    def overall(v: RegisteredVersion) -> float:
        score = _score(v.metrics, "judge/overall")
        return -math.inf if score is None else score

    challenger = max(versions, key=overall)  # first of equals wins: model order is stable
    client.set_registered_model_alias(registered_model_name, CHALLENGER, challenger.version)
    champion = _alias_version(client, registered_model_name, CHAMPION)
    champion_metrics = _judge_metrics(client, champion.run_id) if champion is not None else None
    decision = evaluate_gate(
        challenger.metrics, champion_metrics, gate,
        challenger_judge=_judge_of_run(client, challenger.run_id),
        champion_judge=_judge_of_run(client, champion.run_id) if champion is not None else None,
    )
    client.set_model_version_tag(registered_model_name, challenger.version, "promotion",
                                 ("promoted: " if decision.promote else "rejected: ") + "; ".join(decision.reasons))
    if decision.promote:
        client.set_registered_model_alias(registered_model_name, CHAMPION, challenger.version)
        if champion is not None:
            client.set_model_version_tag(registered_model_name, challenger.version, PREVIOUS_CHAMPION_TAG,
                                         str(champion.version))
    return RegisterReport(
        registered_model_name=registered_model_name,
        pipeline_run=pipeline_run,
        versions=versions,
        challenger=challenger,
        decision=decision,
        champion_before=str(champion.version) if champion is not None else None,
        champion_before_metrics=champion_metrics,
        champion_after=challenger.version if decision.promote else (str(champion.version) if champion else None),
    )


def rollback_champion(
    tracking_uri: str, registered_model_name: str = REGISTERED_MODEL_NAME, version: str | int | None = None
) -> str:
    """Move `champion` back and return the version it now points at.

    version: the version to make champion; None means the one the current champion replaced
        (its `previous_champion` tag). Rolling back twice walks two promotions back.
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
        client.set_model_version_tag(registered_model_name, current.version, "rolled_back",
                                     f"champion moved to v{version}")
    return version


# ---------------------------------------------------------------------------------------------
# KFP component
# ---------------------------------------------------------------------------------------------

@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def register(
    models: Input[List[Model]],
    judge_summaries: Input[List[Artifact]],
    scored_data: Input[Dataset],
    registered_model_name: str,
    tracking_uri: str,
    experiment_name: str,
    pipeline_run: str,
    promotion_tolerance: float,
    report: Output[Markdown],
) -> str:
    """Register every trained model in MLflow and promote the best one if it beats the champion.

    Args:
        models: trained model directories (finetune outputs), one per (base model, arm).
        judge_summaries: judge summary JSON files (judge outputs), the i-th for the i-th model,
            as the pipeline's loop collected them.
        scored_data: the scored seed JSONL file the models were trained from; its SHA-256 tags
            every version.
        registered_model_name: MLflow registered model to add versions to.
        tracking_uri: MLflow tracking URI (`http://...` server, or `sqlite:////abs/mlflow.db`).
        experiment_name: MLflow experiment holding one run per model.
        pipeline_run: id of this pipeline run, tagged on runs and versions.
        promotion_tolerance: how many points (1-10 scale) any category may fall below the
            champion's and still be promoted.
        report: Markdown report: versions, per-category scores, the gate's decision and reasons.

    Returns:
        What the step did as JSON (RegisterReport.to_dict): the decision line first, then whether
        it promoted, the gate's reasons, and every version it registered with its scores.
    """
    import json
    from pathlib import Path

    from selfguided.components.data import file_sha256
    from selfguided.components.register import PromotionGate, load_candidates, register_candidates

    candidates = load_candidates([m.path for m in models], [s.path for s in judge_summaries])
    result = register_candidates(
        candidates,
        tracking_uri=tracking_uri,
        registered_model_name=registered_model_name,
        experiment_name=experiment_name,
        pipeline_run=pipeline_run,
        scored_data_sha256=file_sha256(scored_data.path),
        gate=PromotionGate(tolerance=promotion_tolerance),
    )
    Path(report.path).write_text(result.to_markdown(), encoding="utf-8")
    report.metadata.update({"challenger": result.challenger.version, "champion": result.champion_after or "",
                            "promoted": result.decision.promote})
    return json.dumps(result.to_dict(), ensure_ascii=False)
