"""A trained model as the files of an MLflow model version, and back.

Logging: the trained model directory (`model/artifact.py` owns its layout) behind the pyfunc class
`model/pyfunc.py`; the version ships the code it needs (`SHIPPED_MODULES`) so it loads with
`mlflow.pyfunc.load_model` where selfguided is not installed, and names its serving requirements
explicitly. The base model is referenced by hub id and revision, not copied.

Reading back: `download_model_dir` is the one way a registered version (or a run's model) becomes
a local trained model directory: the reference rows (the champion re-evaluated), merged-weight
export and `selfguided serve` use it.

Merged weights: a champion also gets its bf16 weights with the adapter folded in (`log_merged`),
for engines that cannot serve LoRA on GPT-NeoX (vLLM, KServe's Hugging Face runtime), and
`storage_uri` says where they lie for a reader outside MLflow.
"""

import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from selfguided.components.model import artifact as trained_model
from selfguided.components.model import prompting
from selfguided.components.model import pyfunc as pyfunc_model


def model_dir_in(folder: Path) -> Path:
    """The trained model directory in `folder`: the folder itself, or a pyfunc model's artifact."""
    if (folder / trained_model.MANIFEST_FILE).is_file():
        return folder
    candidate = folder / "artifacts" / pyfunc_model.MODEL_DIR_ARTIFACT
    if (folder / "MLmodel").is_file():
        try:
            from mlflow.models import Model

            artifacts = Model.load(str(folder)).flavors.get("python_function", {}).get("artifacts", {})
            candidate = folder / artifacts[pyfunc_model.MODEL_DIR_ARTIFACT]["path"]
        except (KeyError, TypeError, OSError, ValueError):
            pass
    return candidate if (candidate / trained_model.MANIFEST_FILE).is_file() else folder


def download_model_dir(model_uri: str, tracking_uri: str | None, dest: str | Path) -> Path:
    """Download `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `runs:/RUN/PATH` into `dest` and
    return the trained model directory in it. Points the process's MLflow at `tracking_uri`: MLflow 3
    resolves models:/ and runs:/ URIs (a logged model) through the process's tracking and registry
    URIs, whatever download_artifacts is given."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest),
                                                     tracking_uri=tracking_uri))
    return model_dir_in(local)


MODEL_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([
        ParamSpec("max_new_tokens", "long", 256),
        ParamSpec("batch_size", "long", 8),
        ParamSpec("temperature", "double", 0.0),
    ]),
)


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


def pyfunc_code_file() -> str:
    """The model file MLflow runs at load time (`model/pyfunc_code.py`), found without importing
    it: importing it would call `mlflow.models.set_model` in this process."""
    from importlib.util import find_spec

    return find_spec("selfguided.components.model.pyfunc_code").origin


def log_trained_model(model_dir: str | Path, metadata: Mapping[str, Any]):
    """Log a trained model directory as a pyfunc model of the active run; returns its ModelInfo."""
    with tempfile.TemporaryDirectory(prefix="selfguided-log-") as staging:
        staging = Path(staging)
        artifact = trained_model.copy_artifact(model_dir, staging / "model_dir")  # no checkpoints
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_code_file(),  # models from code: the file, not a pickled instance
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


def log_merged(client: MlflowClient, model_dir: Path, run_id: str) -> str:
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


def ensure_merged_weights(client: MlflowClient, registered_model_name: str, version: str) -> str:
    """The artifact URI of a version's merged bf16 weights, logged on its run the first time it is
    asked for (a champion promoted by hand gets them as the pipeline's do)."""
    model_version = client.get_model_version(registered_model_name, str(version))
    if model_version.tags.get("merged_weights"):
        return model_version.tags["merged_weights"]
    with tempfile.TemporaryDirectory(prefix="selfguided-version-") as staging:
        model_dir = download_model_dir(f"models:/{registered_model_name}/{version}", client.tracking_uri, staging)
        uri = log_merged(client, model_dir, model_version.run_id)
    client.set_model_version_tag(registered_model_name, str(version), "merged_weights", uri)
    return uri
