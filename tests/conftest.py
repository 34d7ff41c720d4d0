import os

import mlflow
import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch):
    """Tests never inherit the developer's API keys or tracking server, and leave none behind.

    `mlflow.set_tracking_uri` and `mlflow.set_registry_uri` (called by register_candidates, the
    champion row, promote, serve) also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI so that
    subprocesses inherit them; unset both after each test, or a later test (and the kfp.local
    steps it starts) would log into, or resolve models:/ URIs in, whatever store the previous one used.
    """
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                 "SELFGUIDED_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
