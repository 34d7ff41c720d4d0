"""One client layer for all paid LLM traffic (score, judge, teacher answers), on the official `openai` SDK.

The layer: config.py (LLMConfig, endpoints, prices), request.py (LLMRequest, LLMResult, UsageSummary,
token estimate, cache key), cache.py (directory and S3 caches), limits.py (RateGovernor,
AdaptiveConcurrency), session.py (what both modes share: config, cache, usage and bill, the size
check), batch.py (the Batch API) and this module (LLMClient, real-time mode, which hands batch
runs to batch.py).

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

Batch mode (`batch=True`, batch.py) sends the requests missing from the cache through the OpenAI Batch API
instead (half price, 24 h window): write the JSONL (custom_id = cache key), upload it, create the
batch, poll it, collect the output and error files and join them on custom_id. The batch id is
kept in the cache while the batch runs, so a retried step resumes polling that batch instead of
paying for a second one.

Tokens are counted per client (`LLMClient.usage`) and priced from `LLMConfig.prices`.
"""

from __future__ import annotations

import asyncio
import logging
import time

import openai
from tqdm.auto import tqdm

from selfguided.components.llm.batch import run_batch
from selfguided.components.llm.config import LLMConfig
from selfguided.components.llm.limits import AdaptiveConcurrency, RateGovernor, quota_exhausted, retry_after, backoff
from selfguided.components.llm.request import LLMRequest, LLMResult, estimate_request_tokens
from selfguided.components.llm.session import LLMSession

log = logging.getLogger(__name__)


def _error_message(exc: openai.APIStatusError) -> str:
    """The endpoint's own error message (the SDK's exc.message repeats the whole body)."""
    body = exc.body
    return str(body["message"]) if isinstance(body, dict) and body.get("message") else exc.message


# What reading a malformed completion raises (no choices, a body that is not a completion); a
# failure to store an answer in the cache (OSError, S3 errors) still stops the run.
_MALFORMED_ANSWER = (IndexError, KeyError, TypeError, AttributeError, ValueError)


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


class LLMClient(LLMSession):
    """Runs lists of LLMRequests against one endpoint; counts everything in `self.usage`.

    Use one client per step: the usage adds up over its runs (a re-ask round is a second run),
    and the rate limits it learns carry over.
    """

    def __init__(self, config: LLMConfig, *, step: str = "llm") -> None:
        super().__init__(config, step=step)
        self.governor = RateGovernor(config.rpm_limit, config.backoff_base_s, config.backoff_max_s)
        self.pool = AdaptiveConcurrency(config.concurrency)

    def run(self, requests: list[LLMRequest], desc: str | None = None) -> list[LLMResult]:
        """Answer every request (in order); never raises for a failed request, see LLMResult.error.

        Synchronous (it runs its own event loop), so call it from plain code, not from a coroutine.
        """
        started = time.monotonic()
        desc = desc or f"{self.usage.step} ({self.config.model})"
        if self.config.batch:
            results = asyncio.run(run_batch(self, requests, desc))
        else:
            results = asyncio.run(self._run_realtime(requests, desc))
        self.usage.elapsed_s += time.monotonic() - started
        return results

    def _may_fall_back(self, request: LLMRequest) -> bool:
        return self.config.structured_output == "auto" and request.text_fallback is not None

    # -- real-time mode --------------------------------------------------------------------

    async def _run_realtime(self, requests: list[LLMRequest], desc: str) -> list[LLMResult]:
        results: list[LLMResult] = [LLMResult(error="not run")] * len(requests)  # every slot is filled below
        failed = 0
        pool = self.pool
        with tqdm(total=len(requests), desc=desc, unit="req", disable=not self.config.progress) as bar:
            async with self.api(max_retries=0) as api:  # retries are ours, see _complete

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

    async def _complete(self, api: openai.AsyncOpenAI, request: LLMRequest) -> LLMResult:
        tokens = estimate_request_tokens(request)
        refused = self.too_long(request, tokens)
        if refused is not None:
            return refused
        hit = await self.from_cache(request)
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
        self.bill(result.prompt_tokens, result.completion_tokens)
        await self.store(request, result)
        return result
