"""The local work folder: where `selfguided run` keeps MLflow's SQLite store, the pipeline's outputs,
caches and logs, and so the tracking store that `selfguided serve` and the registry commands read
when none is named."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_WORKDIR = ".selfguided"


def default_tracking_uri(workdir: str | Path = DEFAULT_WORKDIR) -> str:
    """$MLFLOW_TRACKING_URI, else the local run's SQLite store (`<workdir>/mlflow.db`)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}"
