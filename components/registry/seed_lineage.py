"""Seed versions in MLflow: each version an MLflow dataset with its lineage, each model version
naming the seed version it was trained on.

`log_seed_version` makes one run per seed version in the experiment (run name `seed <version>`,
tag `row_kind=seed_version`) whose input is the version as an MLflow dataset (name = the version,
digest = its content address, source = where the store keeps its records; context `seed`), with
the manifest as an artifact, the record counts (overall and per category) as metrics, and the
lineage as tags: `seed_version`, `seed_parent` (the version it extends, "" for a first one) and
`seed_source.<key>` (traces, teacher, prompt versions, the file it was read from, when known).
Logging a version twice finds its run and logs nothing new.

`log_harvest_execution` makes one run per harvest execution (tag `row_kind=harvest`) with the
newest trace time it read (`harvest.until_ms`), whether or not it made a seed version, so traces a
harvest left out are not read again. `harvest_watermark` finds where the next harvest of a traces
experiment starts: the largest `until_ms` among those runs and the logged seed versions
(`seed_source.until_ms`, what harvests before the execution runs recorded). `seed_lineage` walks the parents back from a version; `SEED_VERSION_TAG` is the tag that
registration (registry/promotion.py) sets on every model version: the version of the seed records
its scored data holds (data/seed_versions.SeedManifest over the scored records).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selfguided.components.data.seed_versions import SeedManifest

SEED_VERSION_TAG = "seed_version"
# the records a pipeline run trained on, on its parent run (registry/promotion.register_candidates)
SEED_RECORDS_ARTIFACT = "seed/records.jsonl"
SEED_PARENT_TAG = "seed_parent"
SEED_SOURCE_TAG_PREFIX = "seed_source."
SEED_ROW_KIND = "seed_version"


def _find(client: Any, experiment_id: str, version: str) -> Any | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.{SEED_VERSION_TAG} = '{version}' "
                              f"and tags.row_kind = '{SEED_ROW_KIND}'", max_results=1)
    return runs[0] if runs else None


def log_seed_version(tracking_uri: str, experiment_name: str, manifest: SeedManifest, location: str) -> str:
    """The run of `manifest`'s version in the experiment (made now, or found); returns its run id.

    location: where the version's records are (SeedStore.location), the dataset's source.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from selfguided.components.registry.runs import ensure_experiment

    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, experiment_name, tracking_uri)
    found = _find(client, experiment_id, manifest.version)
    if found is not None:
        return found.info.run_id
    tags = {"row_kind": SEED_ROW_KIND, SEED_VERSION_TAG: manifest.version, SEED_PARENT_TAG: manifest.parent or "",
            **{f"{SEED_SOURCE_TAG_PREFIX}{k}": str(v)[:5000] for k, v in manifest.source.items()}}
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"seed {manifest.version}", tags=tags) as run:
        import warnings

        with warnings.catch_warnings():  # a local path reads as two kinds of the same source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(location)
        dataset = MetaDataset(source, name=manifest.version, digest=manifest.version.removeprefix("seed-")[:36])
        mlflow.log_input(dataset, context="seed", tags={SEED_PARENT_TAG: manifest.parent or ""})
        mlflow.log_dict(manifest.to_json(), "manifest.json")
        mlflow.log_metrics({"seed/records": float(len(manifest.records)),
                            **{f"seed/{c}/records": float(n) for c, n in manifest.by_category().items() if c}})
    return run.info.run_id


