"""Register step: log every trained model with its judge scores to MLflow, then promote the best.

For each candidate (a trained model directory and its judge summary, matched by base model and
arm) one MLflow run records the fine-tuning parameters, the training metrics as `train/<name>`
and the per-category judge metrics `judge/<category>/<criterion>` plus `judge/overall`. The run
logs the model as an MLflow pyfunc model whose artifacts are the LoRA adapter (or the full
weights) and the tokenizer; the base model is referenced by its hub id in the model metadata, not
copied (only a bundled base that no hub serves, the `tiny` test model, travels along). Each model
becomes a version of one registered model, tagged with base_model, arm, data_sha256 and
pipeline_run.

Promotion uses aliases. The run's best candidate by `judge/overall` becomes `challenger`; an
explicit gate (`evaluate_gate`: every category scored, overall better than the champion's, no
category worse beyond a tolerance) decides whether it also becomes `champion`. The new champion
version remembers the one it replaced in its `previous_champion` tag, so `rollback_champion`
undoes a promotion in one call.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations as real types.
import json
import math
from dataclasses import dataclass
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

from selfguided.components.data import CATEGORIES, DataError
from selfguided.components.prompting import CRITERIA, STRATEGIES, inference_prompt
from selfguided.components.images import CPU_IMAGE

DEFAULT_REGISTERED_MODEL = "korean-writing-assistant"
DEFAULT_EXPERIMENT = "selfguided"
CHALLENGER = "challenger"
CHAMPION = "champion"
# Tag on a champion version naming the version it replaced: what `rollback_champion` goes back to.
PREVIOUS_CHAMPION_TAG = "previous_champion"
MANIFEST = "selfguided.json"
BUNDLED_PREFIX = "bundled:"  # base_model_ref of a base shipped inside the model dir (base/)
METHODS = ("lora", "full")
SCORE_FIELDS = (*CRITERIA, "overall")  # the criteria of a `judge/<category>/<criterion>` metric


class RegistryError(RuntimeError):
    """The registry is not in a state the asked operation can work from."""


# ---------------------------------------------------------------------------------------------
# Candidates: a trained model directory plus its judge summary
# ---------------------------------------------------------------------------------------------


def _read_json_object(path: Path, required_strings: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object file whose `required_strings` fields are non-empty strings; errors name the file."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object")
    for key in required_strings:
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise DataError(f"{path}: field {key!r} is missing or not a non-empty string")
    return obj


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """Read and check `selfguided.json` of a trained model directory (the finetune step's output)."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"{model_dir}: not a trained model directory, {MANIFEST} is missing")
    manifest = _read_json_object(path, ("base_model", "base_model_ref", "arm", "method"))
    if manifest["method"] not in METHODS:
        raise DataError(f"{path}: field 'method' is {manifest['method']!r}, expected one of {', '.join(METHODS)}")
    for key in ("config", "train_metrics"):
        if not isinstance(manifest.get(key, {}), dict):
            raise DataError(f"{path}: field {key!r} must be a JSON object")
    needed = ["adapter" if manifest["method"] == "lora" else "model", "tokenizer"]
    if manifest["method"] == "lora" and manifest["base_model_ref"].startswith(BUNDLED_PREFIX):
        needed.append(manifest["base_model_ref"][len(BUNDLED_PREFIX):])
    for sub in needed:
        if not (model_dir / sub).is_dir():
            raise DataError(f"{model_dir}: folder {sub}/ is missing (method {manifest['method']!r}, "
                            f"base_model_ref {manifest['base_model_ref']!r})")
    return manifest


def read_summary(path: str | Path) -> dict[str, Any]:
    """Read and check a judge summary JSON file (the judge step's output)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: judge summary file not found")
    summary = _read_json_object(path, ("base_model", "arm"))
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

    model_dir: the trained model directory (selfguided.json, adapter/ or model/, tokenizer/,
        base/ for a bundled base), as written by the finetune step.
    summary: the judge summary of this model (see `read_summary`).
    """

    model_dir: Path
    summary: dict[str, Any]

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.model_dir)

    @property
    def key(self) -> tuple[str, str]:
        return self.manifest["base_model"], self.manifest["arm"]

    @property
    def model_id(self) -> str:
        return f"{self.manifest['base_model']}:{self.manifest['arm']}"


