"""The LLM client layer against a real local OpenAI-compatible server (tests/llm_server.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest
from llm_server import FakeOpenAI
from moto.server import ThreadedMotoServer

from selfguided.components.llm.cache import DirCache
from selfguided.components.llm.client import LLMClient
from selfguided.components.llm.config import LLMConfig, endpoint_configured
from selfguided.components.llm.limits import AdaptiveConcurrency, RateGovernor, quota_exhausted, retry_after
from selfguided.components.llm.request import (
    LLMRequest,
    UsageSummary,
    cache_key,
    estimate_request_tokens,
    estimate_tokens,
)

pytestmark = pytest.mark.timeout(120)

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "t",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"helpfulness": {"type": "integer"}},
            "required": ["helpfulness"],
            "additionalProperties": False,
        },
    },
}


def make_requests(n: int, structured: bool = False) -> list[LLMRequest]:
    requests = []
    for i in range(n):
        content = f"[The Start of Answer]\n답변 {i} {'가' * i}\n[The End of Answer]"
        text = LLMRequest("test-v1", [{"role": "user", "content": content}])
        structured_request = LLMRequest("test-v1", text.messages, response_format=SCHEMA, text_fallback=text)
        requests.append(structured_request if structured else text)
    return requests


def config(server: FakeOpenAI, **overrides) -> LLMConfig:
    settings = dict(base_url=server.base_url, api_key="test", progress=False, backoff_base_s=0.01, timeout_s=5.0)
    return LLMConfig(**{**settings, **overrides})


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def test_endpoint_configured_reads_the_sdk_variables(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert not endpoint_configured()
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    assert endpoint_configured()
    assert LLMConfig().resolved_base_url() == "http://127.0.0.1:1/v1"
    assert LLMConfig().resolved_api_key() == "unused"  # self-hosted endpoint without a key


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="concurrency"):
        LLMConfig(concurrency=0)
    with pytest.raises(ValueError, match="structured_output"):
        LLMConfig(structured_output="yaml")
    with pytest.raises(ValueError, match="rate_limit_budget_s"):
        LLMConfig(rate_limit_budget_s=-1)
    with pytest.raises(ValueError, match="max_input_tokens"):
        LLMConfig(max_input_tokens=0)


def test_cache_key_covers_model_prompt_messages_and_sampling():
    request = make_requests(1)[0]
    base = cache_key(LLMConfig(), request)
    assert base == cache_key(LLMConfig(), make_requests(1)[0])
    assert base != cache_key(LLMConfig(model="gpt-4.1"), request)
    assert base != cache_key(LLMConfig(temperature=0.7), request)
    assert base != cache_key(LLMConfig(max_tokens=10), request)
    assert base != cache_key(LLMConfig(), LLMRequest("test-v2", request.messages))
    assert base != cache_key(LLMConfig(), make_requests(2)[1])
    assert base != cache_key(LLMConfig(), LLMRequest("test-v1", request.messages, response_format=SCHEMA))


def test_price_lookup_by_longest_prefix():
    assert LLMConfig(model="gpt-4o-2024-08-06").price_per_token() == (2.5e-6, 10e-6)
    assert LLMConfig(model="gpt-4o-mini-2024-07-18").price_per_token() == (0.15e-6, 0.6e-6)
    assert LLMConfig(model="llama-3-70b").price_per_token() is None


def test_retry_after_formats():
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "2"}) == 2.0
    in_3s = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3))
    assert 1.0 < retry_after({"retry-after": in_3s}) <= 3.0
    assert retry_after({}) is None


def test_governor_paces_at_the_tightest_advertised_limit():
    governor = RateGovernor(rpm_limit=None)
    governor.observe({"x-ratelimit-limit-requests": "600"}, tokens_used=1000)
    assert governor.interval == pytest.approx(0.1)
    governor.observe({"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "60000"}, tokens_used=1000)
    assert governor.interval == pytest.approx(1.0)  # 60k tokens/min at ~1k tokens a request
    capped = RateGovernor(rpm_limit=30)
    capped.observe({"x-ratelimit-limit-requests": "600"}, tokens_used=10)
    assert capped.interval == pytest.approx(2.0)  # the user's own cap is tighter


def test_dir_cache_roundtrip_and_torn_entry(tmp_path, caplog):
    cache = DirCache(tmp_path)
    key = "ab" + "0" * 62
    assert cache.get(key) is None
    cache.put(key, {"text": "안녕"})
    assert cache.get(key) == {"text": "안녕"}
    assert [p.name for p in (tmp_path / "ab").iterdir()] == [f"{key}.json"]  # no temp file left behind
    (tmp_path / "ab" / f"{key}.json").write_text('{"text": "cut', encoding="utf-8")
    assert cache.get(key) is None
    assert "unreadable cache entry" in caplog.text
    cache.delete(key)
    assert not (tmp_path / "ab" / f"{key}.json").exists()


def test_answers_are_cached_and_a_rerun_sends_nothing(server, tmp_path):
    cfg = config(server, cache=str(tmp_path / "cache"), prices={"gpt-4o": (1.0, 2.0)})
    client = LLMClient(cfg, step="score")
    results = client.run(make_requests(12))
    assert all(r.ok and "[[" in r.text for r in results)
    assert client.usage.requests_sent == 12 and server.chat_requests == 12
    expected = sum(r.prompt_tokens * 1e-6 + r.completion_tokens * 2e-6 for r in results)
    assert client.usage.cost_usd == pytest.approx(expected)

    server.reset_counters()
    rerun = LLMClient(cfg, step="score")
    again = rerun.run(make_requests(12))
    assert server.chat_requests == 0
    assert rerun.usage.cached == 12 and rerun.usage.cost_usd == 0
    assert [r.text for r in again] == [r.text for r in results]


def test_server_errors_back_off_and_succeed(server):
    server.script("500", "500")
    client = LLMClient(config(server, concurrency=1))
    [result] = client.run(make_requests(1))
    assert result.ok
    assert client.usage.requests_sent == 3 and client.usage.retries == 2


def test_after_max_attempts_a_request_fails_with_the_reason(server):
    server.fail_rate = 1.0
    client = LLMClient(config(server, max_attempts=3))
    results = client.run(make_requests(4))
    assert all(not r.ok and r.text is None for r in results)
    assert all("server error (500)" in r.error and "after 3 attempts" in r.error for r in results)
    assert server.chat_requests == 12


def test_failures_are_not_cached(server, tmp_path):
    cfg = config(server, cache=str(tmp_path), max_attempts=1)
    server.fail_rate = 1.0
    assert not any(r.ok for r in LLMClient(cfg).run(make_requests(5)))
    server.fail_rate = 0.0
    server.reset_counters()
    assert all(r.ok for r in LLMClient(cfg).run(make_requests(5)))
    assert server.chat_requests == 5


def test_slow_answers_time_out_and_are_retried(server):
    server.slow_s = 1.0
    server.script("slow")
    client = LLMClient(config(server, timeout_s=0.3, concurrency=1))
    [result] = client.run(make_requests(1))
    assert result.ok and client.usage.retries == 1

    server.script("slow")
    [failed] = LLMClient(config(server, timeout_s=0.3, max_attempts=1)).run(make_requests(1))
    assert "timeout" in failed.error


def test_a_429_with_a_spent_quota_pauses_the_whole_pool_for_retry_after(server):
    server.latency_s = 0.05
    server.retry_after_s = 0.5
    server.script("429")
    client = LLMClient(config(server, concurrency=4))
    results = client.run(make_requests(8))
    assert all(r.ok for r in results)
    assert client.usage.rate_limited == 1
    limited_at = next(t for t, status in server.arrivals if status == 429)
    later = [t - limited_at for t, _ in server.arrivals if t - limited_at > 0.1]
    assert later, "requests after the 429 were expected"
    # The three requests admitted together with the 429 finish after 50 ms; without the pool pause
    # their slots would send the next requests right away.
    assert min(later) >= 0.45


def test_insufficient_quota_is_not_retried(server):
    server.script("quota")
    [result] = LLMClient(config(server, concurrency=1)).run(make_requests(1))
    assert "insufficient_quota" in result.error and server.chat_requests == 1


def test_rate_limit_headers_set_the_pace():
    with FakeOpenAI(rpm=600, latency_s=0.02) as server:
        client = LLMClient(config(server, concurrency=8))
        results = client.run(make_requests(30))
        assert all(r.ok for r in results)
        assert client.governor.interval == pytest.approx(0.1)
        # A handful at most: only the first burst goes out before the limit is known.
        assert client.usage.rate_limited <= 3


def test_auto_structured_output_falls_back_to_text_once(tmp_path):
    with FakeOpenAI(json_schema=False) as server:
        cfg = config(server, concurrency=2, cache=str(tmp_path))
        client = LLMClient(cfg)
        results = client.run(make_requests(6, structured=True))
        assert all(r.ok and "Helpfulness: [[" in r.text for r in results)
        assert not client.structured
        assert server.status_counts[400] <= 2  # only the requests in flight before it learnt
        server.reset_counters()
        rerun = LLMClient(cfg)
        assert all(r.cached for r in rerun.run(make_requests(6, structured=True)))
        assert server.chat_requests == 0  # the rerun finds the text answers without asking again


def test_structured_output_json_and_its_refusal(server):
    [answer] = LLMClient(config(server)).run(make_requests(1, structured=True))
    assert set(json.loads(answer.text)) == {"helpfulness"}
    server.json_schema = False
    [refused] = LLMClient(config(server, structured_output="json")).run(make_requests(1, structured=True))
    assert "request rejected (400)" in refused.error and server.chat_requests == 2


def test_s3_cache_through_moto_server(monkeypatch):
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        for name, value in {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="llm-cache")
        with FakeOpenAI() as server:
            cfg = config(server, cache="s3://llm-cache/selfguided/llm")
            first = LLMClient(cfg).run(make_requests(5))
            keys = s3.list_objects_v2(Bucket="llm-cache", Prefix="selfguided/llm/")["KeyCount"]
            assert keys == 5
            server.reset_counters()
            rerun = LLMClient(cfg)
            assert [r.text for r in rerun.run(make_requests(5))] == [r.text for r in first]
            assert server.chat_requests == 0 and rerun.usage.cached == 5
    finally:
        moto.stop()


def test_batch_mode_joins_on_custom_id_at_half_price(server, tmp_path):
    cfg = config(server, batch=True, poll_interval_s=0.05, cache=str(tmp_path), prices={"gpt-4o": (1.0, 2.0)})
    client = LLMClient(cfg, step="judge")
    requests = make_requests(7)
    results = client.run(requests)
    realtime = LLMClient(config(server)).run(requests)
    assert [r.text for r in results] == [r.text for r in realtime]  # each answer joined to its request
    assert server.batches_created == 1 and server.files_uploaded == 1
    expected = 0.5 * sum(r.prompt_tokens * 1e-6 + r.completion_tokens * 2e-6 for r in results)
    assert client.usage.cost_usd == pytest.approx(expected)
    assert client.usage.requests_sent == 7

    rerun = LLMClient(cfg)
    assert all(r.cached for r in rerun.run(requests))
    assert server.batches_created == 1


def test_batch_failures_are_explicit_and_retried_in_a_new_batch(server, tmp_path):
    cfg = config(server, batch=True, poll_interval_s=0.05, cache=str(tmp_path))
    server.fail_rate = 0.5
    first = LLMClient(cfg).run(make_requests(10))
    failed = [i for i, r in enumerate(first) if not r.ok]
    assert failed and all("batch request failed (500)" in first[i].error for i in failed)
    server.fail_rate = 0.0
    rerun = LLMClient(cfg)
    second = rerun.run(make_requests(10))
    assert all(r.ok for r in second)
    assert server.batches_created == 2 and rerun.usage.requests_sent == len(failed)


# ---------------------------------------------------------------------------------------------
# kill -9: a child process runs the client; we kill it mid-run and resume in this process.

CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_llm_client import make_requests
    from selfguided.components.llm.client import LLMClient
    from selfguided.components.llm.config import LLMConfig
    config = LLMConfig(base_url={base_url!r}, api_key="test", progress=False, cache={cache!r},
                       concurrency=2, batch={batch!r}, poll_interval_s=0.1)
    LLMClient(config).run(make_requests({n}))
    """
)


