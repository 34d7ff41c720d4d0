"""LLM client throughput under a rate limit: selfguided's client vs a FastChat-style baseline.

Both score the same N seed records (the bundled Korean sample seed, repeated with numbered
instructions so every request is distinct) against tests/llm_server.py's OpenAI-compatible server
on 127.0.0.1, which simulates a generation latency and enforces a rate limit the way hosted APIs
do: requests per minute as a token bucket holding `--burst` requests (the limit enforced over short
windows; OpenAI documents that it quantizes RPM limits) and at most `--max-concurrent` requests in
flight; over either it answers 429 with Retry-After. Every answer advertises the limit in
x-ratelimit-limit-requests.

- client: `score_with_llm` (asyncio, `--concurrency` slots, pool-wide pacing from the advertised
  limit, pool pause on Retry-After) with an empty answer cache, then an immediate rerun.
- baseline: FastChat llm_judge's API loop: a thread pool of the same size, each request retried
  up to 16 times with a fixed 10 s sleep after any error, and no cache.

"rate limit used" = answered requests per second / (RPM / 60) over the whole run.

    python benchmarks/llm_throughput.py            # N=1000, RPM 2400, burst 2, 12 concurrent, 0.2 s
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

from selfguided.components.data import load_seed, sample_path  # noqa: E402
from selfguided.components.llm import LLMConfig  # noqa: E402
from selfguided.components.llm_tasks import SCORE_PROMPT, load_prompt, score_with_llm  # noqa: E402

FASTCHAT_MAX_RETRY = 16  # FastChat llm_judge API_MAX_RETRY
FASTCHAT_RETRY_SLEEP_S = 10.0  # FastChat llm_judge API_RETRY_SLEEP


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
    add("--n", type=int, default=1000, help="records to score (default: %(default)s)")
    add("--rpm", type=float, default=2400, help="server limit, requests per minute (default: %(default)s)")
    add("--burst", type=float, default=2, help="requests the rate bucket holds (default: %(default)s)")
    add("--max-concurrent", type=int, default=12, help="server limit on requests in flight (default: %(default)s)")
    add("--latency", type=float, default=0.2, help="simulated seconds per answer (default: %(default)s)")
    add("--concurrency", type=int, default=16, help="client slots = baseline threads (default: %(default)s)")
    args = parser.parse_args()
    limits = dict(latency_s=args.latency, rpm=args.rpm, burst=args.burst, max_concurrent=args.max_concurrent)
    records = seed_records(args.n)
    rate = args.rpm / 60

    with FakeOpenAI(**limits) as server, tempfile.TemporaryDirectory() as cache:
        config = LLMConfig(model="gpt-4o", base_url=server.base_url, api_key="bench", concurrency=args.concurrency,
                           cache=cache, progress=False)
        started = time.monotonic()
        scored, usage = score_with_llm(records, config)
        client_s = time.monotonic() - started
        client_ok = server.status_counts[200]
        client_429 = server.status_counts[429]
        client_sent = server.chat_requests
        assert usage.done == args.n, f"client scored {usage.done} of {args.n}"
        server.reset_counters()
        _, rerun = score_with_llm(records, config)
        rerun_requests = server.chat_requests
        assert rerun.cached == args.n

    with FakeOpenAI(**limits) as server:
        started = time.monotonic()
        baseline_ok = fastchat_baseline(server.base_url, records, args.concurrency, "gpt-4o")
        baseline_s = time.monotonic() - started
        baseline_429 = server.status_counts[429]
        baseline_sent = server.chat_requests

    client_used = client_ok / client_s / rate
    baseline_used = baseline_ok / baseline_s / rate
    speedup = baseline_s / client_s
    print(f"N={args.n} records; server: {args.rpm:g} RPM (bucket of {args.burst:g}), {args.max_concurrent} in flight, "
          f"{args.latency:g} s latency; {args.concurrency} concurrent requests each")
    print(f"{'':24}{'client':>12}{'baseline':>16}")
    for label, ours, theirs in (
        ("wall time (s)", f"{client_s:.1f}", f"{baseline_s:.1f}"),
        ("answered", client_ok, baseline_ok),
        ("answers per second", f"{client_ok / client_s:.1f}", f"{baseline_ok / baseline_s:.1f}"),
        ("rate limit used", f"{client_used:.1%}", f"{baseline_used:.1%}"),
        ("429 answers", client_429, baseline_429),
        ("requests sent", client_sent, baseline_sent),
        ("rerun requests", rerun_requests, "n/a (no cache)"),
    ):
        print(f"{label:24}{ours!s:>12}{theirs!s:>16}")
    print(f"speedup over the baseline: {speedup:.2f}x")
    print(
        f"RESULT n={args.n} rpm={args.rpm:g} burst={args.burst:g} max_concurrent={args.max_concurrent} "
        f"latency_s={args.latency:g} concurrency={args.concurrency} "
        f"client_s={client_s:.1f} baseline_s={baseline_s:.1f} "
        f"rate_limit_used={client_used:.3f} baseline_rate_limit_used={baseline_used:.3f} speedup={speedup:.2f} "
        f"client_429={client_429} baseline_429={baseline_429} rerun_requests={rerun_requests}"
    )


if __name__ == "__main__":
    main()
