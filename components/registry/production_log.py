"""The writer of production traces (the contract: registry/production.py): every served answer
offered to a `ProductionLogger` becomes one MLflow trace, written by a background thread, so that
logging never blocks or fails a response.

- `offer` is all the request path does: a sampling draw and a `put_nowait` on a bounded queue; a
  full queue drops the answer and counts it. It never raises.
- The writer thread takes what is queued (up to `batch_size` at a time), redacts personal data
  (data/redact.py) from the request and the answer, settles the category (the client's
  `metadata.category` when it is a known one, else the classifier's, data/category_classifier.py),
  and writes the batch synchronously through `MlflowTraceSink`.
- Counters (`stats()`): offered = dropped_sampled_out + dropped_queue_full + written + failed +
  dropped_at_close + pending, at any moment.

Why not `mlflow.start_span`: MLflow's exporter writes traces best-effort. It logs a warning and
carries on when the server is gone (mlflow/tracing/export/mlflow_v3.py, `_log_trace` and
`_log_spans` catch every exception), by default from its own async queue
(MLFLOW_ENABLE_ASYNC_TRACE_LOGGING), so a caller cannot count what was lost. `MlflowTraceSink`
builds the trace's root span itself (an OpenTelemetry span of its own provider, wrapped as an MLflow
span) and sends a batch in one call to the tracking store's span ingestion (`TracingClient.log_spans`:
OTLP for an MLflow server >= 3.4, the database for a `sqlite:///`/SQL store), which raises on any
failure: a batch is counted written only once the store acknowledged it. The trace's tags travel as
the root span's `mlflow.traceTag.*` attributes, which the store turns into trace tags; its state,
previews and token usage come from the span. A file store (no span ingestion) fails every batch,
with that reason in `last_error`.

How long one failed write holds the thread is MLflow's HTTP retry policy, read from the environment:
a logger given `http_retry_env` (serve gives `HTTP_RETRY_DEFAULTS`) sets those variables the user has
not set while it runs and removes them when it closes (the queue absorbs the wait of a failing
write; beyond it, drops are counted).
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from selfguided.components.data.categories import CATEGORIES, normalize_category
from selfguided.components.data.redact import Redactor
from selfguided.components.registry import production as p

SERVICE_NAME = "selfguided-serve"
# MLflow's HTTP client defaults retry for minutes; a trace writer would rather count a failure.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}



@dataclass
class ServedAnswer:
    """One answer as the request path saw it (nothing redacted or classified yet)."""

    messages: list[Any]  # the OpenAI chat messages the client sent
    answer: str
    started_ns: int  # time.time_ns() when the request arrived
    latency_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    client_category: str | None = None  # the request's metadata.category, as sent
    stream: bool = False
    finish_reason: str | None = None


@dataclass(frozen=True)
class ServingLabels:
    """What every trace of one server says about the model that answered."""

    registered_model: str = ""
    model_version: str = ""
    alias: str = ""
    deployment: str = p.DEPLOYMENT_STABLE
    served_model: str = ""


@dataclass
class TraceRecord:
    """One trace as it leaves the process: request and answer redacted, tags settled."""

    request: dict[str, Any]
    response: dict[str, Any]
    tags: dict[str, str]
    attributes: dict[str, Any]
    started_ns: int
    latency_ms: float


def _user_text(messages: list[Any]) -> str:
    parts = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            parts.append(str(content or ""))
    return "\n".join(parts)


def prepare(answer: ServedAnswer, labels: ServingLabels, redactor: Redactor, classifier) -> TraceRecord:
    """The trace of one served answer: redacted, with its category and where that came from."""
    counts: Counter = Counter()
    request = {"messages": redactor.value(answer.messages, counts)}
    response = {"answer": redactor.text(answer.answer, counts)}
    tags = {p.TAG_REGISTERED_MODEL: labels.registered_model, p.TAG_MODEL_VERSION: labels.model_version,
            p.TAG_ALIAS: labels.alias, p.TAG_DEPLOYMENT: labels.deployment,
            p.TAG_SERVED_MODEL: labels.served_model, p.TAG_REDACTIONS: str(sum(counts.values()))}
    key = normalize_category(answer.client_category) if answer.client_category else ""
    if key in CATEGORIES:
        tags[p.TAG_CATEGORY], tags[p.TAG_CATEGORY_SOURCE] = key, "client"
    else:
        tags[p.TAG_CATEGORY] = classifier.predict(_user_text(answer.messages))
        tags[p.TAG_CATEGORY_SOURCE] = classifier.source
        if answer.client_category:
            tags[p.TAG_CLIENT_CATEGORY] = redactor.text(str(answer.client_category))[:250]
    attributes: dict[str, Any] = {p.ATTR_LATENCY_MS: round(answer.latency_ms, 3), p.ATTR_STREAM: answer.stream}
    if answer.prompt_tokens is not None:
        attributes[p.ATTR_PROMPT_TOKENS] = answer.prompt_tokens
    if answer.completion_tokens is not None:
        attributes[p.ATTR_COMPLETION_TOKENS] = answer.completion_tokens
    if answer.finish_reason:
        attributes[p.ATTR_FINISH_REASON] = answer.finish_reason
    return TraceRecord(request, response, tags, attributes, answer.started_ns, answer.latency_ms)


class MlflowTraceSink:
    """Writes batches of TraceRecords as MLflow traces in one experiment; raises when a batch was
    not stored (the caller counts it failed). The experiment is created on first use."""

    def __init__(self, tracking_uri: str, experiment: str = p.PRODUCTION_EXPERIMENT):
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self._experiment_id: str | None = None
        self._client = None
        self._tracer = None

    def _setup(self) -> str:
        if self._experiment_id is None:
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException
            from mlflow.tracing.client import TracingClient
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider

            registry = MlflowClient(self.tracking_uri)
            found = registry.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    experiment_id = registry.create_experiment(self.experiment)
                except MlflowException:  # created meanwhile by another replica
                    experiment_id = registry.get_experiment_by_name(self.experiment).experiment_id
            else:
                experiment_id = found.experiment_id
            # A provider of our own, not the global one: these spans go nowhere but `log_spans`.
            self._tracer = TracerProvider(resource=Resource({"service.name": SERVICE_NAME})).get_tracer(__name__)
            self._client = TracingClient(self.tracking_uri)
            self._experiment_id = experiment_id
        return self._experiment_id

    def _span(self, record: TraceRecord):
        from mlflow.entities import SpanStatusCode
        from mlflow.entities.span import SpanType, create_mlflow_span
        from mlflow.tracing.constant import SpanAttributeKey
        from mlflow.tracing.utils import generate_trace_id_v3

        end_ns = record.started_ns + int(record.latency_ms * 1e6)
        otel = self._tracer.start_span(p.SERVED_TRACE_NAME, start_time=record.started_ns)
        span = create_mlflow_span(otel, generate_trace_id_v3(otel), SpanType.CHAT_MODEL)
        span.set_inputs(record.request)
        span.set_outputs(record.response)
        attributes = dict(record.attributes)
        if p.ATTR_PROMPT_TOKENS in attributes and p.ATTR_COMPLETION_TOKENS in attributes:
            prompt, completion = attributes[p.ATTR_PROMPT_TOKENS], attributes[p.ATTR_COMPLETION_TOKENS]
            attributes[SpanAttributeKey.CHAT_USAGE] = {"input_tokens": prompt, "output_tokens": completion,
                                                       "total_tokens": prompt + completion}
        tags = {**record.tags, "mlflow.traceName": p.SERVED_TRACE_NAME}
        attributes.update({SpanAttributeKey.TRACE_TAG_PREFIX + k: v for k, v in tags.items()})
        span.set_attributes(attributes)
        span.set_status(SpanStatusCode.OK)
        span.end(end_time_ns=end_ns)
        return span.to_immutable_span()

    def write(self, records: list[TraceRecord]) -> list[str]:
        """Store the records as traces (one request to the store); their trace ids."""
        experiment_id = self._setup()
        spans = [self._span(r) for r in records]
        try:
            self._client.log_spans(experiment_id, spans)
        except NotImplementedError:
            _forget_server_version()
            raise
        return [s.trace_id for s in spans]


def _forget_server_version() -> None:
    """MLflow caches the server's version per host, a failed lookup too (RestStore._get_server_version,
    an lru_cache): a server that was down at the first write would refuse spans forever after."""
    try:
        from mlflow.store.tracking.rest_store import RestStore

        RestStore._get_server_version.cache_clear()
    except (ImportError, AttributeError):
        pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


@dataclass
class _Counters:
    offered: int = 0
    dropped_sampled_out: int = 0
    dropped_queue_full: int = 0
    enqueued: int = 0
    written: int = 0
    failed: int = 0
    offered_after_close: int = 0
    left_at_close: int = 0  # enqueued, still queued when the writer stopped
    redactions: Counter = field(default_factory=Counter)


class ProductionLogger:
    """Bounded queue + background writer of production traces (see the module's docstring).

    sink: has `write(list[TraceRecord])`, raising when the batch was not stored (MlflowTraceSink).
    sample_rate: the share of answers traced (0..1), drawn independently per answer.
    classifier: labels requests without a known category (default: data/category_classifier's
        sample classifier, trained when the writer starts).
    http_retry_env: environment variables (MLflow's HTTP retry policy) set from start to close
        where the process has none of its own.
    """

    def __init__(self, sink, labels: ServingLabels, *, sample_rate: float = 1.0, queue_size: int = 1000,
                 batch_size: int = 50, redactor: Redactor | None = None, classifier=None,
                 rng: random.Random | None = None, on_error: Callable[[str], None] | None = None,
                 http_retry_env: dict[str, str] | None = None):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"the trace sample rate must be between 0 and 1, not {sample_rate}")
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        self.sink, self.labels, self.sample_rate, self.batch_size = sink, labels, sample_rate, batch_size
        self.redactor = redactor if redactor is not None else Redactor()
        self.classifier = classifier
        self.on_error = on_error
        self.http_retry_env = dict(http_retry_env or {})
        self._env_set: list[str] = []
        self._queue: queue.Queue[ServedAnswer] = queue.Queue(maxsize=queue_size)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._counts = _Counters()
        self._last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, answer: ServedAnswer) -> bool:
        """Queue one served answer for tracing; False when sampled out or the queue is full. Never
        blocks, never raises."""
        try:
            with self._lock:
                self._counts.offered += 1
                if self.sample_rate < 1.0 and self._rng.random() >= self.sample_rate:
                    self._counts.dropped_sampled_out += 1
                    return False
                if self._stop.is_set():
                    self._counts.offered_after_close += 1
                    return False
                try:
                    self._queue.put_nowait(answer)
                except queue.Full:
                    self._counts.dropped_queue_full += 1
                    return False
                self._counts.enqueued += 1
                return True
        except Exception:  # noqa: BLE001 - tracing must never fail a response
            return False

    def start(self) -> "ProductionLogger":
        if self._thread is None:
            self._env_set = [name for name in self.http_retry_env if name not in os.environ]
            os.environ.update({name: self.http_retry_env[name] for name in self._env_set})
            self._thread = threading.Thread(target=self._run, name="selfguided-production-log", daemon=True)
            self._thread.start()
        return self

    def _next_batch(self) -> list[ServedAnswer]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        if self.classifier is None:
            from selfguided.components.data.category_classifier import sample_classifier

            self.classifier = sample_classifier()
        while True:
            batch = self._next_batch()
            if not batch:
                if self._stop.is_set():
                    return
                continue
            self._write(batch)

    def _write(self, batch: list[ServedAnswer]) -> None:
        try:
            before = Counter(self.redactor.counts)
            records = [prepare(a, self.labels, self.redactor, self.classifier) for a in batch]
            self.sink.write(records)
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the writer
            message = _one_line(exc)
            with self._lock:
                self._counts.failed += len(batch)
                self._last_error = message
            if self.on_error is not None:
                self.on_error(f"{len(batch)} trace(s) not written: {message}")
            return
        with self._lock:
            self._counts.written += len(batch)
            self._counts.redactions.update(self.redactor.counts - before)

    def close(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stop taking answers, write what is queued (for at most `timeout` seconds), count what is
        left as dropped_at_close; the final stats."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        left = 0
        while True:
            try:
                self._queue.get_nowait()
                left += 1
            except queue.Empty:
                break
        with self._lock:
            self._counts.left_at_close += left
        for name in self._env_set:
            os.environ.pop(name, None)
        self._env_set = []
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """The counters (see the module's docstring) and the last write error."""
        with self._lock:
            c = self._counts
            pending = c.enqueued - c.written - c.failed - c.left_at_close
            return {"offered": c.offered, "enqueued": c.enqueued, "written": c.written, "failed": c.failed,
                    "dropped_queue_full": c.dropped_queue_full, "dropped_sampled_out": c.dropped_sampled_out,
                    "dropped_at_close": c.offered_after_close + c.left_at_close, "pending": pending,
                    "sample_rate": self.sample_rate, "queue_capacity": self._queue.maxsize,
                    "redactions": dict(c.redactions), "last_error": self._last_error}

