"""One client layer for all paid LLM traffic (score and judge), on the official `openai` SDK.

How one request travels through `LLMClient.run`:

1. Input check. Its prompt is sized with `estimate_tokens` (no tokenizer, no network; see there);
   above `max_input_tokens` it fails at once with "input too long: ~N tokens > max_input_tokens M"
   and nothing is sent, so an oversized seed record or model answer costs no paid request.
2. Cache. Its key is the sha256 of (model, prompt name-version, messages, sampling parameters,
   response format). A hit in the cache (a local directory, or `s3://bucket/prefix` so a KFP retry
   on another pod finds it) is answered at no cost.
3. Slot and turn. It waits for a slot of the `AdaptiveConcurrency` pool: at most `concurrency`
   requests, fewer while the endpoint refuses more (see below). Then it waits for its turn from
   the pool-wide `RateGovernor`: request starts are spaced to the tightest limit known
   (`rpm_limit`, or the x-ratelimit-limit-requests / -tokens the endpoint advertises), and every
   request waits while the pool is paused.
4. Errors. A 429 is not a failure of the request, and it does not use up `max_attempts`:
   - a 429 whose x-ratelimit-remaining-requests (or -tokens) says the quota is spent is a rate
     limit: the whole pool pauses for its Retry-After (or retry-after-ms), because every other
     request would hit the same limit;
   - any other 429 (no such headers: a gateway or server limiting requests in flight) shrinks the
     pool's concurrency, and this request alone waits its Retry-After before it queues again
     (ahead of requests not yet sent);
   - either way the request is retried for as long as `rate_limit_budget_s` allows, counted from
     its first 429; 429 insufficient_quota (out of credit) fails at once.
   5xx, 408, 409, timeouts and connection errors back off this request only, exponentially with
   jitter, and count as attempts; other 4xx fail at once (retrying cannot help). The endpoint's
   `x-should-retry` header overrides that: "false" fails the request at once (a 429 included),
   "true" retries a status that would otherwise fail. After `max_attempts` real errors the
   request fails with the last reason: it never gets a made-up answer.
5. Storage. An answer is written to the cache the moment it arrives (atomically), so a run killed
   with kill -9 loses only the requests in flight and a rerun pays only for what is missing.
   Failures are not cached: a rerun retries them.

Adaptive concurrency (`AdaptiveConcurrency`): the limit starts at `concurrency` and is never
above it. A concurrency 429 is a congestion event. The requests sent before the refused one that
are still out are what the endpoint took; the limit drops to that number, but at most by half per
event, so one refusal out of order in a burst cannot collapse the pool. The other 429s of requests
sent before that drop belong to the same event. Each success of a request sent while every slot
was taken adds 1/limit (about one request per round trip) up to the most the endpoint has been
seen to take. Beyond that the pool probes, and each refused probe halves how fast it probes, so a
fixed limit costs a handful of 429s per run. This is TCP-style additive increase, multiplicative
decrease, with the measured refusal point as the target. The progress bar shows the current
limit (`conc=8/32`), and `UsageSummary.concurrency` the last one.

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
from collections import deque
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
DEFAULT_MAX_INPUT_TOKENS = 8000
"""Default prompt budget per request, in `estimate_tokens` tokens. The score prompts of the bundled
seed records estimate at 650-1,100, and a judge prompt holds a question or two and one or two
answers cut at the answering model's max_tokens; GPT-4-class models take 128k. It is there to
catch data that is not what it should be (a whole book in one output) before it is paid for."""
DEFAULT_RATE_LIMIT_BUDGET_S = 600.0
"""Default time a request may keep being refused with 429 before it fails (10 minutes: OpenAI's
per-minute limits and a busy gateway clear well within it, a daily limit does not)."""
ASCII_CHARS_PER_TOKEN = 3
"""`estimate_tokens`: ASCII characters per token (English averages about 4; 3 keeps it an upper bound)."""
_MESSAGE_OVERHEAD_TOKENS = 4  # role and separators of one chat message
_REPLY_PRIMING_TOKENS = 3  # what the chat format adds before the answer


def estimate_tokens(text: str) -> int:
    """A conservative token count of `text`, without a tokenizer or a network call.

    Every non-ASCII character (a Hangul syllable, a Hanja, an emoji) counts as one token, and
    every ASCII_CHARS_PER_TOKEN ASCII characters (letters, digits, spaces, punctuation) as one more.
    It is meant to err on the high side for Korean and English prose (byte-pair tokenizers such
    as GPT-4o's merge common Hangul syllables and English words), but it is no tokenizer: a size
    guard, not a bill.
    """
    if not text:
        return 0
    ascii_chars = len(text.encode("ascii", "ignore"))
    return len(text) - ascii_chars + -(-ascii_chars // ASCII_CHARS_PER_TOKEN)


def estimate_request_tokens(request: LLMRequest) -> int:
    """`estimate_tokens` of a whole request: every message, the JSON schema, the chat format's
    overhead; the larger of the request and its text variant (either may be the one sent)."""
    estimate = _REPLY_PRIMING_TOKENS
    for message in request.messages:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        estimate += _MESSAGE_OVERHEAD_TOKENS + estimate_tokens(text)
    if request.response_format is not None:
        estimate += estimate_tokens(json.dumps(request.response_format, ensure_ascii=False))
    if request.text_fallback is not None:
        estimate = max(estimate, estimate_request_tokens(request.text_fallback))
    return estimate


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


OWN_ENDPOINT_KEY_ENV = "SELFGUIDED_ENDPOINT_API_KEY"


def model_endpoint(entry: str, default_base_url: str) -> tuple[str, str]:
    """(model, base_url) of a model entry: `gpt-4o-mini` (on `default_base_url`), or
    `name@http://host:port/v1` for a model on an OpenAI-compatible endpoint of its own (a served
    champion, a vLLM server)."""
    model, sep, url = entry.partition("@")
    if sep and url.startswith(("http://", "https://")):
        return model, url
    return entry, default_base_url


def endpoint_config(step: str, entry: str, *, base_url: str, concurrency: int, cache: str) -> "LLMConfig":
    """The LLMConfig of a model entry (see `model_endpoint`). A model on an endpoint of its own never
    gets OPENAI_API_KEY (that key is for the run's LLM endpoint): it gets SELFGUIDED_ENDPOINT_API_KEY,
    or a placeholder, as vLLM and `selfguided serve` accept any key."""
    model, url = model_endpoint(entry, base_url)
    if url != base_url:
        return LLMConfig(model=model, base_url=url, concurrency=concurrency, cache=cache or None,
                         api_key=os.environ.get(OWN_ENDPOINT_KEY_ENV) or "unused")
    return llm_step_config(step, model, base_url=base_url, concurrency=concurrency, cache=cache)


def check_endpoint(config: "LLMConfig", timeout_s: float = 10.0) -> None:
    """Prove the endpoint answers and accepts the key, for free: one GET /models.

    Raises RuntimeError with one line naming the endpoint and the cause. A server without the
    /models route (404, some OpenAI-compatible gateways) counts as reachable.
    """
    where = config.resolved_base_url() or "https://api.openai.com/v1"
    client = openai.OpenAI(base_url=config.resolved_base_url(), api_key=config.resolved_api_key(),
                           timeout=timeout_s, max_retries=0)
    try:
        client.models.list()
    except openai.AuthenticationError:
        raise RuntimeError(f"LLM endpoint {where} refused the API key (401): check OPENAI_API_KEY "
                           "(in a cluster: Secret selfguided-openai)") from None
    except openai.PermissionDeniedError:
        raise RuntimeError(f"LLM endpoint {where} denied access (403) to this API key") from None
    except openai.NotFoundError:
        return
    except openai.APIConnectionError as exc:
        raise RuntimeError(f"LLM endpoint {where} is unreachable ({type(exc).__name__}: {exc})") from None
    except openai.APIStatusError as exc:
        if exc.status_code >= 500 or exc.status_code == 429:
            return  # up, busy or flaky: the client layer retries those
        raise RuntimeError(f"LLM endpoint {where} answered {exc.status_code}: {exc.message}") from None

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
    """Attempts per request (the first one included) that end in a real error (5xx, timeout,
    connection error) before it is marked failed. 429s do not count: see rate_limit_budget_s."""
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
    rate_limit_budget_s: float = DEFAULT_RATE_LIMIT_BUDGET_S
    """Seconds a request may keep being refused with 429, from its first 429, before it is marked
    failed; 429s are retried within it and do not use up max_attempts."""
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS
    """Largest prompt a request may have, in `estimate_tokens` tokens; a larger one fails at once
    ("input too long") and is never sent."""

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
        if self.rate_limit_budget_s < 0:
            raise ValueError(f"LLMConfig.rate_limit_budget_s must be >= 0, got {self.rate_limit_budget_s}")
        if self.max_input_tokens < 1:
            raise ValueError(f"LLMConfig.max_input_tokens must be >= 1, got {self.max_input_tokens}")

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
    concurrency: int = 0
    """Requests in flight the pool allowed at the end: LLMConfig.concurrency unless the endpoint
    refused that many (then what it took); 0 when nothing was sent in real time."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_metrics(self, step: str | None = None) -> dict[str, float]:
        """Numeric fields as MLflow metrics named llm/<step>/<field> (`step` defaults to self.step)."""
        names = (
            "records", "done", "failed", "cached", "requests_sent", "retries", "rate_limited",
            "prompt_tokens", "completion_tokens", "cost_usd", "parse_success_rate", "reasked",
            "pair_consistency", "elapsed_s", "concurrency",
        )
        values = self.to_dict()
        prefix = f"llm/{step or self.step}"
        return {f"{prefix}/{name}": float(values[name]) for name in names
                if values[name] is not None and (name != "concurrency" or values[name])}

    def summary_line(self) -> str:
        return (
            f"{self.step}: done={self.done} failed={self.failed} cached={self.cached} "
            f"sent={self.requests_sent} retries={self.retries} rate_limited={self.rate_limited} "
            f"tokens={self.prompt_tokens}+{self.completion_tokens} cost=${self.cost_usd:.4f}"
            + (f" concurrency={self.concurrency}" if self.concurrency else "")
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
        if self.concurrency:
            rows.append(("concurrency at the end", self.concurrency))
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

    A PUT is atomic in S3, so there are no torn entries either. The client is data.s3_client's
    (the configured endpoint, credentials from the usual AWS_* variables) unless one is given.
    """

    def __init__(self, url: str, client: Any = None) -> None:
        match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
        if not match:
            raise ValueError(f"cache location {url!r} is not s3://bucket/prefix")
        self.bucket, prefix = match[1], match[2].strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        if client is None:
            from selfguided.components.data import s3_client

            client = s3_client()
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


def quota_exhausted(headers: Mapping[str, str], tokens_needed: int = 0) -> bool:
    """True when a 429's x-ratelimit-remaining-* headers say the request or token quota is spent
    (a rate limit: the whole pool must wait); False for a 429 without them (a concurrency limit)."""
    requests_left = _float(headers.get("x-ratelimit-remaining-requests"))
    tokens_left = _float(headers.get("x-ratelimit-remaining-tokens"))
    return (requests_left is not None and requests_left < 1) or (
        tokens_left is not None and tokens_left < max(1, tokens_needed)
    )


@dataclass
class Ticket:
    """What `AdaptiveConcurrency` needs to know about one request when its answer comes back."""

    seq: int
    """Order in which the pool's requests went on the wire."""
    on_wire: int
    """Requests of the pool on the wire when it went out, itself included."""
    full: bool
    """Every slot was taken when it went out (so its fate says something about the limit)."""
    epoch: int
    """The pool's epoch when it went out (the number of congestion events before it)."""


class AdaptiveConcurrency:
    """The pool's slots: at most `limit` requests at a time, where `limit` follows the endpoint.

    It starts at `maximum` (LLMConfig.concurrency) and never goes above it or below 1:
    - `refused` (a 429 that is not a spent quota) measures what the endpoint took: the requests
      sent before the refused one that are still out (they got in; the refused ones among them
      have come back by then). From a request sent in the current epoch it is a congestion event:
      the epoch advances and the limit drops to that count, but at most by half, so that one
      refusal out of order cannot collapse the pool. A refusal of a request sent before the drop
      belongs to that event: it lowers the limit to its count too, but not below the event's half.
    - `succeeded` for a request sent in the current epoch with every slot taken adds 1/limit
      (about one slot per round trip) up to `ceiling`, the most requests the endpoint has been seen
      to take at once. Beyond it the pool probes: each probe the endpoint refuses (it took no more
      than `ceiling` again) halves the growth above the ceiling, down to 1/(limit * MAX_PROBE_SLOWDOWN),
      and a probe it takes (a success with more on the wire than `ceiling`) restores full speed. So
      a fixed limit costs a handful of 429s per run, and a limit that grows is found again.

    Slots are handed out first come, first served; `acquire(first=True)` (a request retried after
    a 429) goes to the front of the queue, so that its rate-limit budget is spent waiting for the
    endpoint, not behind requests that have not been sent yet.
    """

    MAX_PROBE_SLOWDOWN = 32.0

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.ceiling: int | None = None
        self.epoch = 0
        self.in_use = 0
        self._wire: set[int] = set()
        self._seq = 0
        self._floor = 1.0
        self._probe_slowdown = 1.0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def current(self) -> int:
        """Slots available now: the integer part of `limit`."""
        return max(1, min(self.maximum, int(self.limit)))

    @property
    def on_wire(self) -> int:
        return len(self._wire)

    async def acquire(self, first: bool = False) -> None:
        if self.in_use < self.current and not self._waiters:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        (self._waiters.appendleft if first else self._waiters.append)(waiter)
        try:
            await waiter  # `_wake` takes the slot on our behalf before it resolves the future
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.current:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)

    def sent(self) -> Ticket:
        """Call as a request goes on the wire (holding a slot); pass the ticket to `returned`."""
        self._seq += 1
        self._wire.add(self._seq)
        return Ticket(seq=self._seq, on_wire=len(self._wire), full=self.in_use >= self.current, epoch=self.epoch)

    def returned(self, ticket: Ticket) -> None:
        self._wire.discard(ticket.seq)

    def refused(self, ticket: Ticket) -> None:
        """The endpoint refused a request for concurrency (a 429 without a spent quota); call after `returned`."""
        took = sum(1 for seq in self._wire if seq < ticket.seq)
        if ticket.epoch == self.epoch:
            self.epoch += 1
            self._floor = max(1.0, self.limit / 2)
            if self.ceiling is not None and took >= self.ceiling:  # a probe beyond the ceiling, refused
                self._probe_slowdown = min(self.MAX_PROBE_SLOWDOWN, self._probe_slowdown * 2)
        self.limit = max(self._floor, min(self.limit, float(took)))
        self.ceiling = max(1, took)

    def succeeded(self, ticket: Ticket) -> None:
        if ticket.epoch != self.epoch or not ticket.full or self.limit >= self.maximum:
            return  # sent under an older limit, or with slots to spare: no news about the endpoint
        if self.ceiling is not None and ticket.on_wire > self.ceiling:  # the endpoint took more than before
            self.ceiling = ticket.on_wire
            self._probe_slowdown = 1.0
        step = 1.0 / self.limit
        if self.ceiling is not None and self.limit >= self.ceiling:
            step /= self._probe_slowdown
        before = self.current
        self.limit = min(float(self.maximum), self.limit + step)
        if self.current > before:
            self._wake()


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_message(exc: openai.APIStatusError) -> str:
    """The endpoint's own error message (the SDK's exc.message repeats the whole body)."""
    body = exc.body
    return str(body["message"]) if isinstance(body, dict) and body.get("message") else exc.message


# What reading a malformed completion raises (no choices, a body that is not a completion); a
# failure to store an answer in the cache (OSError, S3 errors) still stops the run.
_MALFORMED_ANSWER = (IndexError, KeyError, TypeError, AttributeError, ValueError)


async def _done(result: LLMResult) -> LLMResult:
    return result


def _describe_status(status: int) -> str:
    if status == 429:
        return "rate limited (429)"
    if status >= 500:
        return f"server error ({status})"
    if status == 408:
        return "request timeout (408)"
    return f"request rejected ({status})"


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
        self.pool = AdaptiveConcurrency(config.concurrency)
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
        failed = 0
        pool = self.pool
        with tqdm(total=len(requests), desc=desc, unit="req", disable=not self.config.progress) as bar:
            async with self._api(max_retries=0) as api:  # retries are ours, see _complete

                async def one(index: int, request: LLMRequest) -> None:
                    nonlocal failed
                    results[index] = await self._complete(api, request)
                    failed += not results[index].ok
                    bar.set_postfix(conc=f"{pool.current}/{pool.maximum}", cached=self.usage.cached, failed=failed,
                                    limited=self.usage.rate_limited, refresh=False)
                    bar.update(1)

                await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        if self.usage.requests_sent:
            self.usage.concurrency = pool.current
            if pool.current < pool.maximum:
                log.info("%s: the endpoint refused more than about %d concurrent requests; the pool runs at %d of %d",
                         self.usage.step, pool.ceiling or pool.current, pool.current, pool.maximum)
        return results

    def _too_long(self, request: LLMRequest, tokens: int | None = None) -> LLMResult | None:
        """The failure of a request whose prompt is over max_input_tokens (it is never sent), or None."""
        tokens = estimate_request_tokens(request) if tokens is None else tokens
        if tokens <= self.config.max_input_tokens:
            return None
        return LLMResult(error=f"input too long: ~{tokens:,} tokens > max_input_tokens "
                               f"{self.config.max_input_tokens:,} (estimated; nothing was sent)")

    async def _complete(self, api: openai.AsyncOpenAI, request: LLMRequest) -> LLMResult:
        tokens = estimate_request_tokens(request)
        refused = self._too_long(request, tokens)
        if refused is not None:
            return refused
        hit = await self._from_cache(request)
        if hit is not None:
            return hit
        reason = "not attempted"
        attempts = 0  # sends that ended in a real error (5xx, timeout, ...): at most max_attempts
        limited = 0  # sends refused with 429: retried within rate_limit_budget_s
        first_limited_at: float | None = None
        sends = 0
        while True:
            delay = 0.0
            await self.pool.acquire(first=sends > 0)
            try:
                await self.governor.wait_turn()
                sent = self.as_sent(request)  # decided late: another request may just have learnt
                self.usage.requests_sent += 1
                self.usage.retries += sends > 0
                sends += 1
                ticket = self.pool.sent()
                try:
                    result = await self._send(api, sent)
                except (openai.OpenAIError, *_MALFORMED_ANSWER) as exc:  # sorted out below
                    error = exc
                else:
                    self.pool.succeeded(ticket)
                    return result
                finally:
                    self.pool.returned(ticket)
            finally:
                self.pool.release()

            if isinstance(error, openai.APIStatusError) and error.status_code == 429:
                self.usage.rate_limited += 1
            kind, reason = self._classify(error, sent)
            if kind == "fallback":
                if self.structured:
                    log.warning("endpoint refuses response_format (%s); asking for the text format", reason)
                    self.structured = False
                continue  # the endpoint's capability, not this request's fault
            if kind == "fatal":
                break
            if kind == "limited":
                assert isinstance(error, openai.APIStatusError)
                limited += 1
                now = time.monotonic()
                first_limited_at = first_limited_at or now
                headers = error.response.headers
                if quota_exhausted(headers, tokens + self.config.max_tokens):
                    wait = self.governor.on_rate_limited(headers)  # the whole pool waits, this request with it
                    reason = f"rate limited (429, pool paused {wait:.1f}s): {reason}"
                else:
                    self.pool.refused(ticket)
                    wait = retry_after(headers)
                    if wait is None:
                        wait = backoff(limited, self.config.backoff_base_s, self.config.backoff_max_s)
                    delay = wait
                    reason = (f"rate limited (429, {ticket.on_wire} requests in flight, concurrency now "
                              f"{self.pool.current}): {reason}")
                spent = now - first_limited_at
                if spent + wait > self.config.rate_limit_budget_s:
                    reason += (f"; still refused after {spent:.0f}s, and waiting {wait:.1f}s more would pass "
                               f"rate_limit_budget_s={self.config.rate_limit_budget_s:g}")
                    break
            else:  # "retry": a real error
                attempts += 1
                if attempts >= self.config.max_attempts:
                    break
                delay = backoff(attempts, self.config.backoff_base_s, self.config.backoff_max_s)
            await asyncio.sleep(delay)
        tally = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        if limited:
            tally += f" and {limited} rate-limited request{'s' if limited != 1 else ''}"
        return LLMResult(error=f"{reason} [{tally}]")

    def _classify(self, exc: BaseException, request: LLMRequest) -> tuple[str, str]:
        """(kind, reason) of a failed send. kind: "limited" (a 429 to wait out), "retry" (a real
        error worth another attempt), "fallback" (the endpoint refuses response_format), "fatal"."""
        if isinstance(exc, openai.APITimeoutError):
            return "retry", f"no answer within {self.config.timeout_s:g}s (timeout)"
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return "retry", f"connection error: {type(cause).__name__}: {cause}"
        if not isinstance(exc, openai.APIStatusError):
            return "fatal", f"unusable answer ({type(exc).__name__}): {exc}"
        message = _error_message(exc)
        should_retry = exc.response.headers.get("x-should-retry", "").strip().lower()
        status = exc.status_code
        if status == 429 and exc.code == "insufficient_quota":  # out of credit: waiting will not help
            return "fatal", f"429 insufficient_quota: {message}"
        if should_retry == "false":
            return "fatal", f"{_describe_status(status)}: {message} (the endpoint says x-should-retry: false)"
        if status == 429:
            return "limited", message
        if self._may_fall_back(request) and _refuses_structured_output(exc):
            return "fallback", message
        if status >= 500 or status in (408, 409) or should_retry == "true":
            return "retry", f"{_describe_status(status)}: {message}"
        return "fatal", f"request rejected ({status}): {message}"

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
        too_long = [self._too_long(r) for r in requests]
        results: list[LLMResult | None] = list(await asyncio.gather(
            *(self._from_cache(r) if refused is None else _done(refused) for r, refused in zip(requests, too_long))))
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
