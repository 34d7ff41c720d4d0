"""LLM client throughput under an endpoint's limits: selfguided's client vs a FastChat-style baseline.

Both score the same N seed records (the bundled Korean sample seed, repeated with numbered
instructions so every request is distinct) against tests/llm_server.py's OpenAI-compatible server
on 127.0.0.1, which simulates a generation latency and enforces limits the way real endpoints do.
Two scenarios (`--scenario`), each a preset of the options below:

- rpm (default): a hosted API's rate limit. Requests per minute as a token bucket holding `--burst`
  requests (the limit enforced over short windows; OpenAI documents that it quantizes RPM limits)
  and at most `--max-concurrent` requests in flight; over either it answers 429 with Retry-After.
  Every answer advertises the limit in x-ratelimit-limit-requests. N=1000, RPM 2400, burst 2,
  12 in flight, 0.2 s latency, 16 concurrent requests.
- concurrency: a self-hosted endpoint behind a gateway that takes 8 requests in flight and answers
  429 with `Retry-After: 1` (nothing else) beyond that; no RPM limit and no x-ratelimit headers.
  N=300, 0.5 s latency (so at most 16 requests/s), 32 concurrent requests: the client does not
  know the endpoint's limit and asks for four times too much.

- client: `score_with_llm` (asyncio, adaptive concurrency up to `--concurrency`, pool-wide pacing
  from the advertised limit, pool pause on a spent quota) with an empty answer cache, then an
  immediate rerun.
- baseline: FastChat llm_judge's API loop: a thread pool of the same size, each request retried
  up to 16 times with a fixed 10 s sleep after any error, and no cache.
- told (concurrency scenario): the client again, told the endpoint's limit (`--concurrency 8`),
  for what this machine's server and client reach at best; the gap between it and 100% is the
  server's overhead per answer, not the client's adaptation.

"limit used" = answered requests per second / what the endpoint allows (min of RPM / 60 and
max-concurrent / latency) over the whole run.

    python benchmarks/llm_throughput.py                         # the rpm scenario
    python benchmarks/llm_throughput.py --scenario concurrency
    python benchmarks/llm_throughput.py --n 200 --burst 40

The last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llm_server import FakeOpenAI  # noqa: E402

from selfguided.components.data.inputs import sample_path  # noqa: E402
from selfguided.components.data.seed import load_seed  # noqa: E402
from selfguided.components.llm.config import LLMConfig  # noqa: E402
from selfguided.components.judging.prompts import SCORE_PROMPT, load_prompt  # noqa: E402
from selfguided.components.judging.scoring import score_with_llm  # noqa: E402

FASTCHAT_MAX_RETRY = 16  # FastChat llm_judge API_MAX_RETRY
FASTCHAT_RETRY_SLEEP_S = 10.0  # FastChat llm_judge API_RETRY_SLEEP
SCENARIOS = {
    "rpm": dict(n=1000, rpm=2400.0, burst=2.0, max_concurrent=12, latency=0.2, concurrency=16,
                concurrency_retry_after=0.1),
    "concurrency": dict(n=300, rpm=None, burst=None, max_concurrent=8, latency=0.5, concurrency=32,
                        concurrency_retry_after=1.0),
}


def seed_records(n: int) -> list[dict]:
    sample = load_seed(sample_path("seed.jsonl")).records
    records = []
    for i in range(n):
        record = sample[i % len(sample)]
        records.append({**record, "id": f"bench-{i}", "instruction": f"[{i}] {record['instruction']}"})
    return records


def fastchat_baseline(base_url: str, records: list[dict], threads: int, model: str) -> int:
    """Score with FastChat's loop (plain prompt, any error -> sleep 10 s); returns the answers received."""
    prompt = load_prompt(SCORE_PROMPT)
    api = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)

    def one(record: dict) -> bool:
        messages = prompt.request(
            category=record["category"], category_label=record["category"], instruction=record["instruction"],
            input=record.get("input") or "(없음)", output=record["output"],
        ).text_fallback.messages
        for _ in range(FASTCHAT_MAX_RETRY):
            try:
                api.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=1024)
                return True
            except openai.OpenAIError:
                time.sleep(FASTCHAT_RETRY_SLEEP_S)
        return False

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--scenario", choices=SCENARIOS, default="rpm", help="preset of the options below (default: %(default)s)")
    add("--n", type=int, help="records to score")
    add("--rpm", type=float, help="server limit, requests per minute (0: none)")
    add("--burst", type=float, help="requests the rate bucket holds")
    add("--max-concurrent", type=int, help="server limit on requests in flight")
    add("--latency", type=float, help="simulated seconds per answer")
    add("--concurrency", type=int, help="client slots = baseline threads")
    add("--concurrency-retry-after", type=float,
        help="Retry-After of a 429 over --max-concurrent, seconds (also as retry-after-ms when below 1 s)")
    args = parser.parse_args()
    for name, value in SCENARIOS[args.scenario].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    told = args.max_concurrent if args.scenario == "concurrency" else None
    rpm = args.rpm or None
    limits = dict(latency_s=args.latency, rpm=rpm, burst=args.burst, max_concurrent=args.max_concurrent,
                  concurrency_retry_after_s=args.concurrency_retry_after,
                  concurrency_retry_after_ms=args.concurrency_retry_after < 1)
    records = seed_records(args.n)
    allowed = [rate for rate in (rpm / 60 if rpm else None,
                                 args.max_concurrent / args.latency if args.max_concurrent and args.latency else None)
               if rate]
    rate = min(allowed) if allowed else float("inf")

    with FakeOpenAI(**limits) as server, tempfile.TemporaryDirectory() as cache:
        config = LLMConfig(model="gpt-4o", base_url=server.base_url, api_key="bench", concurrency=args.concurrency,
                           cache=cache, progress=False)
        started = time.monotonic()
        scored, usage = score_with_llm(records, config)
        client_s = time.monotonic() - started
        client_ok = server.status_counts[200]
        client_429 = server.status_counts[429]
        client_sent = server.chat_requests
        assert usage.done == args.n, f"client scored {usage.done} of {args.n}: " + "; ".join(
            sorted({r["error"] for r in scored if r.get("error")})[:3])
        server.reset_counters()
        _, rerun = score_with_llm(records, config)
        rerun_requests = server.chat_requests
        assert rerun.cached == args.n

    told_s = told_ok = None
    if told:
        with FakeOpenAI(**limits) as server, tempfile.TemporaryDirectory() as cache:
            config = LLMConfig(model="gpt-4o", base_url=server.base_url, api_key="bench", concurrency=told,
                               cache=cache, progress=False)
            started = time.monotonic()
            score_with_llm(records, config)
            told_s = time.monotonic() - started
            told_ok = server.status_counts[200]

    with FakeOpenAI(**limits) as server:
        started = time.monotonic()
        baseline_ok = fastchat_baseline(server.base_url, records, args.concurrency, "gpt-4o")
        baseline_s = time.monotonic() - started
        baseline_429 = server.status_counts[429]
        baseline_sent = server.chat_requests

    client_used = client_ok / client_s / rate
    baseline_used = baseline_ok / baseline_s / rate
    speedup = baseline_s / client_s
    print(f"scenario {args.scenario}: N={args.n} records; server: "
          + (f"{rpm:g} RPM (bucket of {args.burst:g}), " if rpm else "no RPM limit, ")
          + f"{args.max_concurrent} in flight (429 Retry-After {args.concurrency_retry_after:g} s beyond), "
          f"{args.latency:g} s latency, so {rate:g} requests/s at most; {args.concurrency} concurrent requests each")
    print(f"{'':24}{'client':>12}{'baseline':>16}")
    for label, ours, theirs in (
        ("wall time (s)", f"{client_s:.1f}", f"{baseline_s:.1f}"),
        ("answered", client_ok, baseline_ok),
        ("failed", usage.failed, args.n - baseline_ok),
        ("answers per second", f"{client_ok / client_s:.1f}", f"{baseline_ok / baseline_s:.1f}"),
        ("limit used", f"{client_used:.1%}", f"{baseline_used:.1%}"),
        ("429 answers", client_429, baseline_429),
        ("requests sent", client_sent, baseline_sent),
        ("concurrency at the end", usage.concurrency, args.concurrency),
        ("rerun requests", rerun_requests, "n/a (no cache)"),
    ):
        print(f"{label:24}{ours!s:>12}{theirs!s:>16}")
    if told:
        print(f"told --concurrency {told}: {told_s:.1f} s, {told_ok / told_s:.1f} answers per second, "
              f"{told_ok / told_s / rate:.1%} of the limit")
    print(f"speedup over the baseline: {speedup:.2f}x")
    print(
        f"RESULT scenario={args.scenario} n={args.n} rpm={rpm or 0:g} burst={args.burst or 0:g} "
        f"max_concurrent={args.max_concurrent} latency_s={args.latency:g} concurrency={args.concurrency} "
        f"client_s={client_s:.1f} baseline_s={baseline_s:.1f} "
        f"rate_limit_used={client_used:.3f} baseline_rate_limit_used={baseline_used:.3f} speedup={speedup:.2f} "
        f"client_failed={usage.failed} client_429={client_429} baseline_429={baseline_429} "
        f"client_sent={client_sent} final_concurrency={usage.concurrency} rerun_requests={rerun_requests}"
        + (f" told_concurrency={told} told_s={told_s:.1f} told_rate_limit_used={told_ok / told_s / rate:.3f}"
           if told else "")
    )


if __name__ == "__main__":
    main()
