"""Incremental re-scoring: the score step sends only records it has not scored with the same scorer
model and prompt version; a new prompt version scores everything again and says so. Counted as
requests on the local OpenAI-compatible stand-in server."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from llm_server import FakeOpenAI

from selfguided.components.judging import scoring
from selfguided.components.judging.scoring import rescoring_line, score_incrementally
from selfguided.components.llm.config import LLMConfig


def _records(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"r{i}", "category": "blog", "instruction": f"블로그 글을 써 주세요 {i}", "input": "",
             "output": "좋은 글입니다. " * (1 + i)} for i in range(start, start + n)]


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def _config(server, cache) -> LLMConfig:
    return LLMConfig(model="gpt-4o", base_url=server.base_url, api_key="test", progress=False, cache=cache,
                     backoff_base_s=0.01, backoff_max_s=0.02)


def _new_prompt_version(monkeypatch) -> None:
    """score-v2: the same prompt reworded slightly, as a new version file would be."""
    v1 = scoring.load_prompt("score-v1")
    v2 = replace(v1, version=2, system=v1.system + " 공정하게 평가하세요.")
    monkeypatch.setattr(scoring, "load_prompt", lambda prompt_id: v2)


def test_only_new_records_are_sent_and_a_new_prompt_version_scores_everything_again(server, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first, _, counts = score_incrementally(_records(6), _config(server, cache))
    assert server.chat_requests == 6 and counts == {"score/scored_now": 6, "score/reused": 0,
                                                   "score/rescored_new_prompt": 0}

    server.reset_counters()
    edited = {**_records(6)[5], "output": "고친 글입니다. " * 3}   # same id, new content: scored again
    again = _records(5) + [edited] + _records(2, start=6)
    second, usage, counts = score_incrementally(again, _config(server, cache))
    assert server.chat_requests == 3  # the edited record and the two new ones, nothing else
    assert counts == {"score/scored_now": 3, "score/reused": 5, "score/rescored_new_prompt": 0}
    assert [r["scores"] for r in second[:5]] == [r["scores"] for r in first[:5]]
    assert [r["id"] for r in second] == [r["id"] for r in again] and usage.cached == 5 and usage.done == 8
    assert second[0]["judge"]["rationale"] == first[0]["judge"]["rationale"]
    assert rescoring_line(counts, "gpt-4o") == "score: 3 scored now, 5 reused (scored before with gpt-4o and prompt score-v1)"

    server.reset_counters()
    _new_prompt_version(monkeypatch)
    third, _, counts = score_incrementally(again, _config(server, cache))
    assert server.chat_requests == 8 and counts["score/scored_now"] == 8 and counts["score/reused"] == 0
    assert counts["score/rescored_new_prompt"] == 8
    assert all(r["judge"]["prompt_version"] == "2" for r in third)
    line = rescoring_line(counts, "gpt-4o")
    assert "8 scored now, 0 reused" in line and "prompt score-v2 is new, so they were scored again" in line

    server.reset_counters()
    _, _, counts = score_incrementally(again, _config(server, cache))  # v2 again: all reused
    assert server.chat_requests == 0 and counts["score/reused"] == 8


def test_a_record_without_a_verdict_is_not_taken_for_scored(server, tmp_path):
    """No scores, no entry: the next run hands it to the client again (whose own cache holds the same
    unparsable answer, so nothing is paid twice; a new prompt version would ask afresh)."""
    cache = str(tmp_path / "cache")
    server.script("garbage", "garbage")  # the first answer and its re-ask: no verdict
    config = replace(_config(server, cache), concurrency=1)
    [row], _, _ = score_incrementally(_records(1), config)
    assert row["scores"] is None and server.chat_requests == 2
    server.reset_counters()
    [row], usage, counts = score_incrementally(_records(1), config)
    assert row["scores"] is None and counts["score/scored_now"] == 1 and counts["score/reused"] == 0
    assert server.chat_requests == 0 and usage.cached == 2


def test_without_a_cache_everything_is_scored(server):
    for _ in range(2):
        _, _, counts = score_incrementally(_records(3), _config(server, None))
    assert server.chat_requests == 6 and counts["score/reused"] == 0


def test_the_score_step_says_what_it_scored_now_and_what_it_reused(server, tmp_path, monkeypatch, capsys):
    from selfguided.components.steps.score import run_score_step

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    seed = tmp_path / "seed.jsonl"
    records = _records(4)
    out = [str(tmp_path / name) for name in ("s.jsonl", "r.jsonl", "report.md")]
    for rows in (records[:3], records):
        seed.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
        metrics = run_score_step(str(seed), "gpt-4o", *out, cache=str(tmp_path / "cache"), base_url=server.base_url)
    assert server.chat_requests == 4 and metrics["score/scored_now"] == 1 and metrics["score/reused"] == 3
    assert "[selfguided] score: 1 scored now, 3 reused (scored before with gpt-4o and prompt score-v1)" in \
        capsys.readouterr().out
