"""The preflight step: one line per problem, before any paid or GPU work."""

import pytest
from llm_server import FakeOpenAI

from selfguided.components.judging.jury import parse_judges
from selfguided.components.llm.config import model_endpoint, parse_model_entry
from selfguided.components.steps.reference import teacher_models
from selfguided.components.steps.preflight import PreflightError, run_preflight


def test_a_local_store_and_the_offline_judge_need_nothing(tmp_path):
    checked = run_preflight(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment_name="e",
                            registered_model_name="m", llm_models=["offline-heuristic"])
    assert len(checked) == 1 and "may write 'e' and 'm'" in checked[0]


def test_an_llm_without_an_endpoint_is_named(tmp_path):
    with pytest.raises(PreflightError, match="judge model|model 'gpt-4o' needs an OpenAI-compatible endpoint"):
        run_preflight(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment_name="e", registered_model_name="m",
                      llm_models=["offline-heuristic", "gpt-4o"])


def test_an_unreachable_endpoint_and_an_unreachable_tracking_server_are_both_reported(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(PreflightError) as info:
        run_preflight(tracking_uri="http://127.0.0.1:9", experiment_name="e", registered_model_name="m",
                      llm_models=["gpt-4o"], llm_base_url="http://127.0.0.1:9/v1")
    message = str(info.value)
    assert "MLflow" in message and "unreachable" in message and "LLM endpoint http://127.0.0.1:9/v1 is unreachable" in message


def test_teachers_on_their_own_endpoint_are_checked_there(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeOpenAI() as judge, FakeOpenAI() as served:
        checked = run_preflight(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment_name="e",
                                registered_model_name="m", llm_base_url=judge.base_url,
                                llm_models=["gpt-4o", f"korean-writing-assistant@{served.base_url}"])
    assert any(f"endpoint {served.base_url} answers" in line for line in checked)
    assert any(f"LLM gpt-4o: endpoint {judge.base_url} answers" in line for line in checked)
    assert model_endpoint("gpt-4o-mini", "x") == ("gpt-4o-mini", "x")


def test_the_preflight_checks_every_juror_and_teacher_not_only_the_judge_model():
    from selfguided.components.steps.preflight import collect_llm_models

    collect = collect_llm_models.python_func
    assert collect("gpt-4o", "gpt-4o", "", ["gpt-4o-mini"]) == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]
    assert collect("gpt-4o", "gpt-4o", "a, b@http://h/v1,", []) == ["gpt-4o", "a", "b@http://h/v1"]


def test_name_at_url_has_one_reader_for_judges_teachers_and_the_preflight():
    assert parse_model_entry("gpt-4o") == ("gpt-4o", None)
    assert parse_model_entry(" writer@http://h:8000/v1 ") == ("writer", "http://h:8000/v1")
    assert model_endpoint("writer@http://h/v1", "x") == ("writer", "http://h/v1")
    for bad, message in (("a@ftp://x", "after '@' comes the endpoint URL"), ("@http://x", "no model name")):
        with pytest.raises(ValueError, match=message):
            parse_model_entry(bad)
        with pytest.raises(ValueError, match=message):
            model_endpoint(bad, "x")
        with pytest.raises(ValueError, match=message):
            teacher_models([bad])
        with pytest.raises(ValueError, match=f"judge '{bad}': {message}"):
            parse_judges(bad)
