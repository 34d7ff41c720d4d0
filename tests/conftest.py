import mlflow
import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch):
    """Tests never inherit the developer's API keys or tracking server."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MLFLOW_TRACKING_URI", "SELFGUIDED_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _restore_tracking_uri():
    """register_candidates points MLflow's process-wide tracking URI at its store: put it back."""
    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)
