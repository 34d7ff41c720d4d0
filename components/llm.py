"""One client layer for all paid LLM traffic (score and judge), on the official `openai` SDK.

How one request travels through `LLMClient.run`:

1. Cache. Its key is the sha256 of (model, prompt name-version, messages, sampling parameters,
   response format). A hit in the cache (a local directory, or `s3://bucket/prefix` so a KFP retry
   on another pod finds it) is answered at no cost.
2. Slot and turn. It waits for one of `concurrency` slots, then for its turn from the pool-wide
   `RateGovernor`: request starts are spaced to the tightest limit known (`rpm_limit`, or the
   x-ratelimit-limit-requests / -tokens the endpoint advertises), and every request waits while
   the pool is paused.
3. Errors. A 429 pauses the whole pool for its Retry-After (or retry-after-ms), because every
   other request would hit the same limit; 5xx, 408, timeouts and connection errors back off this
   request only, exponentially with jitter; other 4xx fail at once (retrying cannot help). After
   `max_attempts` the request fails with the last reason: it never gets a made-up answer.
4. Storage. An answer is written to the cache the moment it arrives (atomically), so a run killed
   with kill -9 loses only the requests in flight and a rerun pays only for what is missing.
   Failures are not cached: a rerun retries them.

Structured output: a request can carry a JSON-schema `response_format` and a plain-text variant
(`text_fallback`). With `structured_output="auto"` the client tries the schema, and the first 400
that names `response_format` switches the pool to the text variants for good.

Batch mode (`batch=True`) sends the requests missing from the cache through the OpenAI Batch API
instead (half price, 24 h window): write the JSONL (custom_id = cache key), upload it, create the
batch, poll it, collect the output and error files and join them on custom_id. The batch id is
kept in the cache while the batch runs, so a retried step resumes polling that batch instead of
paying for a second one.

Tokens are counted per client (`LLMClient.usage`) and priced from `LLMConfig.prices`.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import openai
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# USD per 1M tokens (prompt, completion), OpenAI list prices; override with LLMConfig.prices.
# A dated snapshot ("gpt-4o-2024-08-06") is priced by its longest matching prefix.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half the list price
STRUCTURED_OUTPUT_MODES = ("auto", "json", "text")
_BATCH_DONE = ("completed", "failed", "expired", "cancelled")


def endpoint_configured() -> bool:
    """True when an OpenAI-compatible endpoint is configured (OPENAI_BASE_URL or OPENAI_API_KEY set).

    Steps use it to choose between the LLM judge and the offline heuristic one.
    """
    return bool(os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY"))



def llm_step_config(step: str, model: str, *, base_url: str, concurrency: int, cache: str) -> "LLMConfig":
    """The LLMConfig of a pipeline step that uses an LLM, or a clear error when none is reachable."""
    if not (base_url or endpoint_configured()):
        raise RuntimeError(
            f"{step} model {model!r} needs an OpenAI-compatible endpoint: set OPENAI_API_KEY (and "
            f"OPENAI_BASE_URL or the pipeline's llm_base_url for a non-OpenAI server), in a cluster through "
            f"the selfguided-openai Secret; or use 'offline-heuristic' for a run without an API"
        )
    return LLMConfig(model=model, base_url=base_url or None, concurrency=concurrency, cache=cache or None)

@dataclass
class LLMConfig:
    """Everything the client layer needs to talk to an OpenAI-compatible endpoint."""

    model: str = "gpt-4o"
    """Chat model name as the endpoint knows it; part of every cache key."""
    base_url: str | None = None
    """Endpoint URL, e.g. http://vllm:8000/v1. None: OPENAI_BASE_URL, else the OpenAI API."""
    api_key: str | None = None
    """API key. None: OPENAI_API_KEY; a placeholder when only a base URL is set (vLLM needs none)."""
    concurrency: int = 16
    """Requests in flight at most."""
    max_attempts: int = 6
    """Attempts per request (the first one included) before it is marked failed."""
    timeout_s: float = 120.0
    """Seconds to wait for one answer before the attempt counts as timed out."""
    temperature: float = 0.0
    """Sampling temperature; 0 makes judgments as repeatable as the endpoint allows."""
    max_tokens: int = 1024
    """Completion token cap per answer."""
    structured_output: str = "auto"
    """'json': send the prompt's JSON schema as response_format; 'text': ask for the [[rating]]
    text format; 'auto': JSON, switching to text when the endpoint refuses response_format."""
    rpm_limit: float | None = None
    """Requests per minute to stay under. None: learn it from x-ratelimit-limit-requests."""
    backoff_base_s: float = 1.0
    """First backoff after a 5xx or timeout; doubles per attempt, with jitter."""
    backoff_max_s: float = 60.0
    """Longest single backoff or pool pause without a Retry-After header."""
    cache: str | None = None
    """Cache location: a directory, or s3://bucket/prefix (boto3; AWS_ENDPOINT_URL for MinIO).
    None: no cache, so no resume."""
    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    """USD per 1M (prompt, completion) tokens by model name or name prefix."""
    batch: bool = False
    """Send requests through the OpenAI Batch API (half price, results within 24 h)."""
    poll_interval_s: float = 60.0
    """Seconds between status polls of a running batch."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"LLMConfig.concurrency must be >= 1, got {self.concurrency}")
        if self.max_attempts < 1:
            raise ValueError(f"LLMConfig.max_attempts must be >= 1, got {self.max_attempts}")
        if self.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(
                f"LLMConfig.structured_output must be one of {', '.join(STRUCTURED_OUTPUT_MODES)}, "
                f"got {self.structured_output!r}"
            )
        if self.rpm_limit is not None and self.rpm_limit <= 0:
            raise ValueError(f"LLMConfig.rpm_limit must be > 0, got {self.rpm_limit}")

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def resolved_api_key(self) -> str:
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            return key
        if self.resolved_base_url():
            return "unused"  # self-hosted endpoints (vLLM, TGI) usually take no key
        raise openai.OpenAIError("no API key: set OPENAI_API_KEY (or OPENAI_BASE_URL for a self-hosted endpoint)")

    def price_per_token(self) -> tuple[float, float] | None:
        """(prompt, completion) USD per token for `model`, by exact name or longest prefix."""
        matches = [name for name in self.prices if self.model == name or self.model.startswith(name)]
        if not matches:
            return None
        prompt, completion = self.prices[max(matches, key=len)]
        return prompt / 1e6, completion / 1e6


# ---------------------------------------------------------------------------------------------
# Requests, results, usage


@dataclass
class LLMRequest:
    """One chat completion to make."""

    prompt: str
    """Prompt name and version, e.g. 'judge-single-v1'; part of the cache key."""
    messages: list[dict[str, str]]
    response_format: dict[str, Any] | None = None
    """OpenAI response_format (a json_schema) or None for free text."""
    text_fallback: LLMRequest | None = None
    """The same request asking for the text format, used when the endpoint refuses response_format."""


@dataclass
class LLMResult:
    """The answer to one request, or why there is none."""

    text: str | None = None
    error: str | None = None
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class UsageSummary:
    """What a step's LLM traffic did and cost; shown in the step's report and logged to MLflow."""

    step: str = "llm"
    """Step name, the middle part of the metric names: llm/<step>/<field>."""
    model: str = ""
    batch: bool = False
    records: int = 0
    """Records (scoring) or judgments (judging) the step asked for."""
    done: int = 0
    """Records with a parsed verdict."""
    failed: int = 0
    """Records without one; each says why in its `error` field."""
    cached: int = 0
    """Requests answered from the cache, not paid for."""
    requests_sent: int = 0
    """Chat requests sent to the endpoint (retries and re-asks included; batch lines in batch mode)."""
    retries: int = 0
    """Sent requests that were second or later attempts."""
    rate_limited: int = 0
    """429 answers received."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    """Price of the tokens paid for in this run (cached answers are free)."""
    parse_success_rate: float | None = None
    """Share of first answers whose verdict parsed (the re-asks rescue some of the rest)."""
    reasked: int = 0
    """Answers without a parsable verdict that were asked once more."""
    pair_consistency: float | None = None
    """Pairwise mode: share of pairs whose verdict did not change when the positions were swapped."""
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_metrics(self, step: str | None = None) -> dict[str, float]:
        """Numeric fields as MLflow metrics named llm/<step>/<field> (`step` defaults to self.step)."""
        names = (
            "records", "done", "failed", "cached", "requests_sent", "retries", "rate_limited",
            "prompt_tokens", "completion_tokens", "cost_usd", "parse_success_rate", "reasked",
            "pair_consistency", "elapsed_s",
        )
        values = self.to_dict()
        prefix = f"llm/{step or self.step}"
        return {f"{prefix}/{name}": float(values[name]) for name in names if values[name] is not None}

    def summary_line(self) -> str:
        return (
            f"{self.step}: done={self.done} failed={self.failed} cached={self.cached} "
            f"sent={self.requests_sent} retries={self.retries} rate_limited={self.rate_limited} "
            f"tokens={self.prompt_tokens}+{self.completion_tokens} cost=${self.cost_usd:.4f}"
        )

    def to_markdown(self) -> str:
        rate = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
        rows = [
            ("model", f"{self.model}{' (Batch API)' if self.batch else ''}"),
            ("records", self.records),
            ("done", self.done),
            ("failed", self.failed),
            ("answered from cache", self.cached),
            ("requests sent", self.requests_sent),
            ("retries", self.retries),
            ("rate limited (429)", self.rate_limited),
            ("prompt tokens", f"{self.prompt_tokens:,}"),
            ("completion tokens", f"{self.completion_tokens:,}"),
            ("cost (USD)", f"{self.cost_usd:.4f}"),
            ("parse success (first answer)", rate(self.parse_success_rate)),
            ("re-asked for the verdict", self.reasked),
        ]
        if self.pair_consistency is not None:
            rows.append(("pairwise consistency", rate(self.pair_consistency)))
        rows.append(("elapsed (s)", f"{self.elapsed_s:.1f}"))
        return "\n".join([f"| LLM {self.step} | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def cache_key(config: LLMConfig, request: LLMRequest) -> str:
    """sha256 over everything that decides the answer: model, prompt version, messages, sampling."""
    payload = {
        "model": config.model,
        "prompt": request.prompt,
        "messages": request.messages,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "response_format": request.response_format,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Cache backends: get / put / delete of small JSON objects by key


class DirCache:
    """One JSON file per key under `root/<first two hex digits>/<key>.json` (on a PVC in the pipeline).

    Written to a temporary file in the same directory and moved into place with os.replace, which
    is atomic, so a kill -9 mid-write leaves no torn entry.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.warning("%s: unreadable cache entry (%s); treating it as missing", path, exc)
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(value, fh, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Cache:
    """The same interface on S3 (or MinIO): one object per key under s3://bucket/prefix/.

    A PUT is atomic in S3, so there are no torn entries either. The boto3 client takes its
    endpoint and credentials from the usual AWS_* environment variables unless one is given.
    """

    def __init__(self, url: str, client: Any = None) -> None:
        match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
        if not match:
            raise ValueError(f"cache location {url!r} is not s3://bucket/prefix")
        self.bucket, prefix = match[1], match[2].strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.client = client

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(obj["Body"].read().decode("utf-8"))

    def put(self, key: str, value: dict[str, Any]) -> None:
        body = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body, ContentType="application/json")

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


