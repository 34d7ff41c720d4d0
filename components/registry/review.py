"""Blind review samples of judged answers, and the editors' labels read back for calibration.

`create_review_sample` picks N judged-answer traces (`registry/traces.py`) stratified by
(category, row): each pick comes from the least-sampled category, then row (`pick_stratified`), so
a small sample still covers every category and every row. Each picked trace gets a blind copy in the
review experiment (`<experiment>-review`): the conversation and the answer only, with no row, no
model, no judge score, no link to the original run. The copies are what editors grade, through
MLflow's own review features in that experiment:

- a label schema `score` (feedback, numeric 1-10, with a comment box): the question the Review
  page asks, and the assessment name the editors' grades get;
- a review queue `sample <id>` holding the copies, assigned to the given reviewers;
- the tag `review_sample=<id>` on every copy (the Traces page filters on it).

The original trace keeps the way back: tags `review_sample=<id>` and `review_copy=<copy trace id>`.
Give reviewers access to the review experiment only (see docs/judges.md) and the blinding holds
against a curious editor too.

`read_labels` reads the HUMAN `score` feedback on the copies and pairs it with the judges' scores
on the originals, as `judging.calibration.LabelledItem`s; a label that is not a number, is
outside 1-10, or sits on a trace that is not a review copy is left out and counted by reason.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from selfguided.components.judging.calibration import LabelledItem
from selfguided.components.judging.jury import JURY_SOURCE
from selfguided.components.registry.traces import HUMAN_SCORE, JURY_SCORE, TRACE_NAME

REVIEW_SAMPLE_TAG = "review_sample"
REVIEW_COPY_TAG = "review_copy"
REVIEW_ITEM_NAME = "review_item"
REVIEW_INSTRUCTION = (
    "Grade the answer as a whole, 1 (useless) to 10 (excellent), as an editor of Korean writing would: does it do "
    "what the request asks, in good Korean, with the right form and enough substance? Length alone is no merit. "
    "답변 전체를 1점(쓸모없음)부터 10점(훌륭함)까지 평가하세요."
)


def review_experiment_name(experiment_name: str) -> str:
    return f"{experiment_name}-review"


@dataclass
class ReviewSample:
    """What `create_review_sample` made."""

    sample_id: str
    experiment_id: str
    """the main experiment (the judged traces)."""
    review_experiment_id: str
    queue_id: str | None
    copies: dict[str, str]
    """original trace id -> blind copy trace id."""
    strata: dict[str, int] = field(default_factory=dict)
    """"category / row" -> how many of the sample came from it."""


def _experiment_id(client, name: str, tracking_uri: str, *, create: bool) -> str | None:
    if create:
        from selfguided.components.registry.runs import ensure_experiment

        return ensure_experiment(client, name, tracking_uri)
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else None


def _search(experiment_id: str, *, filter_string: str | None = None, include_spans: bool = False) -> list:
    import mlflow

    return mlflow.search_traces(locations=[experiment_id], filter_string=filter_string, return_type="list",
                                include_spans=include_spans)


def _judged(trace) -> bool:
    return any(a.name == "overall" and a.feedback is not None and a.feedback.value is not None
               for a in trace.info.assessments)


def pick_stratified(traces: list, n: int, seed: int) -> list:
    """Up to n traces from the (category, row) strata, each pick from a stratum whose category, then
    row, has been picked least so far (seeded random ties, a seeded random trace within the stratum):
    a small sample covers every category and every row as evenly as the numbers allow."""
    strata: dict[tuple[str, str], list] = defaultdict(list)
    for trace in traces:
        strata[(trace.info.tags.get("category", ""), trace.info.tags.get("row", ""))].append(trace)
    rng = random.Random(seed)
    ties = {}
    for key in sorted(strata):
        strata[key].sort(key=lambda t: t.info.trace_id)
        rng.shuffle(strata[key])
        ties[key] = rng.random()
    by_category, by_row, by_stratum = Counter(), Counter(), Counter()
    picked = []
    while len(picked) < n:
        live = [key for key in strata if strata[key]]
        if not live:
            break
        key = min(live, key=lambda k: (by_category[k[0]], by_row[k[1]], by_stratum[k], ties[k]))
        picked.append(strata[key].pop())
        by_category[key[0]] += 1
        by_row[key[1]] += 1
        by_stratum[key] += 1
    return picked


def _ensure_label_schema(experiment_id: str):
    from mlflow.exceptions import MlflowException
    from mlflow.genai import label_schemas

    try:
        return label_schemas.get_label_schema(HUMAN_SCORE, experiment_id=experiment_id)
    except MlflowException:
        return label_schemas.create_label_schema(
            HUMAN_SCORE, type="feedback", input=label_schemas.InputNumeric(min_value=1, max_value=10),
            instruction=REVIEW_INSTRUCTION, enable_comment=True, experiment_id=experiment_id)


def create_review_sample(
    tracking_uri: str, experiment_name: str, n: int, *, seed: int = 0, reviewers: list[str] | None = None,
    pipeline_run: str = "",
) -> ReviewSample:
    """Pick a blind, stratified sample of n judged answers not sampled before, and queue it for review.

    pipeline_run: only answers of this pipeline run ("" = any).
    reviewers: MLflow user names the review queue is assigned to (none: anyone with access).
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities.trace_location import MlflowExperimentLocation

    from selfguided.components.registry.names import RegistryError

    if n < 1:
        raise ValueError("the sample needs at least one answer (--sample N, N >= 1)")
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment_id = _experiment_id(client, experiment_name, tracking_uri, create=False)
    if experiment_id is None:
        raise RegistryError(f"no MLflow experiment {experiment_name!r} at {tracking_uri} (`selfguided run` creates it)")
    wanted = f"tag.pipeline_run = '{pipeline_run}'" if pipeline_run else None
    candidates = [t for t in _search(experiment_id, filter_string=wanted)
                  if t.info.tags.get("mlflow.traceName", TRACE_NAME) == TRACE_NAME and "row" in t.info.tags
                  and REVIEW_SAMPLE_TAG not in t.info.tags and _judged(t)]
    if not candidates:
        raise RegistryError(f"no judged answers left to review in experiment {experiment_name!r}"
                            + (f" for pipeline run {pipeline_run!r}" if pipeline_run else ""))
    picked = pick_stratified(candidates, n, seed)
    sample_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{random.Random(seed).randrange(16**4):04x}"
    review_id = _experiment_id(client, review_experiment_name(experiment_name), tracking_uri, create=True)
    destination = MlflowExperimentLocation(experiment_id=review_id)
    copies, strata = {}, Counter()
    for k, trace in enumerate(picked, start=1):
        root = mlflow.get_trace(trace.info.trace_id).data.spans[0]
        with mlflow.start_span(REVIEW_ITEM_NAME, span_type="CHAT_MODEL", trace_destination=destination) as span:
            span.set_inputs(root.inputs)
            span.set_outputs(root.outputs)
            mlflow.update_current_trace(tags={REVIEW_SAMPLE_TAG: sample_id, "review_item": str(k)})
        copies[trace.info.trace_id] = span.trace_id
        strata[f"{trace.info.tags.get('category', '')} / {trace.info.tags.get('row', '')}"] += 1
    mlflow.flush_trace_async_logging()
    for original, copy in copies.items():
        client.set_trace_tag(original, REVIEW_SAMPLE_TAG, sample_id)
        client.set_trace_tag(original, REVIEW_COPY_TAG, copy)
    queue_id = _queue(review_id, sample_id, list(copies.values()), reviewers or [])
    return ReviewSample(sample_id, experiment_id, review_id, queue_id, copies, dict(sorted(strata.items())))