def load_candidates(model_dirs: Sequence[str | Path], summary_files: Sequence[str | Path]) -> list[Candidate]:
    """Pair each model directory with its judge summary by (base_model, arm), in model order.

    Raises DataError when a pair is incomplete (a model without a summary or the other way
    round) or ambiguous (two models, or two summaries, for the same base model and arm).
    """
    if not model_dirs:
        raise DataError("no model directories given")
    models: dict[tuple[str, str], Path] = {}
    for model_dir in model_dirs:
        manifest = read_manifest(model_dir)
        key = (manifest["base_model"], manifest["arm"])
        if key in models:
            raise DataError(f"two model directories for base_model={key[0]!r} arm={key[1]!r}: "
                            f"{models[key]} and {model_dir}")
        models[key] = Path(model_dir)
    summaries: dict[tuple[str, str], tuple[Path, dict[str, Any]]] = {}
    for path in summary_files:
        summary = read_summary(path)
        key = (summary["base_model"], summary["arm"])
        if key in summaries:
            raise DataError(f"two judge summaries for base_model={key[0]!r} arm={key[1]!r}: "
                            f"{summaries[key][0]} and {path}")
        summaries[key] = (Path(path), summary)
    unjudged = [f"{m} ({k[0]}:{k[1]})" for k, m in models.items() if k not in summaries]
    if unjudged:
        raise DataError(f"no judge summary for model(s) {', '.join(unjudged)}; "
                        f"summaries cover {', '.join(f'{b}:{a}' for b, a in summaries) or 'nothing'}")
    orphans = [f"{p} ({k[0]}:{k[1]})" for k, (p, _) in summaries.items() if k not in models]
    if orphans:
        raise DataError(f"judge summary without a model directory: {', '.join(orphans)}")
    return [Candidate(model_dir, summaries[key][1]) for key, model_dir in models.items()]


# ---------------------------------------------------------------------------------------------
# The promotion gate: a pure function of two sets of judge metrics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionGate:
    """When a challenger may replace the champion. Scores are on the judge's 1-10 scale.

    required_categories: categories the challenger must have a finite `judge/<cat>/overall` for.
    tolerance: how much worse than the champion any single category may be (points).
    min_improvement: how much the challenger's `judge/overall` must exceed the champion's; 0.0
        means strictly better.
    """

    required_categories: tuple[str, ...] = CATEGORIES
    tolerance: float = 0.25
    min_improvement: float = 0.0

    def __post_init__(self) -> None:
        if not self.required_categories:
            raise ValueError("PromotionGate.required_categories must name at least one category")
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
    challenger = {c: _score(challenger_scores, f"judge/{c}/overall") for c in gate.required_categories}
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
# The logged model: base (referenced) + adapter, served through mlflow.pyfunc
# ---------------------------------------------------------------------------------------------