def _spawn(server: FakeOpenAI, cache: Path, n: int, batch: bool) -> subprocess.Popen:
    code = CHILD.format(tests=str(Path(__file__).parent), base_url=server.base_url, cache=str(cache), batch=batch, n=n)
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_kill_9_mid_run_then_resume_pays_only_for_the_missing(tmp_path):
    cache = tmp_path / "cache"
    n = 40
    with FakeOpenAI(latency_s=0.1) as server:  # 2 s for all 40 at concurrency 2: time to kill it midway
        child = _spawn(server, cache, n, batch=False)
        _wait_for(lambda: len(list(cache.glob("*/*.json"))) >= 10, "10 cached answers")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        entries = list(cache.glob("*/*.json"))
        assert 10 <= len(entries) < n
        assert all(isinstance(json.loads(p.read_text(encoding="utf-8")), dict) for p in entries)  # none torn

        server.reset_counters()
        client = LLMClient(config(server, cache=str(cache)))
        results = client.run(make_requests(n))
        assert all(r.ok for r in results)
        assert client.usage.cached == len(entries)
        assert server.chat_requests == n - len(entries)


def test_batch_resumes_after_kill_9_without_a_second_batch(tmp_path):
    cache = tmp_path / "cache"
    with FakeOpenAI(batch_delay_s=1.0) as server:
        child = _spawn(server, cache, 6, batch=True)
        _wait_for(lambda: list(cache.glob("ba/batch-*.json")), "the batch id in the cache")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert server.batches_created == 1

        client = LLMClient(config(server, cache=str(cache), batch=True, poll_interval_s=0.05))
        results = client.run(make_requests(6))
        assert all(r.ok for r in results)
        assert server.batches_created == 1 and server.files_uploaded == 1
        assert not list(cache.glob("ba/batch-*.json"))  # collected, so the state is gone


