"""Endpoint configuration of the client layer: `LLMConfig` (every field documented, with a default),
the price table, and which endpoint and key a step or a model entry (`name` or `name@url`) uses.

No network and no `openai` import here, except in `check_endpoint` (one GET /models) and in the
error `resolved_api_key` raises.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

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
# Where DEFAULT_PRICES come from and when they were read (gpt-4o 2.50/10.00, gpt-4o-mini 0.15/0.60 as
# listed there, read through a public copy of the page dated 2026-11-05): a user must check them.
PRICES_SOURCE = "https://developers.openai.com/api/docs/pricing"
PRICES_AS_OF = "2026-11-05"
BATCH_DISCOUNT = 0.5  # the Batch API bills half the list price
STRUCTURED_OUTPUT_MODES = ("auto", "json", "text")
DEFAULT_MAX_INPUT_TOKENS = 8000
"""Default prompt budget per request, in `estimate_tokens` tokens. The score prompts of the bundled
seed records estimate at 650-1,100, and a judge prompt holds a question or two and one or two
answers cut at the answering model's max_tokens; GPT-4-class models take 128k. It is there to
catch data that is not what it should be (a whole book in one output) before it is paid for."""
DEFAULT_RATE_LIMIT_BUDGET_S = 600.0
"""Default time a request may keep being refused with 429 before it fails (10 minutes: OpenAI's
per-minute limits and a busy gateway clear well within it, a daily limit does not)."""


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


OWN_ENDPOINT_KEY_ENV_PREFIX = "SELFGUIDED_JUDGE_KEY_"
OWN_ENDPOINT_KEY_ENV = "SELFGUIDED_ENDPOINT_API_KEY"
"""One key for every model on an endpoint of its own that has no key by name (older runs' setting)."""
OWN_ENDPOINT_KEYS_SECRET_NAME = "selfguided-judge-keys"
OWN_ENDPOINT_KEYS_MOUNT_PATH = "/var/run/secrets/selfguided-judges"
OWN_ENDPOINT_KEYS_DIR = os.environ.get("SELFGUIDED_JUDGE_KEYS_DIR", OWN_ENDPOINT_KEYS_MOUNT_PATH)
"""Where the Secret `selfguided-judge-keys` is mounted in a cluster: one file per model on an
endpoint of its own (a juror or a teacher), named by `own_endpoint_key_name`."""


def own_endpoint_key_name(model: str) -> str:
    """NAME of the key of `model` on an endpoint of its own: SELFGUIDED_JUDGE_KEY_<NAME>, or the file
    <NAME> of the Secret selfguided-judge-keys (the model upper-cased, other characters as `_`)."""
    return re.sub(r"[^A-Z0-9]", "_", model.upper())


def own_endpoint_key(model: str) -> str:
    """The key of `model` on an endpoint of its own, never OPENAI_API_KEY (that key is for the run's
    endpoint): SELFGUIDED_JUDGE_KEY_<NAME>, else the mounted Secret's file <NAME>, else
    SELFGUIDED_ENDPOINT_API_KEY, else a placeholder (vLLM and `selfguided serve` take any key)."""
    name = own_endpoint_key_name(model)
    key = os.environ.get(OWN_ENDPOINT_KEY_ENV_PREFIX + name)
    if key:
        return key
    path = Path(OWN_ENDPOINT_KEYS_DIR) / name
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    return os.environ.get(OWN_ENDPOINT_KEY_ENV) or "unused"


def parse_model_entry(entry: str) -> tuple[str, str | None]:
    """(model, its own endpoint or None) of a model entry as a run names its judges and teachers:
    `gpt-4o-mini` (on the run's endpoint), or `name@http://host:port/v1` for a model on an
    OpenAI-compatible endpoint of its own (a served champion, a vLLM server). The one reader of
    that form; ValueError naming the entry when it is neither."""
    model, sep, url = entry.strip().partition("@")
    if sep and not url.startswith(("http://", "https://")):
        raise ValueError(f"{entry!r}: after '@' comes the endpoint URL (http://... or https://...)")
    if not model:
        raise ValueError(f"{entry!r}: no model name before '@'")
    return model, url or None


def model_endpoint(entry: str, default_base_url: str) -> tuple[str, str]:
    """(model, base_url) of a model entry (`parse_model_entry`); the run's endpoint when it names none."""
    model, url = parse_model_entry(entry)
    return model, url or default_base_url


def endpoint_config(step: str, entry: str, *, base_url: str, concurrency: int, cache: str) -> "LLMConfig":
    """The LLMConfig of a model entry (see `model_endpoint`). A model on an endpoint of its own gets
    its own key (`own_endpoint_key`), never OPENAI_API_KEY."""
    model, url = model_endpoint(entry, base_url)
    if url != base_url:
        return LLMConfig(model=model, base_url=url, concurrency=concurrency, cache=cache or None,
                         api_key=own_endpoint_key(model))
    return llm_step_config(step, model, base_url=base_url, concurrency=concurrency, cache=cache)


def check_endpoint(config: "LLMConfig", timeout_s: float = 10.0) -> None:
    """Prove the endpoint answers and accepts the key, for free: one GET /models.

    Raises RuntimeError with one line naming the endpoint and the cause. A server without the
    /models route (404, some OpenAI-compatible gateways) counts as reachable.
    """
    where = config.resolved_base_url() or "https://api.openai.com/v1"
    import openai

    client = openai.OpenAI(base_url=config.resolved_base_url(), api_key=config.resolved_api_key(),
                           timeout=timeout_s, max_retries=0)
    try:
        client.models.list()
    except openai.AuthenticationError:
        key = (f"{OWN_ENDPOINT_KEY_ENV_PREFIX}{own_endpoint_key_name(config.model)} (in a cluster: the key "
               f"{own_endpoint_key_name(config.model)} of Secret {OWN_ENDPOINT_KEYS_SECRET_NAME})"
               if config.api_key else "OPENAI_API_KEY (in a cluster: Secret selfguided-openai)")
        raise RuntimeError(f"LLM endpoint {where} refused the API key of {config.model} (401): check {key}") from None
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
        import openai

        raise openai.OpenAIError("no API key: set OPENAI_API_KEY (or OPENAI_BASE_URL for a self-hosted endpoint)")

    def price_per_token(self) -> tuple[float, float] | None:
        """(prompt, completion) USD per token for `model`, by exact name or longest prefix."""
        matches = [name for name in self.prices if self.model == name or self.model.startswith(name)]
        if not matches:
            return None
        prompt, completion = self.prices[max(matches, key=len)]
        return prompt / 1e6, completion / 1e6