class KoreanWritingModel(mlflow.pyfunc.PythonModel):
    """A registered version as a pyfunc model: questions in, answers out.

    Loading fetches the base model by its hub id (`base_model_ref` in the model's metadata), or
    from the bundled `base` artifact, and merges the LoRA adapter into it; a fully fine-tuned
    model loads from the `model` artifact. The prompt follows the arm the model was trained
    for (`prompting.inference_prompt`).

    predict params: `strategy` ("condition" or "filter"; default: the one recorded at training),
    `max_new_tokens`, `batch_size`. Decoding is greedy.
    """

    signature = ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([
            ParamSpec("strategy", "string", ""),  # "": the strategy recorded at training
            ParamSpec("max_new_tokens", "long", 256),
            ParamSpec("batch_size", "long", 8),
        ]),
    )

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.manifest = json.loads(Path(context.artifacts["manifest"]).read_text(encoding="utf-8"))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        if self.manifest["method"] == "full":
            model = AutoModelForCausalLM.from_pretrained(context.artifacts["model"], dtype=dtype)
        else:
            from peft import PeftModel

            ref = self.manifest["base_model_ref"]
            base_path = context.artifacts["base"] if ref.startswith(BUNDLED_PREFIX) else ref
            base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
            model = PeftModel.from_pretrained(base, context.artifacts["adapter"]).merge_and_unload()
        self.model = model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"], padding_side="left")
        if self.tokenizer.pad_token is None:  # batches need one; EOS never reaches the answer text
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        # The signature's single string column makes pyfunc hand over a DataFrame, whether the
        # caller passed a list of questions or a frame.
        import torch

        params = params or {}
        strategy = params.get("strategy") or self.manifest.get("strategy", "condition")
        if strategy not in STRATEGIES:
            raise ValueError(f"params.strategy is {strategy!r}, expected one of {', '.join(STRATEGIES)}")
        questions = [str(q) for q in model_input.iloc[:, 0]]
        prompts = [inference_prompt(q, self.manifest["arm"], strategy) for q in questions]
        batch_size = int(params.get("batch_size", 8))
        answers: list[str] = []
        for start in range(0, len(prompts), batch_size):
            batch = self.tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
            batch = batch.to(self.device)
            with torch.inference_mode():
                out = self.model.generate(
                    **batch,
                    max_new_tokens=int(params.get("max_new_tokens", 256)),
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            answers.extend(t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return answers


def _model_artifacts(candidate: Candidate) -> dict[str, str]:
    """The files the logged model carries: weights delta, tokenizer, manifest (+ a bundled base)."""
    manifest, model_dir = candidate.manifest, candidate.model_dir
    artifacts = {"manifest": str(model_dir / MANIFEST), "tokenizer": str(model_dir / "tokenizer")}
    if manifest["method"] == "full":
        artifacts["model"] = str(model_dir / "model")
    else:
        artifacts["adapter"] = str(model_dir / "adapter")
        if manifest["base_model_ref"].startswith(BUNDLED_PREFIX):
            artifacts["base"] = str(model_dir / manifest["base_model_ref"][len(BUNDLED_PREFIX):])
    return artifacts


def _pip_requirements() -> list[str]:
    """Pinned serving requirements, given explicitly: inferring them would load the model."""
    pins = []
    for name in ("torch", "transformers", "peft", "tokenizers", "safetensors"):
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

    model_id: str  # "<base_model>:<arm>"
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
            return (f"promoted {self.registered_model_name} v{self.challenger.version} ({self.challenger.model_id}) "
                    f"to champion" + (f", replacing v{self.champion_before}" if self.champion_before else ""))
        kept = f"kept champion v{self.champion_before}" if self.champion_before else "no champion"
        return (f"{kept}; challenger v{self.challenger.version} ({self.challenger.model_id}) "
                f"not promoted: {self.decision.reasons[0]}")

    def to_markdown(self) -> str:
        rows = [(f"{v.model_id} (v{v.version})", v.metrics) for v in self.versions]
        if self.champion_before_metrics is not None:
            rows.append((f"champion before (v{self.champion_before})", self.champion_before_metrics))
        lines = [
            f"# Register: {self.registered_model_name}",
            "",
            f"Pipeline run `{self.pipeline_run}`; {len(self.versions)} version(s) registered; "
            f"challenger v{self.challenger.version} ({self.challenger.model_id}).",
            "",
            "## Judge score per category (overall, 1-10)",
            "",
            "| model | " + " | ".join(CATEGORIES) + " | overall |",
            "|---" * (len(CATEGORIES) + 2) + "|",
        ]
        for label, metrics in rows:
            cells = [_fmt(metrics.get(f"judge/{c}/overall")) for c in CATEGORIES]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(metrics.get('judge/overall'))} |")
        lines += ["", "## By criterion", "", "| model | category | " + " | ".join(SCORE_FIELDS) + " |",
                  "|---" * (len(SCORE_FIELDS) + 2) + "|"]
        for version in self.versions:
            for category in CATEGORIES:
                cells = [_fmt(version.metrics.get(f"judge/{category}/{f}")) for f in SCORE_FIELDS]
                lines.append(f"| {version.model_id} | {category} | " + " | ".join(cells) + " |")
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
    data_sha256: str,
) -> RegisteredVersion:
    """One MLflow run for one candidate: params, metrics, the logged model and its version."""
    manifest, summary = candidate.manifest, candidate.summary
    identity = {"base_model": manifest["base_model"], "arm": manifest["arm"]}
    train_metrics = manifest.get("train_metrics", {})
    params = {
        **identity,
        "base_model_ref": manifest["base_model_ref"],
        "method": manifest["method"],
        **_flatten("finetune", manifest.get("config", {})),
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
    tags = {**identity, "pipeline_run": pipeline_run, "data_sha256": data_sha256}
    with mlflow.start_run(experiment_id=experiment_id, run_name=candidate.model_id, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_dict(summary, "judge_summary.json")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=KoreanWritingModel(),
            artifacts=_model_artifacts(candidate),
            signature=KoreanWritingModel.signature,
            pip_requirements=_pip_requirements(),
            metadata={
                **identity,
                "base_model_ref": manifest["base_model_ref"],
                "method": manifest["method"],
                "base_weights": "bundled" if manifest["base_model_ref"].startswith(BUNDLED_PREFIX) else "referenced",
            },
        )
        # Logged with the model id, the metrics show on the run and on the LoggedModel.
        mlflow.log_metrics(metrics, model_id=info.model_id)
        model_version = client.create_model_version(
            registered_model_name,
            source=info.model_uri,
            run_id=run.info.run_id,
            model_id=info.model_id,
            tags={**tags, "judge_overall": f"{judge_metrics['judge/overall']:.4f}",
                  "method": manifest["method"], "base_model_ref": manifest["base_model_ref"]},
        )
    return RegisteredVersion(
        model_id=candidate.model_id,
        base_model=manifest["base_model"],
        arm=manifest["arm"],
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
    registered_model_name: str = DEFAULT_REGISTERED_MODEL,
    experiment_name: str = DEFAULT_EXPERIMENT,
    pipeline_run: str,
    data_sha256: str,
    gate: PromotionGate = PromotionGate(),
) -> RegisterReport:
    """Log and register every candidate, alias the best `challenger`, promote it if the gate passes.

    tracking_uri: `http(s)://` MLflow server, or `sqlite:////abs/path/mlflow.db` (artifacts of a
        new experiment then go to `artifacts/` beside the database file). Like
        `mlflow.set_tracking_uri`, this also points the process's fluent MLflow API at it.
    pipeline_run: id of the pipeline run that produced the candidates (tag on runs and versions).
    data_sha256: hash of the scored seed data the models were trained from (tag).
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
                       pipeline_run=pipeline_run, data_sha256=data_sha256)
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
    tracking_uri: str, registered_model_name: str = DEFAULT_REGISTERED_MODEL, version: str | int | None = None
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
        judge_summaries: judge summary JSON files (judge outputs), matched to models by
            base_model and arm.
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
        The promotion decision as one line of text.
    """
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
        data_sha256=file_sha256(scored_data.path),
        gate=PromotionGate(tolerance=promotion_tolerance),
    )
    Path(report.path).write_text(result.to_markdown(), encoding="utf-8")
    report.metadata.update({"challenger": result.challenger.version, "champion": result.champion_after or "",
                            "promoted": result.decision.promote})
    return result.decision_line()
