"""Open-loop load test of an OpenAI-compatible chat endpoint (`selfguided bench-serve`).

Requests arrive as a Poisson process at each offered rate of a sweep: the arrival times are drawn
before the rate starts and every request is sent at its time on its own thread, whatever the
earlier ones are doing (open loop). A server slower than the offered rate therefore builds a queue,
and the queue shows in the latency, which runs from a request's scheduled arrival to its answer (a
closed-loop client, waiting for answers before sending more, would hide it: "coordinated
omission"). Each rate is bounded by a duration and a number of requests; requests over
`max_in_flight` at once are not sent but counted as errors ("client: too many in flight"), so a
dead server cannot pile up threads.

Per rate (`RateResult`): offered rate, answers per second achieved (answers / time from the first
arrival to the last answer), p50/p95/p99 latency of the answers, output tokens per second and
tokens per answer (from the responses' `usage`), and errors by kind (`HTTP 500`, `timeout`, ...).
What the throughput costs: serving/serving_cost.py.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_IN_FLIGHT = 256
PERCENTILES = (50, 95, 99)
TOO_MANY_IN_FLIGHT = "client: too many in flight"


class LoadTestError(RuntimeError):
    """The endpoint cannot be load-tested (unreachable, no model served, bad input)."""


@dataclass
class Outcome:
    """One request: when it was due and sent (s since the rate started), its latency from the
    scheduled arrival, and either its token counts or an error kind."""

    scheduled_s: float
    sent_s: float
    latency_s: float | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class RateResult:
    offered_rate: float
    requests: int
    answers: int
    wall_s: float
    throughput: float
    latency_s: dict[str, float | None]
    output_tokens_per_s: float
    mean_prompt_tokens: float | None
    mean_completion_tokens: float | None
    errors: dict[str, int] = field(default_factory=dict)
    max_send_lag_s: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def poisson_arrivals(rate: float, *, duration_s: float, max_requests: int, rng: random.Random) -> list[float]:
    """Arrival times (s from the start) of a Poisson process at `rate` per second, within
    `duration_s` and at most `max_requests` of them."""
    if rate <= 0:
        raise LoadTestError(f"rates must be > 0, got {rate:g}")
    times: list[float] = []
    t = rng.expovariate(rate)
    while t <= duration_s and len(times) < max_requests:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def chat_request(base_url: str, model: str, content: str, *, max_tokens: int | None, timeout_s: float,
                 api_key: str = "") -> tuple[int, int]:
    """POST one chat completion; (prompt_tokens, completion_tokens) from its `usage` (0 when not
    reported). Raises on an HTTP error, a timeout or a body that is not a chat completion."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    request = urllib.request.Request(f"{base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        payload = json.loads(response.read())
    if not isinstance(payload, dict) or not payload.get("choices"):
        raise ValueError("no choices in the response")
    usage = payload.get("usage") or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def error_kind(exc: BaseException) -> str:
    """A short, countable name for why a request failed."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError
        return "timeout"
    if isinstance(reason, ConnectionError):
        return f"connection: {type(reason).__name__}"
    if isinstance(reason, (ValueError, KeyError, TypeError)):
        return "bad response"
    return type(reason).__name__


def api_base(url: str) -> str:
    """The endpoint's `/v1` base from what a user types (`http://host:8000`, `.../v1`, `.../v1/`)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LoadTestError(f"{url!r} is not an http(s) URL; give the server's address, e.g. http://127.0.0.1:8000")
    return url if url.endswith("/v1") else url + "/v1"


def served_models(base_url: str, *, timeout_s: float = 10.0, api_key: str = "") -> list[str]:
    """The model ids of GET /v1/models; LoadTestError naming the URL when it does not answer."""
    request = urllib.request.Request(f"{base_url}/models",
                                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = json.loads(response.read())
        return [str(m["id"]) for m in payload.get("data", []) if isinstance(m, dict) and "id" in m]
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LoadTestError(f"{base_url}/models did not answer ({error_kind(exc)}): is the server running "
                            "there?") from None


def prompts_from_questions(questions: Sequence[dict[str, Any]], *, seed: int = 0) -> list[str]:
    """The first turn of every question, in a seeded shuffled order (requests cycle through it)."""
    prompts = [q["turns"][0] for q in questions]
    if not prompts:
        raise LoadTestError("no questions to send")
    random.Random(seed).shuffle(prompts)
    return prompts


def summarise(rate: float, outcomes: Sequence[Outcome], wall_s: float) -> RateResult:
    """A rate's figures from its requests' outcomes; `wall_s` runs from the start to the last answer."""
    ok = [o for o in outcomes if o.error is None and o.latency_s is not None]
    latencies = np.array([o.latency_s for o in ok], dtype=float)
    pct = {f"p{q}": (float(np.percentile(latencies, q)) if latencies.size else None) for q in PERCENTILES}
    elapsed = wall_s - min((o.scheduled_s for o in outcomes), default=0.0)
    elapsed = elapsed if elapsed > 0 else float("nan")
    completion = sum(o.completion_tokens for o in ok)
    return RateResult(
        offered_rate=rate, requests=len(outcomes), answers=len(ok), wall_s=round(elapsed, 3),
        throughput=len(ok) / elapsed if ok else 0.0, latency_s=pct,
        output_tokens_per_s=completion / elapsed if ok else 0.0,
        mean_prompt_tokens=float(np.mean([o.prompt_tokens for o in ok])) if ok else None,
        mean_completion_tokens=completion / len(ok) if ok else None,
        errors=dict(Counter(o.error for o in outcomes if o.error is not None)),
        max_send_lag_s=max((o.sent_s - o.scheduled_s for o in outcomes), default=0.0),
    )


Send = Callable[[str], tuple[int, int]]  # prompt -> (prompt_tokens, completion_tokens), raises on failure


def run_open_loop(rate: float, prompts: Sequence[str], send: Send, *, duration_s: float, max_requests: int,
                  rng: random.Random, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                  clock: Callable[[], float] = time.monotonic) -> RateResult:
    """Send `prompts` (cycled) at Poisson arrivals of `rate`, each on its own thread at its time,
    never waiting for earlier answers; wait for every answer (each bounded by `send`'s timeout)."""
    arrivals = poisson_arrivals(rate, duration_s=duration_s, max_requests=max_requests, rng=rng)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    in_flight = [0]
    threads: list[threading.Thread] = []
    start = clock()

    def one(outcome: Outcome, prompt: str) -> None:
        try:
            outcome.prompt_tokens, outcome.completion_tokens = send(prompt)
            outcome.latency_s = clock() - start - outcome.scheduled_s
        except Exception as exc:  # noqa: BLE001 - every failure is counted by its kind
            outcome.error = error_kind(exc)
        finally:
            with lock:
                in_flight[0] -= 1

    for i, due in enumerate(arrivals):
        delay = start + due - clock()
        if delay > 0:
            time.sleep(delay)
        outcome = Outcome(scheduled_s=due, sent_s=clock() - start)
        outcomes.append(outcome)
        with lock:
            full = in_flight[0] >= max_in_flight
            if not full:
                in_flight[0] += 1
        if full:
            outcome.error = TOO_MANY_IN_FLIGHT
            continue
        thread = threading.Thread(target=one, args=(outcome, prompts[i % len(prompts)]), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return summarise(rate, outcomes, clock() - start)


def run_sweep(base_url: str, model: str, prompts: Sequence[str], rates: Sequence[float], *, duration_s: float,
              max_requests: int, timeout_s: float = DEFAULT_TIMEOUT_S, max_tokens: int | None = None,
              seed: int = 0, api_key: str = "", max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
              progress: Callable[[RateResult], None] | None = None) -> list[RateResult]:
    """One open-loop run per rate, in the order given, against `base_url` (its /v1 base)."""
    def send(prompt: str) -> tuple[int, int]:
        return chat_request(base_url, model, prompt, max_tokens=max_tokens, timeout_s=timeout_s, api_key=api_key)

    results = []
    for index, rate in enumerate(rates):
        result = run_open_loop(rate, prompts, send, duration_s=duration_s, max_requests=max_requests,
                               rng=random.Random(seed * 1000 + index), max_in_flight=max_in_flight)
        results.append(result)
        if progress:
            progress(result)
    return results


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def progress_line(result: RateResult) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items())) or "none"
    return (f"rate {result.offered_rate:g}/s: {result.answers}/{result.requests} answered in {result.wall_s:.1f} s, "
            f"{result.throughput:.2f} answers/s, p95 {_num(result.latency_s.get('p95'))} s, errors: {errors}")


def results_table(results: Sequence[RateResult], costs: Sequence[float | None] | None = None) -> str:
    """The sweep as a Markdown table; with `costs`, USD per 1,000 answers per rate."""
    header = ["offered req/s", "requests", "answers", "answers/s", "p50 s", "p95 s", "p99 s", "output tok/s",
              "tok/answer", "errors"] + (["USD/1k answers"] if costs is not None else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(results):
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items())) or "0"
        cells = [f"{r.offered_rate:g}", str(r.requests), str(r.answers), f"{r.throughput:.2f}",
                 _num(r.latency_s["p50"]), _num(r.latency_s["p95"]), _num(r.latency_s["p99"]),
                 f"{r.output_tokens_per_s:.1f}", _num(r.mean_completion_tokens, 1), errors]
        if costs is not None:
            cells.append(_num(costs[i], 4))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