def test_usage_summary_names_and_markdown():
    usage = UsageSummary(step="judge", model="gpt-4o", records=3, done=2, failed=1, cost_usd=0.5,
                         parse_success_rate=0.5)
    metrics = usage.to_metrics()
    assert metrics["llm/judge/cost_usd"] == 0.5 and metrics["llm/judge/failed"] == 1.0
    assert "llm/judge/pair_consistency" not in metrics  # not a pairwise run
    markdown = usage.to_markdown()
    assert "| failed | 1 |" in markdown and "| parse success (first answer) | 50.0% |" in markdown


# ---------------------------------------------------------------------------------------------
# Inputs checked before paying


def test_estimate_tokens_is_a_conservative_size_without_a_tokenizer():
    assert estimate_tokens("") == 0
    assert estimate_tokens("봄바람") == 3  # one per Hangul syllable
    assert estimate_tokens("abcdef") == 2 and estimate_tokens("abcdefg") == 3  # one per 3 ASCII characters
    assert estimate_tokens("시 poem") == 1 + 2
    request = LLMRequest("t-v1", [{"role": "system", "content": "a" * 30}, {"role": "user", "content": "가" * 100}])
    assert estimate_request_tokens(request) >= 10 + 100
    with_schema = LLMRequest("t-v1", request.messages, response_format=SCHEMA, text_fallback=LLMRequest(
        "t-v1", [*request.messages[:1], {"role": "user", "content": "가" * 500}]))
    assert estimate_request_tokens(with_schema) >= 500  # the longer text variant counts


