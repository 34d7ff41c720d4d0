import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch):
    """Tests never inherit the developer's API keys or tracking server."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MLFLOW_TRACKING_URI", "SELFGUIDED_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