def _queue(review_id: str, sample_id: str, trace_ids: list[str], reviewers: list[str]) -> str | None:
    """A review queue on the copies, asking the `score` question; None where the server has no review
    queues (an older MLflow): the tag and the Traces page still work."""
    from mlflow.exceptions import MlflowException
    from mlflow.genai import review_queues

    try:
        schema = _ensure_label_schema(review_id)
        queue = review_queues.create_review_queue(f"sample {sample_id}", queue_type="custom", users=reviewers,
                                                  schema_ids=[schema.schema_id], experiment_id=review_id)
        review_queues.add_items_to_review_queue(queue.queue_id, item_ids=trace_ids)
    except (MlflowException, NotImplementedError) as exc:
        print(f"[selfguided] review: no review queue ({str(exc).splitlines()[0][:200]}); grade on the Traces page")
        return None
    return queue.queue_id


def _human_scores(trace) -> list[Any]:
    return [a.feedback.value for a in trace.info.assessments
            if a.name == HUMAN_SCORE and a.source.source_type == "HUMAN" and a.feedback is not None
            and a.valid is not False]


def _valid_label(value: Any) -> tuple[float | None, str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(str(value).strip())
        except ValueError:
            return None, "not a number"
    if not math.isfinite(float(value)):
        return None, "not a number"
    if not 1 <= float(value) <= 10:
        return None, "outside 1-10"
    return float(value), ""


def _judge_scores(trace) -> tuple[dict[str, float], float | None]:
    """Each judge's overall score of the answer (the mean of its repeats) and the jury's."""
    by_judge: dict[str, list[float]] = defaultdict(list)
    jury = None
    for a in trace.info.assessments:
        if a.feedback is None or a.valid is False or a.source.source_type == "HUMAN":
            continue
        value = a.feedback.value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if a.name == JURY_SCORE and a.source.source_id == JURY_SOURCE:
            jury = float(value)
        elif a.name == "overall":
            by_judge[a.source.source_id].append(float(value))
    judges = {name: sum(values) / len(values) for name, values in by_judge.items()}
    if jury is None and len(judges) == 1:
        jury = next(iter(judges.values()))  # a jury of one
    return judges, jury


def read_labels(tracking_uri: str, experiment_name: str, *, sample_id: str = "") -> tuple[list[LabelledItem], Counter]:
    """The editors' grades on the review copies, paired with the judges' scores of the originals.

    sample_id: only this review sample ("" = every sample).
    Returns the labelled items and, by reason, how many human labels were left out.
    """
    import mlflow
    from mlflow import MlflowClient

    from selfguided.components.registry.names import RegistryError

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment_id = _experiment_id(client, experiment_name, tracking_uri, create=False)
    if experiment_id is None:
        raise RegistryError(f"no MLflow experiment {experiment_name!r} at {tracking_uri}")
    review_id = _experiment_id(client, review_experiment_name(experiment_name), tracking_uri, create=False)
    ignored: Counter = Counter()
    originals = {}
    samples = set()
    for trace in _search(experiment_id):
        if trace.info.tags.get(REVIEW_COPY_TAG):
            samples.add(trace.info.tags.get(REVIEW_SAMPLE_TAG, ""))
        if trace.info.tags.get(REVIEW_COPY_TAG) and (not sample_id or trace.info.tags.get(REVIEW_SAMPLE_TAG) == sample_id):
            originals[trace.info.tags[REVIEW_COPY_TAG]] = trace
        # An editor who graded the judged trace itself saw the row and the judges' scores: not blind.
        ignored["on a trace that is not in a review sample"] += len(_human_scores(trace))
    if sample_id and sample_id not in samples:
        known = ", ".join(sorted(s for s in samples if s)) or "none yet: `selfguided review --sample N` makes one"
        raise RegistryError(f"no such review sample {sample_id!r} in experiment {experiment_name!r} (samples: {known})")
    items = []
    for copy in (_search(review_id) if review_id else []):
        labels = _human_scores(copy)
        if not labels:
            continue
        original = originals.get(copy.info.trace_id)
        if original is None or copy.info.tags.get(REVIEW_SAMPLE_TAG) is None:
            if not sample_id or copy.info.tags.get(REVIEW_SAMPLE_TAG) in (None, sample_id):
                ignored["on a trace that is not in a review sample"] += len(labels)
            continue
        values = []
        for value in labels:
            valid, why = _valid_label(value)
            if valid is None:
                ignored[why] += 1
            else:
                values.append(valid)
        if not values:
            continue
        judges, jury = _judge_scores(original)
        items.append(LabelledItem(item_id=original.info.trace_id, category=original.info.tags.get("category", ""),
                                  human=sum(values) / len(values), judges=judges, jury=jury,
                                  row=original.info.tags.get("row", "")))
    return items, Counter({k: v for k, v in ignored.items() if v})


def editors_section(tracking_uri: str, experiment_name: str, *, min_labels: int = 10) -> str:
    """The editors' verdict on the judges so far (every review sample), as a Markdown section for
    the compare step's report; "" when nobody has graded a review sample yet."""
    from mlflow import MlflowClient

    from selfguided.components.judging.calibration import calibrate, calibration_markdown

    if MlflowClient(tracking_uri).get_experiment_by_name(review_experiment_name(experiment_name)) is None:
        return ""  # no review sample was ever made: nothing to read
    items, ignored = read_labels(tracking_uri, experiment_name)
    if not items and not ignored:
        return ""
    result = calibrate(items, min_labels=min_labels)
    result.ignored = dict(ignored)
    return calibration_markdown(result, min_labels=min_labels)