def test_a_prompt_over_max_input_tokens_fails_at_once_and_is_never_sent(server, tmp_path):
    huge = LLMRequest("test-v1", [{"role": "user", "content": "[The Start of Answer]\n" + "가" * 20_000
                                   + "\n[The End of Answer]"}])
    client = LLMClient(config(server, max_input_tokens=1000))
    results = client.run([*make_requests(3), huge])
    assert all(r.ok for r in results[:3])
    assert results[3].error.startswith("input too long: ~20,") and "> max_input_tokens 1,000" in results[3].error
    assert server.chat_requests == 3 and client.usage.requests_sent == 3

    batch = LLMClient(config(server, max_input_tokens=1000, batch=True, poll_interval_s=0.05, cache=str(tmp_path)))
    in_batch = batch.run([huge, *make_requests(4)[3:]])
    assert "input too long" in in_batch[0].error and in_batch[1].ok
    assert batch.usage.requests_sent == 1  # one batch line: the huge request is not in it


# ---------------------------------------------------------------------------------------------
# 429s: rate limits, concurrency limits, budgets


def test_quota_exhausted_tells_rate_limits_from_concurrency_limits():
    assert quota_exhausted({"x-ratelimit-remaining-requests": "0"})
    assert quota_exhausted({"x-ratelimit-remaining-requests": "12", "x-ratelimit-remaining-tokens": "500"}, 1500)
    assert not quota_exhausted({"x-ratelimit-remaining-requests": "12", "x-ratelimit-remaining-tokens": "5000"}, 1500)
    assert not quota_exhausted({"retry-after": "1"})  # a gateway's "too many in flight"


