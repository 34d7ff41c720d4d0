"""What harvest reads from MLflow: the production prompts (in the production-trace contract's shape,
registry/production.py) and the questions of every test set on record.

`served_prompts` lists the served-answer traces after `since_ms` (production_read.list_served; it
also returns the newest trace time it read, the watermark harvest records),
reads each (production_read.read_served) and returns one data.harvest.Prompt per trace: the first
user turn, personal data replaced again (data.redact: the serving side redacts before a trace leaves
the pod; harvest does not rely on it), the category the trace carries (a classifier's guess when it
carries none), and the lowest of the monitor's jury score (the mean of the judges' `overall`
feedback) and the editors' HUMAN `score` on it, when there is any.

`test_set_hashes` hashes (data.harvest.question_hash of the first turn) the questions of every
evaluation dataset the pipeline published (registry/genai_pages.py: `selfguided-questions-*`) in
the given experiments.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from selfguided.components.data.harvest import Prompt, question_hash
from selfguided.components.data.redact import redact
from selfguided.components.registry import production as contract
from selfguided.components.registry.traces import HUMAN_SCORE


def _lowest_score(info: Any) -> float | None:
    judges, humans = [], []
    for a in getattr(info, "assessments", None) or []:
        value = a.feedback.value if a.feedback is not None else None
        if a.valid is False or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if a.source.source_type == "HUMAN" and a.name == HUMAN_SCORE:
            humans.append(float(value))
        elif a.source.source_type != "HUMAN" and a.name in ("overall", "jury_overall"):
            judges.append(float(value))
    scores = ([sum(judges) / len(judges)] if judges else []) + humans
    return min(scores) if scores else None


def served_prompts(tracking_uri: str, *, experiment: str = contract.PRODUCTION_EXPERIMENT, since_ms: int = 0,
                   max_traces: int = 20_000) -> tuple[list[Prompt], Counter, int]:
    """The production prompts after `since_ms`, oldest first, notes (what was left out or replaced ->
    how many) and the newest trace time read (ms; `since_ms` when none): the next harvest's watermark."""
    from mlflow import MlflowClient

    from selfguided.components.data.categories import CATEGORIES
    from selfguided.components.registry.production_read import list_served, production_experiment_id, read_served

    client = MlflowClient(tracking_uri)
    experiment_id = production_experiment_id(client, experiment)
    skipped: Counter = Counter()
    if experiment_id is None:
        return [], skipped, since_ms
    classifier = None
    prompts = []
    listing = list_served(client, experiment_id, since_ms, max_traces=max_traces)
    if listing.truncated:
        skipped["beyond --max-traces (the next harvest takes them)"] += 1
    for info in listing.infos:
        served = read_served(client, info)
        if served is None:
            skipped["unreadable trace"] += 1
            continue
        text = next(m["content"] for m in served.messages if m["role"] == "user")
        text, found = redact(text)
        skipped["personal data replaced"] += sum(found.values())
        category = served.category
        if category not in CATEGORIES:
            if classifier is None:
                from selfguided.components.data.category_classifier import sample_classifier

                classifier = sample_classifier()
            category = classifier.predict(text)
        full = client.get_trace(served.trace_id).info
        prompts.append(Prompt(served.trace_id, str(category), text, _lowest_score(full)))
    if not skipped["personal data replaced"]:
        del skipped["personal data replaced"]
    return prompts, skipped, listing.newest_ms


def test_set_hashes(tracking_uri: str, experiments: Iterable[str]) -> tuple[set[str], int]:
    """The question hashes of every published test set in `experiments`, and how many test sets."""
    from mlflow import MlflowClient

    from selfguided.components.registry.genai_pages import DATASET_PREFIX, dataset_records

    client = MlflowClient(tracking_uri)
    ids = [e.experiment_id for e in (client.get_experiment_by_name(name) for name in experiments) if e is not None]
    hashes: set[str] = set()
    if not ids:
        return hashes, 0
    datasets = [d for d in client.search_datasets(experiment_ids=ids) if d.name.startswith(DATASET_PREFIX)]
    for dataset in datasets:
        for record in dataset_records(tracking_uri, dataset.dataset_id):
            turns = (record.inputs or {}).get("turns") or []
            if turns:
                hashes.add(question_hash(str(turns[0])))
    return hashes, len(datasets)
