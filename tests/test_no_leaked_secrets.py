"""A fake API key and MLflow password set in the environment appear nowhere: not in the compiled
YAML, the logs, the step outputs, the LLM cache, nor MLflow params or tags. The run goes through
the real LLM path (scorer, judge and the teacher row) against a local OpenAI-compatible server."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from selfguided.pipelines.compile import compile_pipeline
from selfguided.pipelines.local import run_local
from llm_server import FakeOpenAI  # tests/ is on sys.path under pytest

pytestmark = pytest.mark.slow

CANARY = "sk-selfguided-canary-7f3a9c1e5b"
PASSWORD_CANARY = "mlflow-pw-canary-91c3d7"


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_fake_api_key_is_found_nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "selfguided-pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD_CANARY)
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        pipeline_yaml = compile_pipeline(tmp_path / "pipeline.yaml")
        # Where secrets could leak does not depend on how well the model learns: two training steps
        # and short answers make the same files, logs and MLflow entries as the demo's 30 epochs.
        result = run_local(tmp_path / "run", arms=["self_guided"], max_new_tokens=16,
                           finetune_config='{"method": "full", "max_steps": 2}')
        assert server.chat_requests > 0, "the run did not use the LLM endpoint"

    for secret in (CANARY, PASSWORD_CANARY):
        assert secret.encode() not in pipeline_yaml.read_bytes()
        assert files_containing(tmp_path, secret.encode()) == []  # logs, step outputs, LLM cache, mlflow.db, artifacts

    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs
    kinds = {run.data.tags.get("row_kind") for run in runs}
    assert kinds >= {"pipeline", "trained", "base", "teacher", "champion"}
    teacher = next(run for run in runs if run.data.tags.get("row_kind") == "teacher")
    assert teacher.data.tags["row"] == "teacher/gpt-4o-mini" and "judge/overall" in teacher.data.metrics
    # the stand-in teacher answers every question alike and is scored alike: no spread, so no
    # interval is logged (never a width-0 one)
    assert "judge/overall_ci_low" not in teacher.data.metrics
    for run in runs:
        if run.data.tags.get("row_kind") != "pipeline":
            assert run.data.params["judge_model"] != "offline-heuristic"
        for value in [*run.data.params.values(), *run.data.tags.values()]:
            assert CANARY not in value and PASSWORD_CANARY not in value
    for version in client.search_model_versions(f"name = '{result.registered_model_name}'"):
        assert CANARY not in str(version.tags)
