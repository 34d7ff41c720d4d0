"""Teacher rows: every API teacher answered by one CPU task, judged by one, handed to compare as a folder."""

import pytest
from llm_server import FakeOpenAI

from selfguided.components.data.inputs import sample_path
from selfguided.components.data.jsonl import DataError, write_jsonl
from selfguided.components.data.questions import load_questions
from selfguided.components.evaluation.judge_summary import JudgeSummary
from selfguided.components.evaluation.rows import read_evidence
from selfguided.components.judging.answers import read_answer_rows
from selfguided.components.judging.offline import OFFLINE_JUDGE_NAME
from selfguided.components.steps.judge import run_judge_rows
from selfguided.components.steps.reference import answer_teacher_rows, plan_reference_rows, teacher_models


@pytest.fixture()
def questions(tmp_path):
    path = tmp_path / "questions.jsonl"
    write_jsonl(path, load_questions(sample_path("questions.jsonl"))[:8])
    return path


def test_every_teacher_answers_into_one_folder_each_with_its_endpoints_key(tmp_path, questions, monkeypatch):
    """A teacher on the run's endpoint uses OPENAI_API_KEY; one on an endpoint of its own
    (`name@url`) the key of its name from the mounted Secret, never the run's key."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "KOREAN_WRITER").write_text("writer-key\n")
    monkeypatch.setattr("selfguided.components.llm.config.OWN_ENDPOINT_KEYS_DIR", str(keys))
    monkeypatch.setenv("OPENAI_API_KEY", "run-key")
    with FakeOpenAI() as run_endpoint, FakeOpenAI() as own_endpoint:
        results = answer_teacher_rows(["gpt-4o-mini", f"korean-writer@{own_endpoint.base_url}", " "], questions,
                                      tmp_path / "answers", llm_base_url=run_endpoint.base_url, llm_concurrency=2)
        assert run_endpoint.api_keys == {"run-key"} and own_endpoint.api_keys == {"writer-key"}
    rows = read_answer_rows(tmp_path / "answers")
    assert [r["row_model"] for r, _ in rows] == ["gpt-4o-mini", "korean-writer"] == [r.row_model for r in results]
    assert all(r["row_kind"] == "teacher" and len(path.read_text().splitlines()) == 8 for r, path in rows)

    judged = run_judge_rows(str(questions), str(tmp_path / "answers"), str(tmp_path / "evidence"),
                            str(tmp_path / "report.md"), model=OFFLINE_JUDGE_NAME)
    assert [s.row for s in judged] == ["teacher/gpt-4o-mini", "teacher/korean-writer"]
    evidence = read_evidence(tmp_path / "evidence")
    assert [r.trained for r in evidence] == [False, False]
    for row, summary in zip(evidence, judged):
        assert JudgeSummary.read(row.summary) == summary
        assert len(row.judgments.read_text().splitlines()) == summary.n_judged + summary.n_failed
    assert "teacher/korean-writer" in (tmp_path / "report.md").read_text()


def test_no_teacher_is_an_empty_folder_that_judges_to_no_rows(tmp_path, questions):
    assert answer_teacher_rows([], questions, tmp_path / "answers") == []
    assert read_answer_rows(tmp_path / "answers") == []
    assert run_judge_rows(str(questions), str(tmp_path / "answers"), str(tmp_path / "evidence"),
                          str(tmp_path / "report.md"), model=OFFLINE_JUDGE_NAME) == []
    assert read_evidence(tmp_path / "evidence") == []


def test_teachers_are_planned_apart_from_the_rows_that_run_a_model():
    assert plan_reference_rows(["a", "b"]) == [{"row_kind": "base", "base_model": "a", "model": ""},
                                               {"row_kind": "base", "base_model": "b", "model": ""},
                                               {"row_kind": "champion", "base_model": "", "model": ""}]
    assert teacher_models(["gpt-4o-mini", "gpt-4o-mini", "x@http://h/v1"]) == ["gpt-4o-mini", "x@http://h/v1"]
    with pytest.raises(ValueError, match="names a model twice"):
        teacher_models(["x", "x@http://h/v1"])


def test_a_folder_that_is_not_one_is_named(tmp_path):
    with pytest.raises(DataError, match="not a folder of answered rows"):
        read_answer_rows(tmp_path)
    (tmp_path / "rows.json").write_text('[{"summary": 1}]')
    with pytest.raises(DataError, match="not a folder of judged rows"):
        read_evidence(tmp_path)
