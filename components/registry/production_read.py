"""The monitor's side of the production-trace contract (registry/production.py): reading served
answers since the monitor's last execution, a stratified sample of them, the sample as the judges'
questions and answers, the judges' verdicts back onto the traces, the champion's offline estimates,
and the monitor's own runs (its watermark, its execution count, its history run).

Where the monitor keeps its state, in MLflow (experiment `MONITOR_EXPERIMENT`):

- one run per execution, tagged `TAG_MODEL` (the registered model watched), `TAG_WATERMARK` (the
  newest trace timestamp it read, ms) and `TAG_EXECUTION` (1, 2, ...); the next execution reads the
  traces after the last FINISHED execution's watermark, so a failed execution is read again;
- one history run per registered model (tag `TAG_HISTORY`), which gets every execution's metrics at
  step = the execution count: its charts are the lines over time.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from mlflow import MlflowClient

from selfguided.components.evaluation.drift import estimate_from_interval
from selfguided.components.evaluation.metrics import categories_from_metrics, metric_name
from selfguided.components.evaluation.rows import parse_row
from selfguided.components.evaluation.statistics import Estimate, cluster_mean
from selfguided.components.evaluation.summaries import score_clusters
from selfguided.components.registry import production as contract
from selfguided.components.registry.runs import ensure_experiment, run_row
from selfguided.components.registry.traces import _log_entry, judge_entries

MONITOR_EXPERIMENT = "selfguided-monitor"
TAG_MODEL = "monitor.registered_model"
TAG_WATERMARK = "monitor.watermark_ms"
TAG_EXECUTION = "monitor.execution"
TAG_HISTORY = "monitor.history"
TAG_MONITOR_RUN = "monitor_run"
"""On a sampled trace: the monitor run that judged it."""
MAX_TRACES = 200_000
"""At most this many trace headers are listed per execution (bounded; the rest wait for the next)."""


@dataclass
class SampledAnswer:
    """One sampled production trace, read back: what was asked, what was answered, by whom."""

    trace_id: str
    category: str
    messages: list[dict[str, str]]
    answer: str
    deployment: str
    model_version: str
    timestamp_ms: int

    @property
    def prompt_key(self) -> str:
        """The request's identity (the cluster of its answers): the same messages asked twice are one prompt."""
        text = json.dumps(self.messages, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TraceListing:
    """The served-answer trace headers after a watermark, and what was left out."""

    infos: list[Any] = field(default_factory=list)
    newest_ms: int = 0
    truncated: bool = False


def production_experiment_id(client: MlflowClient, name: str = contract.PRODUCTION_EXPERIMENT) -> str | None:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else None


def list_served(client: MlflowClient, experiment_id: str, since_ms: int, *, max_traces: int = MAX_TRACES
                ) -> TraceListing:
    """Headers (no spans) of the served-answer traces with timestamp > since_ms, oldest first, paged."""
    listing = TraceListing(newest_ms=since_ms)
    token = None
    filter_string = f"trace.timestamp_ms > {int(since_ms)} AND trace.name = '{contract.SERVED_TRACE_NAME}'"
    while len(listing.infos) < max_traces:
        page = client.search_traces([experiment_id], filter_string=filter_string, max_results=min(500, max_traces),
                                    order_by=["timestamp_ms ASC"], page_token=token, include_spans=False)
        for trace in page:
            listing.infos.append(trace.info)
            listing.newest_ms = max(listing.newest_ms, int(trace.info.timestamp_ms))
        token = page.token
        if not token or not len(page):
            return listing
    listing.truncated = bool(token)
    listing.infos = listing.infos[:max_traces]
    listing.newest_ms = max([since_ms, *(int(i.timestamp_ms) for i in listing.infos)])
    return listing


def stratified_sample(infos: Iterable[Any], per_category: int, seed: int) -> dict[str, list[Any]]:
    """Up to `per_category` trace headers per category (tag `category`), drawn without replacement
    with `seed` (reproducible: the candidates are ordered by trace id before the draw)."""
    by_category: dict[str, list[Any]] = defaultdict(list)
    for info in infos:
        by_category[info.tags.get(contract.TAG_CATEGORY) or "(none)"].append(info)
    sample = {}
    for category in sorted(by_category):
        candidates = sorted(by_category[category], key=lambda i: i.trace_id)
        rng = random.Random(f"{seed}:{category}")
        sample[category] = candidates if len(candidates) <= per_category else rng.sample(candidates, per_category)
    return sample


def read_served(client: MlflowClient, info: Any) -> SampledAnswer | None:
    """The full trace behind a header, as a SampledAnswer; None when its request or answer is unreadable."""
    trace = client.get_trace(info.trace_id)
    try:
        request = json.loads(trace.data.request) if isinstance(trace.data.request, str) else trace.data.request
        response = json.loads(trace.data.response) if isinstance(trace.data.response, str) else trace.data.response
        messages = [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in request["messages"]]
        answer = response["answer"] if isinstance(response, Mapping) else response
    except (TypeError, KeyError, ValueError):
        return None
    if not isinstance(answer, str) or not any(m["role"] == "user" for m in messages):
        return None
    tags = info.tags
    return SampledAnswer(info.trace_id, tags.get(contract.TAG_CATEGORY) or "(none)", messages, answer,
                        tags.get(contract.TAG_DEPLOYMENT) or contract.DEPLOYMENT_STABLE,
                        tags.get(contract.TAG_MODEL_VERSION, ""), int(info.timestamp_ms))


def judge_inputs(served: Iterable[SampledAnswer], model_id: str = "served") -> tuple[list[dict], list[dict]]:
    """The sampled answers as the judges' FastChat questions and answers: one question per trace
    (`question_id` = trace id, its turns the user messages), its answer turns the conversation's
    assistant messages then the served answer. The monitor keeps the verdict on the last turn (the
    served one); earlier turns are the client's history."""
    questions, answers = [], []
    for s in served:
        users = [m["content"] for m in s.messages if m["role"] == "user"]
        assistants = [m["content"] for m in s.messages if m["role"] == "assistant"][: len(users) - 1]
        assistants += [""] * (len(users) - 1 - len(assistants))
        questions.append({"question_id": s.trace_id, "category": s.category, "turns": users})
        answers.append({"question_id": s.trace_id, "model_id": model_id, "answer_id": s.trace_id,
                        "choices": [{"index": 0, "turns": [*assistants, s.answer]}]})
    return questions, answers


def log_verdicts(judgments: Iterable[Mapping[str, Any]], monitor_run_id: str) -> int:
    """Each judge's verdict on a sampled trace as its `overall` feedback (registry/traces.py's form)
    and the trace tagged with the monitor run that judged it. Returns the feedbacks logged."""
    client = MlflowClient()
    logged = 0
    for row in judgments:
        for entry in judge_entries(row):
            _log_entry(str(row["question_id"]), entry, "")
            logged += 1
        client.set_trace_tag(str(row["question_id"]), TAG_MONITOR_RUN, monitor_run_id)
    return logged


@dataclass
class OfflineReference:
    """The champion's offline evaluation: per category its estimate, and who judged it."""

    version: str
    run_id: str
    judge: str
    """The `judge` tag of its run (the judge's label), "" when unknown."""
    judge_model: str
    """The `judge_model` parameter of its run (a model, or `jury-mean(a,b)`), "" when unknown."""
    estimates: dict[str, Estimate]
    source: str
    """"judgments" (its judgments.jsonl, the exact estimates) or "metrics" (its logged CIs)."""


def offline_reference(client: MlflowClient, registered_model: str, version: str) -> OfflineReference:
    """The offline estimates of `version` from its source run: per category the same statistics as the
    report (statistics.cluster_mean over its judgments' questions); from the logged metrics
    (`judge/<category>/overall`, `_ci_low`, `_ci_high`, `/n`) when the run kept no judgments."""
    model_version = client.get_model_version(registered_model, str(version))
    run = client.get_run(model_version.run_id)
    judge, judge_model = run.data.tags.get("judge", ""), run.data.params.get("judge_model", "")
    row = run_row(client, run)
    if row is not None:
        by_category = parse_row(row).by_category()
        estimates = {c: cluster_mean(score_clusters(items, "overall")) for c, items in by_category.items()}
        return OfflineReference(str(version), run.info.run_id, judge, judge_model, estimates, "judgments")
    metrics = run.data.metrics
    estimates = {}
    for segment in categories_from_metrics(metrics):
        get = lambda suffix: float(metrics.get(f"judge/{segment}/overall{suffix}", math.nan))  # noqa: E731
        n = int(metrics.get(f"judge/{segment}/n", 0))
        estimates[segment] = estimate_from_interval(get(""), get("_ci_low"), get("_ci_high"), n)
    return OfflineReference(str(version), run.info.run_id, judge, judge_model, estimates, "metrics")


def for_categories(offline: Mapping[str, Estimate], categories: Iterable[str]) -> dict[str, Estimate]:
    """`offline` keyed by the live categories (a logged metric names a category by its segment)."""
    by_segment = {metric_name(c): e for c, e in offline.items()}
    return {c: offline.get(c) or by_segment[metric_name(c)] for c in categories
            if c in offline or metric_name(c) in by_segment}


# ---------------------------------------------------------------------------------------------
# The monitor's own runs
# ---------------------------------------------------------------------------------------------


@dataclass
class MonitorState:
    experiment_id: str
    watermark_ms: int
    """Traces after this timestamp (ms) are new; 0 = never monitored."""
    executions: int
    """Executions that finished before this one."""


def monitor_state(client: MlflowClient, tracking_uri: str, registered_model: str,
                  experiment: str = MONITOR_EXPERIMENT) -> MonitorState:
    """The monitor's experiment (created when missing) and the last finished execution's watermark."""
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    last = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.`{TAG_MODEL}` = '{registered_model}' AND "
                                            "attributes.status = 'FINISHED'")
    if not last:
        return MonitorState(experiment_id, 0, 0)
    tags = last[0].data.tags
    return MonitorState(experiment_id, int(tags.get(TAG_WATERMARK, 0) or 0), int(tags.get(TAG_EXECUTION, 0) or 0))


def history_run_id(client: MlflowClient, experiment_id: str, registered_model: str) -> str:
    """The history run of `registered_model` (created once, left FINISHED): metrics over executions."""
    found = client.search_runs([experiment_id], max_results=1, filter_string=f"tags.`{TAG_HISTORY}` = '{registered_model}'")
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"monitor history: {registered_model}",
                            tags={TAG_HISTORY: registered_model})
    client.set_terminated(run.info.run_id)
    return run.info.run_id
