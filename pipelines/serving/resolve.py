"""MODEL_URI of `selfguided serve` -> a local trained model directory.

MODEL_URI is `models:/NAME@ALIAS` (default: the champion), `models:/NAME/VERSION`, `runs:/RUN/PATH`
(or any other MLflow artifact URI), or a local trained model directory (a finetune output, or a
downloaded pyfunc model folder). A registered version is downloaded by the registry
(`registry/logged_model.download_model_dir`), which finds the trained model directory in it
(layout: `components/model/artifact.py`). Every failure is a ServeError with a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfguided.components.model import artifact as tm
from selfguided.components.registry.names import CHAMPION, REGISTERED_MODEL_NAME
from selfguided.pipelines.options import missing_sqlite_store

DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL_NAME}@{CHAMPION}"


class ServeError(RuntimeError):
    """The model cannot be served; the message is one line that names what and why."""


@dataclass
class ResolvedModel:
    model_dir: Path
    """The trained model directory (selfguided.json, adapter/ or model/, tokenizer/)."""
    name: str
    """The default served model name: the registered model's name, else the folder's."""
    source: str
    """What was resolved, for the startup line (`models:/x@champion (version 3)`)."""
    registered_model: str = ""
    """The registered model, version and alias (for production traces); "" where not one."""
    version: str = ""
    alias: str = ""


def _is_uri(text: str) -> bool:
    scheme = text.split(":", 1)[0]
    return ":" in text and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def resolve_model(model_uri: str, tracking_uri: str | None, download_dir: str | Path) -> ResolvedModel:
    """The trained model directory behind MODEL_URI (registered versions are downloaded into
    `download_dir`). Raises ServeError with a one-line reason. For an MLflow URI this points the
    process's MLflow at `tracking_uri` (`mlflow.set_tracking_uri`), as register_candidates does."""
    if not _is_uri(model_uri) or model_uri.startswith("file:"):
        path = Path(model_uri.removeprefix("file://")).expanduser().resolve()
        if not path.is_dir():
            raise ServeError(f"{model_uri}: no such directory (MODEL_URI is models:/NAME@ALIAS, "
                             "models:/NAME/VERSION, runs:/RUN_ID/PATH or a trained model directory)")
        from selfguided.components.registry.logged_model import model_dir_in

        model_dir = model_dir_in(path)
        name = path.name
        source = str(path)
    else:
        model_dir, name, source = _download(model_uri, tracking_uri, Path(download_dir))
    try:
        tm.read_manifest(model_dir)
    except tm.ArtifactError as exc:
        raise ServeError(f"{model_uri}: {one_line(exc)}") from None
    registered, version, alias = registry_labels(model_uri, tracking_uri)
    if alias and version:
        source = f"{model_uri} (version {version})"
    return ResolvedModel(model_dir=model_dir, name=name, source=source, registered_model=registered,
                         version=version, alias=alias)


def registry_labels(model_uri: str, tracking_uri: str | None) -> tuple[str, str, str]:
    """(registered model, version, alias) of a `models:/` URI, the alias's version looked up in the
    registry ("" when that fails); ("", "", "") for any other MODEL_URI."""
    if not model_uri.startswith("models:/"):
        return "", "", ""
    ref = model_uri.removeprefix("models:/")
    if "@" not in ref:
        name, _, version = ref.rpartition("/")
        return name, version, ""
    name, alias = ref.split("@", 1)
    try:
        from mlflow import MlflowClient

        version = MlflowClient(tracking_uri, registry_uri=tracking_uri).get_model_version_by_alias(name, alias).version
    except Exception:  # the trace says the alias; the version stays unknown
        version = ""
    return name, str(version), alias


def _download(model_uri: str, tracking_uri: str | None, download_dir: Path) -> tuple[Path, str, str]:
    hint = ""
    if model_uri.startswith("models:/") and model_uri.endswith("@champion"):
        hint = ("; no champion yet? `make run` trains, registers and promotes one "
                "(or name a version: models:/NAME/VERSION)")
    registry = model_uri.startswith(("models:/", "runs:/"))
    if registry and not tracking_uri:
        raise ServeError(f"cannot resolve {model_uri}: no MLflow tracking store (give --tracking-uri or set "
                         f"MLFLOW_TRACKING_URI){hint}")
    if registry and missing_sqlite_store(tracking_uri) is not None:  # MLflow would create an empty store there
        raise ServeError(f"cannot resolve {model_uri}: the MLflow store {tracking_uri} does not exist{hint}")

    from selfguided.components.registry.logged_model import download_model_dir

    try:
        model_dir = download_model_dir(model_uri, tracking_uri, download_dir)
    except Exception as exc:  # MlflowException, OSError, sqlalchemy errors: one line for the user
        raise ServeError(f"cannot resolve {model_uri} in {tracking_uri}: {one_line(exc)}{hint}") from None

    source, name = model_uri, model_dir.name
    if model_uri.startswith("models:/"):
        ref = model_uri.removeprefix("models:/")
        name = ref.split("@", 1)[0] if "@" in ref else ref.rsplit("/", 1)[0]
    elif model_uri.startswith("runs:/"):
        name = "run-" + model_uri.removeprefix("runs:/").split("/", 1)[0]
    return model_dir, name, source
