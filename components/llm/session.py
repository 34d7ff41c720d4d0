"""What an LLM client holds whichever way it sends, in real time (client.py) or through the Batch
API (batch.py): the endpoint's config, the answer cache, the usage and its bill, the request as it
is sent (its text variant once structured output is off), and the check that refuses a prompt over
`max_input_tokens` before anything is sent."""

from __future__ import annotations

import asyncio
import logging
import time

import openai

from selfguided.components.llm.cache import open_cache
from selfguided.components.llm.config import LLMConfig
from selfguided.components.llm.request import LLMRequest, LLMResult, UsageSummary, cache_key, estimate_request_tokens

log = logging.getLogger(__name__)


class LLMSession:
    """One endpoint's config, cache and usage; `LLMClient` sends through it."""

    def __init__(self, config: LLMConfig, *, step: str = "llm") -> None:
        self.config = config
        self.cache = open_cache(config.cache)
        self.usage = UsageSummary(step=step, model=config.model, batch=config.batch)
        self.structured = config.structured_output != "text"
        self._price = config.price_per_token()
        if self._price is None:
            log.warning("no price for model %r in LLMConfig.prices: its cost is reported as 0", config.model)

    def api(self, max_retries: int) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.config.resolved_base_url(),
            api_key=self.config.resolved_api_key(),
            timeout=self.config.timeout_s,
            max_retries=max_retries,
        )

    def as_sent(self, request: LLMRequest) -> LLMRequest:
        """The request as it will be sent: its text variant once structured output is off."""
        if request.response_format is not None and not self.structured and request.text_fallback is not None:
            return request.text_fallback
        return request

    def bill(self, prompt_tokens: int, completion_tokens: int, discount: float = 1.0) -> None:
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        if self._price is not None:
            self.usage.cost_usd += discount * (prompt_tokens * self._price[0] + completion_tokens * self._price[1])

    async def from_cache(self, request: LLMRequest) -> LLMResult | None:
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

    async def store(self, request: LLMRequest, result: LLMResult) -> None:
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

    def too_long(self, request: LLMRequest, tokens: int | None = None) -> LLMResult | None:
        """The failure of a request whose prompt is over max_input_tokens (it is never sent), or None."""
        tokens = estimate_request_tokens(request) if tokens is None else tokens
        if tokens <= self.config.max_input_tokens:
            return None
        return LLMResult(error=f"input too long: ~{tokens:,} tokens > max_input_tokens "
                               f"{self.config.max_input_tokens:,} (estimated; nothing was sent)")