def _send(pool: AdaptiveConcurrency, in_use: int):
    pool.in_use = in_use
    return pool.sent()


def test_adaptive_concurrency_drops_to_what_the_endpoint_took_and_grows_back():
    pool = AdaptiveConcurrency(32)
    burst = [_send(pool, 32) for _ in range(32)]  # an endpoint taking 8 gets 32 at once
    for ticket in burst[8:]:
        pool.returned(ticket)
        pool.refused(ticket)
    # One event (all were sent together): the limit halves, not more, though 8 were taken.
    assert pool.limit == 16 and pool.ceiling == 8 and pool.epoch == 1
    second = [_send(pool, 8 + i) for i in range(1, 9)]  # sent after the drop: a new event
    for ticket in second:
        pool.returned(ticket)
        pool.refused(ticket)
    assert pool.limit == 8 and pool.current == 8

    for ticket in burst[:8]:  # the eight the endpoint took come back
        pool.returned(ticket)
        pool.succeeded(ticket)  # sent under the old limit: no growth
    assert pool.limit == 8
    # The last refusal measured exactly the ceiling, so that was a refused probe: growth above it is slower.
    for _ in range(16):
        ticket = _send(pool, 8)
        pool.returned(ticket)
        pool.succeeded(ticket)
    grown = pool.limit
    assert 8.9 < grown < 9  # half of 1/limit per success: about one slot per two round trips
    spare = _send(pool, 3)  # slots to spare: a success says nothing about the limit
    pool.returned(spare)
    pool.succeeded(spare)
    assert pool.limit == grown

    small = AdaptiveConcurrency(3)
    for _ in range(100):
        ticket = _send(small, 3)
        small.returned(ticket)
        small.succeeded(ticket)
    assert small.limit == 3  # never above the configured concurrency
    alone = _send(small, 1)
    small.returned(alone)
    small.refused(alone)  # nothing else was out: the endpoint took none, the floor is half
    assert small.limit == 1.5 and small.current == 1
    again = _send(small, 1)
    small.returned(again)
    small.refused(again)
    assert small.limit == 1 and small.current == 1  # never below one


def test_a_concurrency_429_shrinks_the_pool_without_pausing_it(server):
    server.latency_s = 0.1
    server.retry_after_s = 0.5
    server.script("busy")  # a 429 with Retry-After only: a gateway refusing one more in flight
    client = LLMClient(config(server, concurrency=4))
    results = client.run(make_requests(12))
    assert all(r.ok for r in results)
    assert client.usage.rate_limited == 1 and client.pool.epoch == 1  # one congestion event (since grown back)
    limited_at = next(t for t, status in server.arrivals if status == 429)
    # The requests sent with it end after 0.1 s and their slots send the next ones at once: no pool pause.
    assert any(0.05 < t - limited_at < 0.4 for t, _ in server.arrivals)
    refused_prompt = server.asked[[status for _, status in server.arrivals].index(429)]
    retried_at = [t for (t, _), asked in zip(server.arrivals, server.asked) if asked == refused_prompt][1]
    assert retried_at - limited_at >= 0.45  # the refused request itself waited its Retry-After


