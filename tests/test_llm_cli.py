"""`selfguided score` and `selfguided judge` on JSONL files, against the local fake endpoint."""

from __future__ import annotations

import argparse
import json

import pytest
from llm_server import FakeOpenAI

from selfguided.components.data.jsonl import read_jsonl, write_jsonl
from selfguided.pipelines.cli.llm import add_judge_parser, add_score_parser

pytestmark = pytest.mark.timeout(120)


def selfguided(*argv: str) -> int:
    """What pipelines/cli.py does with these two subcommands."""
    parser = argparse.ArgumentParser(prog="selfguided")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_score_parser(subparsers)
    add_judge_parser(subparsers)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def write_seed(path, n: int) -> list[dict]:
    records = [
        {"id": f"s{i}", "category": "소설", "instruction": f"이야기 #{i:02d}를 써 주세요",
         "output": f"옛날 옛적에 {i} " * (1 + i % 5)}
        for i in range(n)
    ]
    write_jsonl(path, records)
    return records


@pytest.fixture
def server(monkeypatch):
    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        yield fake


def test_help_documents_every_option(capsys):
    for command in ("score", "judge"):
        with pytest.raises(SystemExit):
            selfguided(command, "--help")
        text = capsys.readouterr().out
        for option in (f"--{command}-model", "--llm-concurrency", "--cache", "--batch", "--max-attempts", "--rate-limit-budget",
                       "--max-input-tokens", "OPENAI_BASE_URL"):
            assert option in text
    assert "--baseline" in text and "--judges" in text and "KoMT-Bench" in text


def test_score_writes_scored_records_and_a_summary(server, tmp_path, capsys):
    write_seed(tmp_path / "seed.jsonl", 8)
    code = selfguided("score", tmp_path / "seed.jsonl", "-o", tmp_path / "scored.jsonl", "--score-model", "gpt-4o-mini")
    assert code == 0
    rows = read_jsonl(tmp_path / "scored.jsonl")
    assert len(rows) == 8 and all(r["category"] == "novel" and len(r["scores"]) == 4 for r in rows)
    assert all(r["judge"]["model"] == "gpt-4o-mini" for r in rows)
    out = capsys.readouterr().out
    assert "score: done=8 failed=0 cached=0 sent=8" in out and "cost=$" in out


