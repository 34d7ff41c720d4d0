import mlflow
import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch):
    """Tests never inherit the developer's API keys or tracking server, and leave none behind.

    `mlflow.set_tracking_uri` (called by register_candidates) also exports MLFLOW_TRACKING_URI so
    that subprocesses inherit it; unset both after each test, or a later test (and the kfp.local
    steps it starts) would log into whatever store the previous one used.
    """
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MLFLOW_TRACKING_URI", "SELFGUIDED_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    yield
    mlflow.set_tracking_uri(None)