def open_cache(location: str | None) -> DirCache | S3Cache | None:
    if not location:
        return None
    return S3Cache(location) if location.startswith("s3://") else DirCache(location)


# ---------------------------------------------------------------------------------------------
# Rate limits


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from retry-after-ms, or Retry-After as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def backoff(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter: half of base * 2^(attempt-1) for sure, the other half random."""
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class RateGovernor:
    """Pacing shared by every request of one client, so a rate limit slows the whole pool.

    - `wait_turn` holds a request while the pool is paused and spaces request starts `interval`
      seconds apart, so the pool runs at the endpoint's limit instead of bouncing off it.
    - `on_rate_limited` (a 429) pauses the pool for Retry-After, or for an exponential backoff
      when the answer carries none.
    - `observe` reads the limits every answer advertises: x-ratelimit-limit-requests (per minute)
      and x-ratelimit-limit-tokens divided by the tokens a request uses on average; the tighter
      one, or `rpm_limit` when tighter still, sets the interval. The x-ratelimit-remaining-*
      headers are not used: they describe the limit when that request was admitted, and the
      requests sent since have already changed it.
    """

    def __init__(self, rpm_limit: float | None, backoff_base_s: float = 1.0, backoff_max_s: float = 60.0) -> None:
        self.rpm_limit = rpm_limit
        self.interval = 60.0 / rpm_limit if rpm_limit else 0.0
        self.paused_until = 0.0
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._next_start = 0.0
        self._limited_streak = 0
        self._tokens_per_request: float | None = None

    async def wait_turn(self) -> None:
        while True:
            now = time.monotonic()
            start = max(self.paused_until, self._next_start)
            if start <= now:
                # Starts follow a grid, so wake-up lag does not erode the rate, but never come
                # closer than half an interval: no back-to-back pair into a tight limit.
                self._next_start = max(self._next_start + self.interval, now + self.interval / 2)
                return
            await asyncio.sleep(start - now)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def on_rate_limited(self, headers: Mapping[str, str]) -> float:
        """Pause the pool after a 429 (and learn the limits it advertises); returns the pause in seconds."""
        self._learn_limits(headers)
        self._limited_streak += 1
        wait = retry_after(headers)
        if wait is None:
            wait = backoff(self._limited_streak, self.backoff_base_s, self.backoff_max_s)
        self.pause(wait)
        return wait

    def observe(self, headers: Mapping[str, str], tokens_used: int) -> None:
        """Learn the pace from an answer's x-ratelimit-limit-* headers and its token count."""
        self._limited_streak = 0
        if tokens_used:
            previous = self._tokens_per_request
            self._tokens_per_request = tokens_used if previous is None else 0.9 * previous + 0.1 * tokens_used
        self._learn_limits(headers)

    def _learn_limits(self, headers: Mapping[str, str]) -> None:
        advertised = []
        requests_per_minute = _float(headers.get("x-ratelimit-limit-requests"))
        if requests_per_minute:
            advertised.append(60.0 / requests_per_minute)
        tokens_per_minute = _float(headers.get("x-ratelimit-limit-tokens"))
        if tokens_per_minute and self._tokens_per_request:
            advertised.append(60.0 * self._tokens_per_request / tokens_per_minute)
        if advertised:
            self.interval = max(*advertised, 60.0 / self.rpm_limit if self.rpm_limit else 0.0)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_message(exc: openai.APIStatusError) -> str:
    """The endpoint's own error message (the SDK's exc.message repeats the whole body)."""
    body = exc.body
    return str(body["message"]) if isinstance(body, dict) and body.get("message") else exc.message


def _refuses_structured_output(exc: openai.APIStatusError) -> bool:
    message = _error_message(exc)
    return exc.status_code in (400, 422) and (
        exc.param == "response_format" or "response_format" in message or "json_schema" in message
    )


# ---------------------------------------------------------------------------------------------
# The client


class LLMClient:
    """Runs lists of LLMRequests against one endpoint; counts everything in `self.usage`.

    Use one client per step: the usage adds up over its runs (a re-ask round is a second run),
    and the rate limits it learns carry over.
    """

    def __init__(self, config: LLMConfig, *, step: str = "llm") -> None:
        self.config = config
        self.cache = open_cache(config.cache)
        self.usage = UsageSummary(step=step, model=config.model, batch=config.batch)
        self.governor = RateGovernor(config.rpm_limit, config.backoff_base_s, config.backoff_max_s)
        self.structured = config.structured_output != "text"
        self._price = config.price_per_token()
        if self._price is None:
            log.warning("no price for model %r in LLMConfig.prices: its cost is reported as 0", config.model)

    def run(self, requests: list[LLMRequest], desc: str | None = None) -> list[LLMResult]:
        """Answer every request (in order); never raises for a failed request, see LLMResult.error.

        Synchronous (it runs its own event loop), so call it from plain code, not from a coroutine.
        """
        started = time.monotonic()
        runner = self._run_batch if self.config.batch else self._run_realtime
        results = asyncio.run(runner(requests, desc or f"{self.usage.step} ({self.config.model})"))
        self.usage.elapsed_s += time.monotonic() - started
        return results

    def _api(self, max_retries: int) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.config.resolved_base_url(),
            api_key=self.config.resolved_api_key(),
            timeout=self.config.timeout_s,
            max_retries=max_retries,
        )

    def _may_fall_back(self, request: LLMRequest) -> bool:
        return self.config.structured_output == "auto" and request.text_fallback is not None

    def as_sent(self, request: LLMRequest) -> LLMRequest:
        """The request as it will be sent: its text variant once structured output is off."""
        if request.response_format is not None and not self.structured and request.text_fallback is not None:
            return request.text_fallback
        return request

    def _bill(self, prompt_tokens: int, completion_tokens: int, discount: float = 1.0) -> None:
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        if self._price is not None:
            self.usage.cost_usd += discount * (prompt_tokens * self._price[0] + completion_tokens * self._price[1])

    async def _from_cache(self, request: LLMRequest) -> LLMResult | None:
        """A cached answer to the request, or to its text variant (what 'auto' may have used)."""
        if self.cache is None:
            return None
        for candidate in (request, request.text_fallback):
            if candidate is None:
                continue
            entry = await asyncio.to_thread(self.cache.get, cache_key(self.config, candidate))
            if entry is not None:
                self.usage.cached += 1
                return LLMResult(text=entry["text"], cached=True, prompt_tokens=entry["prompt_tokens"],
                                 completion_tokens=entry["completion_tokens"])
        return None

    async def _store(self, request: LLMRequest, result: LLMResult) -> None:
        if self.cache is None:
            return
        entry = {
            "model": self.config.model,
            "prompt": request.prompt,
            "text": result.text,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "created": time.time(),
        }
        await asyncio.to_thread(self.cache.put, cache_key(self.config, request), entry)

    # -- real-time mode --------------------------------------------------------------------

    async def _run_realtime(self, requests: list[LLMRequest], desc: str) -> list[LLMResult]:
        results: list[LLMResult] = [LLMResult(error="not run")] * len(requests)  # every slot is filled below
        slots = asyncio.Semaphore(self.config.concurrency)
        failed = 0
        with tqdm(total=len(requests), desc=desc, unit="req", disable=not self.config.progress) as bar:
            async with self._api(max_retries=0) as api:  # retries are ours, see _complete

                async def one(index: int, request: LLMRequest) -> None:
                    nonlocal failed
                    results[index] = await self._complete(api, slots, request)
                    failed += not results[index].ok
                    bar.set_postfix(cached=self.usage.cached, failed=failed, limited=self.usage.rate_limited,
                                    refresh=False)
                    bar.update(1)

                await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        return results

    async def _complete(self, api: openai.AsyncOpenAI, slots: asyncio.Semaphore, request: LLMRequest) -> LLMResult:
        hit = await self._from_cache(request)
        if hit is not None:
            return hit
        reason = "not attempted"
        attempt = 0
        while attempt < self.config.max_attempts:
            attempt += 1
            delay = 0.0
            async with slots:
                await self.governor.wait_turn()
                request = self.as_sent(request)  # decided late: another request may just have learnt
                self.usage.requests_sent += 1
                self.usage.retries += attempt > 1
                try:
                    return await self._send(api, request)
                except openai.RateLimitError as exc:
                    self.usage.rate_limited += 1
                    message = _error_message(exc)
                    if exc.code == "insufficient_quota":  # out of credit: waiting will not help
                        reason = f"429 insufficient_quota: {message}"
                        break
                    wait = self.governor.on_rate_limited(exc.response.headers)
                    reason = f"rate limited (429, pool paused {wait:.1f}s): {message}"
                except openai.APITimeoutError:
                    reason = f"no answer within {self.config.timeout_s:g}s (timeout)"
                    delay = backoff(attempt, self.config.backoff_base_s, self.config.backoff_max_s)
                except openai.APIConnectionError as exc:
                    cause = exc.__cause__ or exc
                    reason = f"connection error: {type(cause).__name__}: {cause}"
                    delay = backoff(attempt, self.config.backoff_base_s, self.config.backoff_max_s)
                except openai.APIStatusError as exc:
                    message = _error_message(exc)
                    if exc.status_code >= 500 or exc.status_code == 408:
                        reason = f"server error ({exc.status_code}): {message}"
                        delay = backoff(attempt, self.config.backoff_base_s, self.config.backoff_max_s)
                    elif self._may_fall_back(request) and _refuses_structured_output(exc):
                        if self.structured:
                            log.warning("endpoint refuses response_format (%s); asking for the text format", message)
                            self.structured = False
                        attempt -= 1  # the endpoint's capability, not this request's fault
                        continue
                    else:
                        reason = f"request rejected ({exc.status_code}): {message}"
                        break
            await asyncio.sleep(delay)
        return LLMResult(error=f"{reason} [after {attempt} attempt{'s' if attempt != 1 else ''}]")

    async def _send(self, api: openai.AsyncOpenAI, request: LLMRequest) -> LLMResult:
        extra = {"response_format": request.response_format} if request.response_format is not None else {}
        raw = await api.chat.completions.with_raw_response.create(
            model=self.config.model,
            messages=request.messages,
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            **extra,
        )
        completion = raw.parse()
        usage = completion.usage
        result = LLMResult(
            text=completion.choices[0].message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )
        self.governor.observe(raw.headers, result.prompt_tokens + result.completion_tokens)
        self._bill(result.prompt_tokens, result.completion_tokens)
        await self._store(request, result)
        return result

    # -- Batch API mode --------------------------------------------------------------------

    async def _run_batch(self, requests: list[LLMRequest], desc: str) -> list[LLMResult]:
        results: list[LLMResult | None] = list(await asyncio.gather(*(self._from_cache(r) for r in requests)))
        pending: dict[str, tuple[LLMRequest, list[int]]] = {}  # custom_id (= cache key) -> request, positions
        for index, request in enumerate(requests):
            if results[index] is None:
                request = self.as_sent(request)
                pending.setdefault(cache_key(self.config, request), (request, []))[1].append(index)
        if pending:
            async with self._api(max_retries=5) as api:  # batch management calls: the SDK's retries suffice
                answers = await self._batch_roundtrip(api, {k: r for k, (r, _) in pending.items()}, desc)
            for key, (_, indices) in pending.items():
                for index in indices:
                    results[index] = answers[key]
        return [r if r is not None else LLMResult(error="no result") for r in results]

    async def _batch_roundtrip(
        self, api: openai.AsyncOpenAI, requests: dict[str, LLMRequest], desc: str
    ) -> dict[str, LLMResult]:
        # The batch is named by the set of requests it answers: a retried step finds it again.
        state_key = "batch-" + hashlib.sha256("\n".join(sorted(requests)).encode()).hexdigest()
        state = await asyncio.to_thread(self.cache.get, state_key) if self.cache is not None else None
        if state is None:
            lines = [
                json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                            "body": self._batch_body(request)}, ensure_ascii=False)
                for key, request in requests.items()
            ]
            upload = await api.files.create(
                file=("selfguided-batch.jsonl", ("\n".join(lines) + "\n").encode("utf-8"), "application/jsonl"),
                purpose="batch",
            )
            batch = await api.batches.create(
                input_file_id=upload.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"selfguided_step": self.usage.step},
            )
            state = {"batch_id": batch.id, "input_file_id": upload.id, "created": time.time()}
            if self.cache is not None:
                await asyncio.to_thread(self.cache.put, state_key, state)
            log.info("created batch %s with %d requests", batch.id, len(requests))
        else:
            log.info("resuming batch %s (%d requests)", state["batch_id"], len(requests))
        self.usage.requests_sent += len(requests)

        batch = await api.batches.retrieve(state["batch_id"])
        with tqdm(total=len(requests), desc=f"{desc} batch {batch.id}", unit="req",
                  disable=not self.config.progress) as bar:
            while batch.status not in _BATCH_DONE:
                await asyncio.sleep(self.config.poll_interval_s)
                batch = await api.batches.retrieve(batch.id)
                counts = batch.request_counts
                if counts is not None:
                    bar.n = counts.completed + counts.failed
                    bar.set_postfix(status=batch.status, failed=counts.failed, refresh=False)
                    bar.refresh()

        answers: dict[str, LLMResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await api.files.content(file_id)
            for line in content.text.splitlines():
                if line.strip():
                    row = json.loads(line)
                    answers[row["custom_id"]] = await self._batch_answer(requests[row["custom_id"]], row)
        reason = f"batch {batch.id} ended '{batch.status}' without an answer for this request"
        if batch.errors and batch.errors.data:
            reason += ": " + "; ".join(e.message or e.code or "" for e in batch.errors.data)
        for key in requests:
            answers.setdefault(key, LLMResult(error=reason))
        if self.cache is not None:  # collected: a rerun must send a new batch for what failed
            await asyncio.to_thread(self.cache.delete, state_key)
        return answers

    def _batch_body(self, request: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": request.messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if request.response_format is not None:
            body["response_format"] = request.response_format
        return body

    async def _batch_answer(self, request: LLMRequest, row: dict[str, Any]) -> LLMResult:
        """One line of a batch output or error file as an LLMResult (cached when it is an answer)."""
        response = row.get("response") or {}
        body = response.get("body") or {}
        if response.get("status_code") != 200:
            error = row.get("error") or body.get("error") or {}
            return LLMResult(error=f"batch request failed ({response.get('status_code')}): "
                                   f"{error.get('message') or error.get('code') or 'no reason given'}")
        usage = body.get("usage") or {}
        result = LLMResult(
            text=body["choices"][0]["message"].get("content") or "",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
        )
        self._bill(result.prompt_tokens, result.completion_tokens, discount=BATCH_DISCOUNT)
        await self._store(request, result)
        return result