def test_score_against_a_failing_server_then_rerun_only_the_failed(server, tmp_path, capsys):
    records = write_seed(tmp_path / "seed.jsonl", 30)
    args = ("score", tmp_path / "seed.jsonl", "-o", tmp_path / "scored.jsonl", "--cache", tmp_path / "cache",
            "--max-attempts", "1")
    server.fail_rate = 0.3
    assert selfguided(*args) == 1
    rows = read_jsonl(tmp_path / "scored.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in records]  # nothing dropped
    failed = [r for r in rows if r["scores"] is None]
    assert all(r["scores"] is not None or "server error (500)" in r["error"] for r in rows)
    assert 0 < len(failed) < 30
    assert "rerun the same command" in capsys.readouterr().err

    server.fail_rate = 0.0
    server.reset_counters()
    assert selfguided(*args) == 0
    assert server.chat_requests == len(failed)
    asked = sorted(server.asked)
    assert all(sum(r["instruction"] in a for a in asked) == 1 for r in failed)  # exactly the failed ones
    assert all(r["scores"] is not None for r in read_jsonl(tmp_path / "scored.jsonl"))


def test_score_in_batch_mode(server, tmp_path, capsys):
    write_seed(tmp_path / "seed.jsonl", 5)
    code = selfguided("score", tmp_path / "seed.jsonl", "-o", tmp_path / "scored.jsonl", "--batch",
                      "--poll-interval", "0.05", "--cache", tmp_path / "cache")
    assert code == 0 and server.batches_created == 1 and server.chat_requests == 0
    assert "done=5" in capsys.readouterr().out


def test_score_sets_rejects_aside_and_stops_on_a_broken_file(server, tmp_path, capsys):
    records = write_seed(tmp_path / "seed.jsonl", 3)
    write_jsonl(tmp_path / "seed.jsonl", [*records, {"id": "bad", "category": "poem", "instruction": "시"}])
    assert selfguided("score", tmp_path / "seed.jsonl", "-o", tmp_path / "scored.jsonl") == 0
    [reject] = read_jsonl(tmp_path / "scored.rejects.jsonl")
    assert reject["line"] == 4 and reject["reason"] == "empty output"

    (tmp_path / "broken.jsonl").write_text('{"id": 1}\n{not json\n', encoding="utf-8")
    assert selfguided("score", tmp_path / "broken.jsonl", "-o", tmp_path / "x.jsonl") == 2
    assert "broken.jsonl:2: malformed JSON" in capsys.readouterr().err


def _judge_files(tmp_path):
    questions = [{"question_id": i, "category": "poem", "turns": [f"{i}번 시를 써 주세요"]} for i in range(1, 4)]
    write_jsonl(tmp_path / "questions.jsonl", questions)
    for model, text in (("small", "짧은 시"), ("ref", "조금 더 긴 시입니다, 봄이 오네요")):
        rows = [{"question_id": q["question_id"], "answer_id": f"{model}{q['question_id']}", "model_id": model,
                 "choices": [{"index": 0, "turns": [text]}], "tstamp": 0.0} for q in questions]
        write_jsonl(tmp_path / f"{model}.jsonl", rows)


def test_judge_single_and_pair(server, tmp_path, capsys):
    _judge_files(tmp_path)
    assert selfguided("judge", tmp_path / "questions.jsonl", tmp_path / "small.jsonl",
                      "-o", tmp_path / "single.jsonl") == 0
    single = read_jsonl(tmp_path / "single.jsonl")
    assert len(single) == 3 and all(1 <= r["score"] <= 10 and r["model"] == "small" for r in single)

    assert selfguided("judge", tmp_path / "questions.jsonl", tmp_path / "small.jsonl", "--mode", "pair",
                      "-o", tmp_path / "pair.jsonl") == 2
    assert "needs --baseline" in capsys.readouterr().err
    assert selfguided("judge", tmp_path / "questions.jsonl", tmp_path / "small.jsonl", "--mode", "pair",
                      "--baseline", tmp_path / "ref.jsonl", "--judges", "a,b", "--judge-repeats", "2",
                      "-o", tmp_path / "pair.jsonl") == 2  # a jury is not silently dropped
    assert "--judges, --judge-repeats grade with a jury, in --mode single only" in capsys.readouterr().err
    assert selfguided("judge", tmp_path / "questions.jsonl", tmp_path / "small.jsonl", "--mode", "pair",
                      "--baseline", tmp_path / "ref.jsonl", "-o", tmp_path / "pair.jsonl") == 0
    pairs = read_jsonl(tmp_path / "pair.jsonl")
    assert [r["winner"] for r in pairs] == ["model_2"] * 3 and pairs[0]["model_2"] == "ref"
    assert "judge: done=3 failed=0" in capsys.readouterr().out


def test_judge_input_errors_exit_2(server, tmp_path, capsys):
    _judge_files(tmp_path)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question_id": 1, "model_id": "m"}) + "\n", encoding="utf-8")
    assert selfguided("judge", tmp_path / "questions.jsonl", tmp_path / "bad.jsonl", "-o", tmp_path / "j.jsonl") == 2
    assert "bad.jsonl:1: missing field(s) choices" in capsys.readouterr().err


def test_without_an_endpoint_the_offline_judge_is_used(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    write_seed(tmp_path / "seed.jsonl", 4)
    assert selfguided("score", tmp_path / "seed.jsonl", "-o", tmp_path / "scored.jsonl") == 0
    assert "no OpenAI-compatible endpoint configured" in capsys.readouterr().err
    assert len(read_jsonl(tmp_path / "scored.jsonl")) == 4


def test_bad_seed_records_are_set_aside_before_any_request(server, tmp_path, capsys):
    """The issue's two records: text fields that are not strings, and an output of 2,000,000
    characters. Both land in the rejects file with their reason and cost no request."""
    records = write_seed(tmp_path / "seed.jsonl", 3)
    not_strings = {"id": "odd", "category": "시", "instruction": ["리스트"], "output": 42}
    huge = {"id": "huge", "category": "소설", "instruction": "긴 소설을 써 주세요", "output": "가" * 2_000_000}
    write_jsonl(tmp_path / "seed.jsonl", [records[0], not_strings, records[1], huge, records[2]])
    assert selfguided("score", tmp_path / "seed.jsonl", "-o", tmp_path / "scored.jsonl") == 0
    assert server.chat_requests == 3  # the three good records, nothing else
    assert not any("리스트" in asked or len(asked) > 100_000 for asked in server.asked)
    assert [r["id"] for r in read_jsonl(tmp_path / "scored.jsonl")] == ["s0", "s1", "s2"]
    odd, too_long = read_jsonl(tmp_path / "scored.rejects.jsonl")
    assert odd["line"] == 2 and odd["reason"] == (
        "field 'instruction' must be a string, got a list ([\"리스트\"]); "
        "field 'output' must be a string, got a number (42)")
    assert too_long["line"] == 4 and too_long["reason"].startswith("input too long to score: ~2,000,")
    assert "> max_input_tokens 8,000" in too_long["reason"] and "(2,000,011 characters" in too_long["reason"]
    assert too_long["estimated_tokens"] > 2_000_000 and too_long["chars"] == 2_000_011
    assert len(too_long["raw"]) <= 2000 and too_long["raw_truncated"]
    assert "2 unusable record(s) set aside" in capsys.readouterr().err

    assert selfguided("score", tmp_path / "seed.jsonl", "-o", tmp_path / "scored.jsonl",
                      "--max-input-tokens", "3000000") == 0  # a larger budget lets the long one through
    assert len(read_jsonl(tmp_path / "scored.rejects.jsonl")) == 1


def test_score_step_sets_records_over_the_input_budget_aside_with_their_size(tmp_path):
    from selfguided.components.judging.offline import OFFLINE_JUDGE_NAME
    from selfguided.components.steps.score import run_score_step

    records = write_seed(tmp_path / "seed.jsonl", 2)
    write_jsonl(tmp_path / "seed.jsonl", [*records, {"id": "long", "category": "blog", "instruction": "글",
                                                     "output": "나" * 9000}])
    metrics = run_score_step(str(tmp_path / "seed.jsonl"), OFFLINE_JUDGE_NAME, str(tmp_path / "s.jsonl"),
                             str(tmp_path / "r.jsonl"), str(tmp_path / "report.md"))
    assert metrics["scored"] == 2 and metrics["rejected"] == 1
    [reject] = read_jsonl(tmp_path / "r.jsonl")
    assert reject["line"] == 3 and reject["max_input_tokens"] == 8000 and reject["estimated_tokens"] > 9000
    assert "seed.jsonl:3: input too long to score" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_score_against_an_endpoint_limiting_concurrency(tmp_path, monkeypatch, capsys):
    """`score --llm-concurrency 32` against an endpoint taking 4 in flight (429 with `Retry-After: 1`
    beyond): nothing fails, and the rerun with the same cache sends no request."""
    records = write_seed(tmp_path / "seed.jsonl", 40)
    with FakeOpenAI(latency_s=0.05, max_concurrent=4, concurrency_retry_after_s=1.0,
                    concurrency_retry_after_ms=False) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        args = ("score", tmp_path / "seed.jsonl", "-o", tmp_path / "scored.jsonl", "--cache", tmp_path / "cache",
                "--llm-concurrency", "32", "--max-attempts", "1")
        assert selfguided(*args) == 0
        assert server.status_counts[200] == len(records) and server.status_counts[429] > 0
        assert server.peak_in_flight <= 4
        out = capsys.readouterr().out
        assert "failed=0" in out and "concurrency=" in out
        server.reset_counters()
        assert selfguided(*args) == 0
        assert server.chat_requests == 0


def test_judge_sends_no_request_for_an_answer_over_the_input_budget(server, tmp_path, capsys):
    _judge_files(tmp_path)
    rows = read_jsonl(tmp_path / "small.jsonl")
    rows[1]["choices"][0]["turns"] = ["아주 긴 답변 " * 100_000]
    write_jsonl(tmp_path / "small.jsonl", rows)
    assert selfguided("judge", tmp_path / "questions.jsonl", tmp_path / "small.jsonl",
                      "-o", tmp_path / "single.jsonl") == 1
    judged = read_jsonl(tmp_path / "single.jsonl")
    assert judged[1]["error"].startswith("input too long: ~") and "> max_input_tokens 8,000" in judged[1]["error"]
    assert judged[0]["error"] is None and judged[2]["error"] is None
    assert server.chat_requests == 2


def test_options_out_of_range_exit_2(tmp_path, capsys):
    write_seed(tmp_path / "seed.jsonl", 1)
    assert selfguided("score", tmp_path / "seed.jsonl", "-o", tmp_path / "s.jsonl", "--max-input-tokens", "0") == 2
    assert "score: LLMConfig.max_input_tokens must be >= 1" in capsys.readouterr().err
    assert selfguided("score", tmp_path / "seed.jsonl", "-o", tmp_path / "s.jsonl", "--rate-limit-budget", "-5") == 2
    assert "rate_limit_budget_s must be >= 0" in capsys.readouterr().err


def test_judge_with_a_jury_prints_how_far_the_judges_agree(server, tmp_path, capsys):
    _judge_files(tmp_path)
    with FakeOpenAI(judge="noisy", seed=5) as noisy:
        code = selfguided("judge", tmp_path / "questions.jsonl", tmp_path / "small.jsonl", "-o", tmp_path / "j.jsonl",
                          "--judges", f"gpt-4o,noisy@{noisy.base_url}", "--judge-repeats", "2",
                          "--cache", tmp_path / "cache")
    assert code == 0
    out = capsys.readouterr().out
    assert "gpt-4o: 3 items, 0 without a verdict" in out and "## Judges" in out and "alpha" in out
    assert "Judge noise" in out and "| noisy | 3 | 2 |" in out
    rows = read_jsonl(tmp_path / "j.jsonl")
    assert all(r["jury"]["size"] == 2 and len(r["judges"]) == 4 for r in rows)  # 2 judges x 2 repeats