def seed_lineage(tracking_uri: str, experiment_name: str, version: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """The version and its ancestors, newest first, as MLflow records them: {"version", "parent",
    "run_id", "source": {...}}; stops at a version that was never logged (or after `limit`)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    chain: list[dict[str, Any]] = []
    while version and experiment is not None and len(chain) < limit:
        run = _find(client, experiment.experiment_id, version)
        if run is None:
            break
        tags = run.data.tags
        chain.append({"version": version, "parent": tags.get(SEED_PARENT_TAG) or None, "run_id": run.info.run_id,
                      "source": {k.removeprefix(SEED_SOURCE_TAG_PREFIX): v for k, v in tags.items()
                                 if k.startswith(SEED_SOURCE_TAG_PREFIX)}})
        version = tags.get(SEED_PARENT_TAG, "")
    return chain


WATERMARK_KEY = "until_ms"
"""The `source` key (tag `seed_source.until_ms`) of a harvested version: the newest trace time it read."""


HARVEST_ROW_KIND = "harvest"
HARVEST_TAG_PREFIX = "harvest."


@dataclass(frozen=True)
class HarvestMark:
    """Where the next harvest starts: after `until_ms`; `version` is the seed line's version after
    the harvest that set it (the one it made, else the one it extended; None when there is none),
    `made` whether that harvest made it."""

    until_ms: int = 0
    version: str | None = None
    made: bool = False


def log_harvest_execution(tracking_uri: str, experiment_name: str, *, traces: str, since_ms: int, until_ms: int,
                          made: str = "", current: str = "", counts: dict[str, float] | None = None) -> str:
    """One run for one harvest execution (tags `row_kind=harvest`, `harvest.traces`, `harvest.since_ms`,
    `harvest.until_ms`, `harvest.version` = the version it made or "", `harvest.current` = the seed
    line's version after it); `counts` as metrics `harvest/<name>`. Returns the run id."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from selfguided.components.registry.runs import ensure_experiment

    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, experiment_name, tracking_uri)
    tags = {"row_kind": HARVEST_ROW_KIND, f"{HARVEST_TAG_PREFIX}traces": traces,
            f"{HARVEST_TAG_PREFIX}since_ms": str(since_ms), f"{HARVEST_TAG_PREFIX}{WATERMARK_KEY}": str(until_ms),
            f"{HARVEST_TAG_PREFIX}version": made, f"{HARVEST_TAG_PREFIX}current": current or made}
    run = client.create_run(experiment_id, run_name=f"harvest {made or 'no new version'}", tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(f"harvest/{k}", float(v), now, 0)
                                               for k, v in (counts or {}).items()])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def harvest_watermark(tracking_uri: str, experiment_name: str, traces: str, *, max_runs: int = 1000) -> HarvestMark:
    """The newest harvest of the traces experiment `traces` on record in `experiment_name`: the
    largest `until_ms` of its execution runs and of the seed versions harvests logged (a tie goes
    to the newest run); HarvestMark() when there is none. Reads the newest `max_runs` runs of each kind."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return HarvestMark()
    marks = []
    for kind in (SEED_ROW_KIND, HARVEST_ROW_KIND):
        for run in client.search_runs([experiment.experiment_id], filter_string=f"tags.row_kind = '{kind}'",
                                      order_by=["attributes.start_time DESC"], max_results=max_runs):
            tags = run.data.tags
            if kind == SEED_ROW_KIND:
                mark, source = tags.get(f"{SEED_SOURCE_TAG_PREFIX}{WATERMARK_KEY}", ""), SEED_SOURCE_TAG_PREFIX
                version, made = tags.get(SEED_VERSION_TAG), True
            else:
                mark, source = tags.get(f"{HARVEST_TAG_PREFIX}{WATERMARK_KEY}", ""), HARVEST_TAG_PREFIX
                version = tags.get(f"{HARVEST_TAG_PREFIX}current") or None
                made = bool(tags.get(f"{HARVEST_TAG_PREFIX}version"))
            if tags.get(f"{source}traces") == traces and mark.isdigit():
                marks.append((int(mark), run.info.start_time or 0, HarvestMark(int(mark), version, made)))
    return max(marks, key=lambda m: m[:2])[2] if marks else HarvestMark()


def champion_seed_version(tracking_uri: str, registered_model: str) -> tuple[str | None, str | None]:
    """(the champion's model version, the seed version it was trained on: its `seed_version` tag);
    (None, None) without a champion, (version, None) for a champion that names none."""
    from mlflow import MlflowClient

    from selfguided.components.registry.aliases import alias_version

    champion = alias_version(MlflowClient(tracking_uri), registered_model)
    if champion is None:
        return None, None
    return str(champion.version), champion.tags.get(SEED_VERSION_TAG) or None


def champion_seed_records(tracking_uri: str, registered_model: str) -> tuple[str, str, list[dict[str, Any]]] | None:
    """(the champion's model version, its seed version, the records it was trained on) from the
    pipeline run that registered it (its parent run's SEED_RECORDS_ARTIFACT), checked against the
    version's `seed_version` tag; None without a champion, a tag, or those records (a champion
    registered before the records were logged)."""
    import tempfile

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from selfguided.components.data.jsonl import read_jsonl
    from selfguided.components.registry.aliases import alias_version

    client = MlflowClient(tracking_uri)
    champion = alias_version(client, registered_model)
    seed = champion.tags.get(SEED_VERSION_TAG) if champion is not None else None
    if not seed or not champion.run_id:
        return None
    parent = client.get_run(champion.run_id).data.tags.get("mlflow.parentRunId")
    if not parent:
        return None
    with tempfile.TemporaryDirectory(prefix="selfguided-seed-") as folder:
        try:
            path = client.download_artifacts(parent, SEED_RECORDS_ARTIFACT, folder)
            records = read_jsonl(path, allow_empty=True)
        except (MlflowException, OSError):
            return None
    if SeedManifest.of(records).version != seed:
        return None
    return str(champion.version), seed, records
