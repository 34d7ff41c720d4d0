"""`selfguided replay URL`: traffic for the production loop. Sends the held-out questions (default:
the bundled sample, components/sample_data/questions.jsonl) to an OpenAI-compatible endpoint, each
conversation turn by turn (a later turn carries the endpoint's earlier answers), with the question's
category in the request's `metadata` (as a client of `selfguided serve` would say it; with
`--without-category` the server's classifier labels them instead). `--repeat N` sends the set N
times, `--llm-concurrency` conversations at once. Prints one summary line: requests, answers,
failures by kind, latency, answers per category. Exit status 0 when every request was answered,
1 when some failed, 2 when nothing could be sent (bad input, no server).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selfguided.components.data.jsonl import DataError
from selfguided.components.registry.production import CATEGORY_METADATA_KEY

DEFAULT_TIMEOUT_S = 120.0


@dataclass
class Replayed:
    requests: int = 0
    answered: int = 0
    errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    by_category: Counter = field(default_factory=Counter)


def _chat(base_url: str, body: dict[str, Any], timeout_s: float, api_key: str) -> str:
    request = urllib.request.Request(f"{base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        payload = json.loads(response.read())
    return str(payload["choices"][0]["message"]["content"] or "")


def replay_conversation(base_url: str, model: str, question: dict[str, Any], *, with_category: bool,
                        max_tokens: int | None, timeout_s: float, api_key: str = "") -> Replayed:
    """One question's turns, in order; a failed turn ends its conversation (later turns need it)."""
    from selfguided.components.serving.loadtest import error_kind

    done = Replayed()
    messages: list[dict[str, str]] = []
    for turn in question["turns"]:
        messages = messages + [{"role": "user", "content": turn}]
        body: dict[str, Any] = {"model": model, "messages": messages}
        if with_category:
            body["metadata"] = {CATEGORY_METADATA_KEY: question["category"]}
        if max_tokens:
            body["max_tokens"] = max_tokens
        done.requests += 1
        started = time.perf_counter()
        try:
            answer = _chat(base_url, body, timeout_s, api_key)
        except Exception as exc:  # noqa: BLE001 - counted by kind, reported in the summary
            done.errors[error_kind(exc)] += 1
            return done
        done.latencies.append(time.perf_counter() - started)
        done.answered += 1
        done.by_category[question["category"]] += 1
        messages = messages + [{"role": "assistant", "content": answer}]
    return done


def replay(base_url: str, model: str, questions: list[dict[str, Any]], *, repeat: int = 1, concurrency: int = 4,
           with_category: bool = True, max_tokens: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
           api_key: str = "") -> Replayed:
    total = Replayed()
    work = [q for _ in range(repeat) for q in questions]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for done in pool.map(lambda q: replay_conversation(base_url, model, q, with_category=with_category,
                                                           max_tokens=max_tokens, timeout_s=timeout_s,
                                                           api_key=api_key), work):
            total.requests += done.requests
            total.answered += done.answered
            total.errors.update(done.errors)
            total.latencies += done.latencies
            total.by_category.update(done.by_category)
    return total


def summary_line(base_url: str, model: str, done: Replayed, wall_s: float) -> str:
    from selfguided.components.data.categories import category_order

    failed = sum(done.errors.values())
    parts = [f"replay: {done.requests} requests to {base_url} as `{model}` in {wall_s:.1f} s: "
             f"{done.answered} answered, {failed} failed"]
    if done.errors:
        parts[0] += " (" + ", ".join(f"{kind} {n}" for kind, n in done.errors.most_common()) + ")"
    if done.latencies:
        p50, p95 = np.percentile(done.latencies, [50, 95])
        parts.append(f"latency p50 {p50:.2f} s, p95 {p95:.2f} s")
    if done.by_category:
        parts.append("answers by category: " + ", ".join(f"{c} {done.by_category[c]}"
                                                         for c in category_order(done.by_category)))
    return "; ".join(parts)


def run_replay(args: argparse.Namespace) -> int:
    from selfguided.components.data.inputs import SAMPLE_QUESTIONS, sample_path
    from selfguided.components.data.questions import load_questions
    from selfguided.components.serving.loadtest import LoadTestError, api_base, served_models

    def fail(message: str) -> int:
        print(f"selfguided replay: error: {message}", file=sys.stderr)
        return 2

    if args.repeat < 1:
        return fail("--repeat must be at least 1")
    if args.llm_concurrency < 1:
        return fail("--llm-concurrency must be at least 1")
    try:
        questions = load_questions(args.questions or sample_path(SAMPLE_QUESTIONS))
    except (DataError, OSError) as exc:
        return fail(f"--questions: {exc}")
    if not questions:
        return fail("--questions: the file holds no questions")
    try:
        base_url = api_base(args.url)
        model = args.served_model_name
        if not model:
            models = served_models(base_url, api_key=args.api_key or "")
            if not models:
                return fail(f"{base_url}/models lists no model; name one with --served-model-name")
            model = models[0]
    except LoadTestError as exc:
        return fail(str(exc))
    started = time.perf_counter()
    done = replay(base_url, model, questions, repeat=args.repeat, concurrency=args.llm_concurrency,
                  with_category=not args.without_category, max_tokens=args.max_tokens, timeout_s=args.timeout,
                  api_key=args.api_key or "")
    print(summary_line(base_url, model, done, time.perf_counter() - started), flush=True)
    return 0 if not done.errors else 1


def add_replay_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "replay", help="send the held-out questions to an OpenAI-compatible endpoint, their category in the "
        "request's metadata (traffic for the production traces)", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("url", metavar="URL", help="the endpoint, e.g. http://127.0.0.1:8000 (selfguided serve)")
    parser.add_argument("--questions", help="questions in FastChat's question.jsonl shape (default: the bundled "
                        "sample's held-out questions)")
    parser.add_argument("--repeat", type=int, default=1, help="send the questions this many times (default: 1)")
    parser.add_argument("--llm-concurrency", type=int, default=4,
                        help="conversations in flight at once (default: %(default)s)")
    parser.add_argument("--served-model-name", help="the model name to send (default: the first of GET /v1/models)")
    parser.add_argument("--max-tokens", type=int, help="answer length per request (default: the server's)")
    parser.add_argument("--without-category", action="store_true",
                        help="send no metadata.category: the server's classifier labels the requests")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds to wait for one answer (default: %(default)s)")
    parser.add_argument("--api-key", help="a bearer token, where the endpoint wants one")
    parser.set_defaults(func=run_replay)
    return parser
