"""What travels through the client layer: a request (`LLMRequest`), its answer (`LLMResult`), a
step's usage and cost (`UsageSummary`), the size of a prompt (`estimate_tokens`) and the cache key
of a request (`cache_key`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfguided.components.llm.config import LLMConfig

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
    repeat: int = 0
    """Which asking of the same request this is (repeated judging, `--judge-repeats`): part of the
    cache key when above 0, so every repeat is a real call, and a rerun finds each one again."""

    def repeated(self, repeat: int) -> LLMRequest:
        """The same request as its `repeat`-th asking (its text variant too)."""
        fallback = self.text_fallback.repeated(repeat) if self.text_fallback is not None else None
        return LLMRequest(self.prompt, self.messages, self.response_format, fallback, repeat)


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
    if request.repeat:  # absent for the first asking: keys of runs without repeats stay as they were
        payload["repeat"] = request.repeat
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

