"""The score step: scored records follow the contract, rejects are counted, no endpoint is a clear error."""

import json

import pytest
from test_judge_step import REQUEST, STRONG_BLOG  # one well-written blog post for both steps

from selfguided.components.data.jsonl import read_jsonl
from selfguided.components.judging.offline import OFFLINE_JUDGE_NAME
from selfguided.components.judging.scoring import score_offline
from selfguided.components.model.prompting import CRITERIA
from selfguided.components.steps.score import run_score_step


def test_scored_records_follow_the_contract():
    record = {"id": "x", "category": "blog", "instruction": REQUEST, "input": "", "output": STRONG_BLOG}
    (scored,) = score_offline([record])
    assert {k: scored[k] for k in record} == record
    assert set(scored["scores"]) == set(CRITERIA)
    assert scored["score"] == pytest.approx(sum(scored["scores"].values()) / 4, abs=1e-3)
    assert scored["judge"]["model"] == OFFLINE_JUDGE_NAME and scored["judge"]["rationale"]


def test_score_step_writes_scored_rejects_and_a_report_that_counts_them(tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text("\n".join([
        json.dumps({"id": "a", "category": "블로그", "instruction": REQUEST, "output": STRONG_BLOG}, ensure_ascii=False),
        json.dumps({"id": "b", "category": "blog", "instruction": REQUEST, "output": ""}),
    ]), encoding="utf-8")
    metrics = run_score_step(str(seed), OFFLINE_JUDGE_NAME, str(tmp_path / "s.jsonl"), str(tmp_path / "r.jsonl"),
                             str(tmp_path / "report.md"))
    assert metrics["scored"] == 1 and metrics["rejected"] == 1
    assert read_jsonl(tmp_path / "r.jsonl")[0]["line"] == 2
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "rejected as unusable input: 1" in report and "seed.jsonl:2: empty output" in report
    assert "| blog | 1 |" in report


def test_an_llm_model_without_an_endpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    from selfguided.components.steps.score import score_records

    with pytest.raises(RuntimeError, match="selfguided-openai Secret"):
        score_records([{"id": "a"}], "gpt-4o")