def test_429s_do_not_use_up_the_attempts_for_real_errors(server):
    server.retry_after_s = 0.05
    server.script("busy", "429", "busy", "busy", "500", "busy")
    client = LLMClient(config(server, concurrency=1, max_attempts=2))
    [result] = client.run(make_requests(1))
    assert result.ok
    assert client.usage.rate_limited == 5 and client.usage.requests_sent == 7 and client.usage.retries == 6


def test_a_request_refused_past_rate_limit_budget_s_fails_with_the_reason():
    with FakeOpenAI(max_concurrent=0, concurrency_retry_after_s=0.1) as server:  # refuses everything
        client = LLMClient(config(server, concurrency=2, rate_limit_budget_s=0.35))
        started = time.monotonic()
        results = client.run(make_requests(2))
        assert time.monotonic() - started < 3
    for result in results:
        assert "rate limited (429" in result.error and "rate_limit_budget_s=0.35" in result.error
        assert "[after 0 attempts and " in result.error
    assert server.status_counts[429] == client.usage.rate_limited >= 4


def test_x_should_retry_overrides_the_status(server):
    server.script("500-noretry")
    [refused] = LLMClient(config(server, concurrency=1)).run(make_requests(1))
    assert "server error (500)" in refused.error and "x-should-retry: false" in refused.error
    assert server.chat_requests == 1

    server.script("409-retry")
    client = LLMClient(config(server, concurrency=1))
    [retried] = client.run(make_requests(1))
    assert retried.ok and client.usage.retries == 1


def test_a_concurrency_limited_endpoint_is_used_to_its_limit_and_nothing_fails(tmp_path):
    """The issue's scenario at a test's scale: the endpoint takes 4 in flight and answers 429 beyond;
    the client asks for 16. It settles at the endpoint's limit with few refusals, nothing failed,
    and a rerun from the cache sends nothing. How fast it ends next to a client told the right
    concurrency is a speed, measured side by side by benchmarks/llm_throughput.py (RESULTS.md), not
    asserted here: under a loaded CI machine the wall-clock ratio is noise (1.53x seen once)."""
    limits = dict(latency_s=0.1, max_concurrent=4, concurrency_retry_after_s=0.3)
    n = 80
    with FakeOpenAI(**limits) as server:
        cfg = config(server, concurrency=16, cache=str(tmp_path), max_attempts=1)
        client = LLMClient(cfg)
        results = client.run(make_requests(n))
        assert all(r.ok for r in results)
        assert server.peak_in_flight <= 4 and 3 <= client.pool.current <= 5 and client.usage.concurrency == client.pool.current
        # The first burst (12 over the limit), a few events to settle, a handful of probes.
        assert server.status_counts[429] <= 12 + 20
        server.reset_counters()
        rerun = LLMClient(cfg)
        assert all(r.cached for r in rerun.run(make_requests(n)))
        assert server.chat_requests == 0


def test_injected_faults_under_a_concurrency_limit_end_scored_or_failed_for_a_real_error():
    with FakeOpenAI(latency_s=0.02, max_concurrent=3, fail_rate=0.3, seed=1) as server:
        client = LLMClient(config(server, concurrency=12, max_attempts=1))
        results = client.run(make_requests(40))
    failed = [r for r in results if not r.ok]
    assert 0 < len(failed) < 40 and client.usage.rate_limited > 0
    assert all("server error (500)" in r.error for r in failed)  # never for a 429


def test_progress_bar_shows_the_current_concurrency(server, capsys):
    LLMClient(config(server, concurrency=5, progress=True)).run(make_requests(3))
    assert "conc=5/5" in capsys.readouterr().err
