"""Production traces of `selfguided serve`: its options, the logger it starts, and the hook the
apps call once an answer was served (the writer and the counters: registry/production_log.py; the
trace's shape: registry/production.py).

Options: `--trace-experiment` (default `selfguided-production`), `--trace-sample-rate` (0..1,
default 1), `--redact` (all, none, or some of email,rrn,phone,card; default all), `--deployment`
(stable or canary: which side of a canary rollout this server is), `--no-trace`. Traces go to the
server's `--tracking-uri`; a local SQLite store that does not exist turns tracing off with a line
that says so (serving a model folder needs no store). `GET /v1/trace-stats` shows the counters.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from selfguided.components.data.redact import Redactor, parse_kinds
from selfguided.components.registry import production as p
from selfguided.components.registry.production_log import (
    HTTP_RETRY_DEFAULTS, MlflowTraceSink, ProductionLogger, ServedAnswer, ServingLabels)
from selfguided.pipelines.options import missing_sqlite_store


class TracingError(ValueError):
    """A tracing option that cannot be used; the message names the option and what to change."""


def add_tracing_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("production traces (registry/production.py)")
    g.add_argument("--no-trace", action="store_true", help="do not record answers as MLflow traces")
    g.add_argument("--trace-experiment", default=p.PRODUCTION_EXPERIMENT,
                   help="MLflow experiment of the traces (default: %(default)s)")
    g.add_argument("--trace-sample-rate", type=float, default=1.0,
                   help="share of answers traced, 0 to 1 (default: %(default)s)")
    g.add_argument("--redact", default="all", metavar="KINDS",
                   help="personal data replaced before a trace leaves the process: all, none, or a comma-separated "
                   "list of email,rrn,phone,card (default: %(default)s)")
    g.add_argument("--deployment", choices=(p.DEPLOYMENT_STABLE, p.DEPLOYMENT_CANARY), default=p.DEPLOYMENT_STABLE,
                   help="which side of a canary rollout this server is; the traces say it (default: %(default)s)")
    g.add_argument("--trace-queue-size", type=int, default=1000,
                   help="answers waiting to be written; beyond it they are dropped and counted (default: %(default)s)")


def check_tracing_arguments(args: argparse.Namespace) -> Redactor | None:
    """The redactor, or None with --no-trace; TracingError for a value to change."""
    if args.no_trace:
        return None
    if not 0.0 <= args.trace_sample_rate <= 1.0:
        raise TracingError(f"--trace-sample-rate must be between 0 and 1, not {args.trace_sample_rate:g}")
    if args.trace_queue_size < 1:
        raise TracingError("--trace-queue-size must be at least 1")
    if not args.trace_experiment.strip():
        raise TracingError("--trace-experiment must name an experiment")
    try:
        return Redactor(parse_kinds(args.redact))
    except ValueError as exc:
        raise TracingError(f"--redact: {exc}") from None


def start_logger(args: argparse.Namespace, labels: ServingLabels, tracking_uri: str) -> ProductionLogger | None:
    """The started ProductionLogger the options ask for (None with --no-trace, or without a store);
    prints one line saying where answers are traced, or why not."""
    redactor = check_tracing_arguments(args)
    if redactor is None:
        return None
    missing = missing_sqlite_store(tracking_uri)
    if missing is not None:
        print(f"selfguided serve: answers are not traced: no MLflow store at {missing} "
              "(give --tracking-uri, or --no-trace to say so)", flush=True)
        return None
    logger = ProductionLogger(MlflowTraceSink(tracking_uri, args.trace_experiment), labels,
                              sample_rate=args.trace_sample_rate, queue_size=args.trace_queue_size,
                              redactor=redactor, on_error=_warn_once(), http_retry_env=HTTP_RETRY_DEFAULTS)
    redacting = ", ".join(redactor.kinds) or "nothing"
    print(f"selfguided serve: tracing {args.trace_sample_rate:.0%} of answers to experiment "
          f"`{args.trace_experiment}` at {tracking_uri} as {labels.deployment} (redacting {redacting}; "
          "counters at /v1/trace-stats)", flush=True)
    return logger.start()


def _warn_once():
    """An on_error callback that prints the first failure and then one line per minute at most."""
    last = [0.0]

    def warn(message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 60:
            last[0] = now
            print(f"selfguided serve: warning: {message} (counted in /v1/trace-stats)", file=sys.stderr, flush=True)

    return warn


def labels_for(resolved, served_name: str, deployment: str) -> ServingLabels:
    """What the traces say about the model: resolve.ResolvedModel's registry labels."""
    return ServingLabels(registered_model=resolved.registered_model, model_version=resolved.version,
                         alias=resolved.alias, deployment=deployment, served_model=served_name)


def offer_answer(logger: ProductionLogger | None, body: dict[str, Any], metadata: dict[str, str], answer: str,
                 started_ns: int, started: float, *, prompt_tokens: int | None, completion_tokens: int | None,
                 finish_reason: str | None, stream: bool = False) -> None:
    """Hand one served answer to the logger (a no-op without one). Never raises."""
    if logger is None:
        return
    try:
        logger.offer(ServedAnswer(messages=body.get("messages") or [], answer=answer, started_ns=started_ns,
                                  latency_ms=(time.perf_counter() - started) * 1000, prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens,
                                  client_category=metadata.get(p.CATEGORY_METADATA_KEY), stream=stream,
                                  finish_reason=finish_reason))
    except Exception:  # noqa: BLE001 - tracing never fails an answer
        pass


def trace_stats(logger: ProductionLogger | None) -> dict[str, Any]:
    """`GET /v1/trace-stats`: {"tracing": false}, or the logger's counters and labels."""
    if logger is None:
        return {"tracing": False}
    labels = logger.labels
    return {"tracing": True, "experiment": getattr(logger.sink, "experiment", ""),
            "registered_model": labels.registered_model, "model_version": labels.model_version,
            "alias": labels.alias, "deployment": labels.deployment, **logger.stats()}

