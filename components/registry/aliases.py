"""The aliases by hand and their one look-up: `alias_version` (the champion behind its alias, for the
register step, the champion reference row and the commands below), `promote_version` (through the
gate unless forced, paired with the current champion, or for a first champion with the untuned base
row of its run), `rollback_champion` (one alias move, to the version the champion replaced) and
`list_versions`; the CLI (`selfguided models|promote|rollback`) calls these. Who and why are
recorded as version tags.
"""

from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from selfguided.components.evaluation.decision import GateDecision
from selfguided.components.evaluation.metrics import OVERALL
from selfguided.components.registry.logged_model import ensure_merged_weights
from selfguided.components.registry.names import CHAMPION, PREVIOUS_CHAMPION_TAG, REGISTERED_MODEL_NAME, RegistryError
from selfguided.components.registry.runs import run_row


def alias_version(client: MlflowClient, name: str, alias: str = CHAMPION):
    """The ModelVersion behind `alias` (default: the champion), or None when the alias (or the
    model) does not exist: the one look-up of an alias (register, promote, rollback, the champion
    reference row)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def rollback_champion(
    tracking_uri: str, registered_model_name: str = REGISTERED_MODEL_NAME, version: str | int | None = None,
    *, by: str = "", reason: str = "",
) -> str:
    """Move `champion` back and return the version it now points at.

    version: the version to make champion; None means the one the current champion replaced
        (its `previous_champion` tag). Rolling back twice walks two promotions back.
    by, reason: who rolled back and why, recorded on the version that loses the alias.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    current = alias_version(client, registered_model_name)
    if version is None:
        if current is None:
            raise RegistryError(f"{registered_model_name!r} has no champion to roll back")
        version = current.tags.get(PREVIOUS_CHAMPION_TAG)
        if not version:
            raise RegistryError(f"{registered_model_name!r} champion v{current.version} replaced no earlier "
                                "champion (no previous_champion tag): name the version to make champion "
                                "(`selfguided rollback VERSION`)")
    version = str(version)
    client.get_model_version(registered_model_name, version)  # fails clearly on an unknown version
    client.set_registered_model_alias(registered_model_name, CHAMPION, version)
    if current is not None and str(current.version) != version:
        note = f"champion moved to v{version}" + (f" by {by}" if by else "") + (f": {reason}" if reason else "")
        client.set_model_version_tag(registered_model_name, current.version, "rolled_back", note[:5000])
    return version


def version_row(client: MlflowClient, registered_model_name: str, version: str, row_kind: str = "trained"):
    """A registered version as a compare row: its run's judged row (runs.run_row), named `v<version> <row>`."""
    model_version = client.get_model_version(registered_model_name, str(version))
    row = run_row(client, client.get_run(model_version.run_id), row_kind=row_kind)
    if row is None:
        raise RegistryError(f"v{version} has no judgments.jsonl on its run {model_version.run_id}: it cannot be "
                            "compared on evidence (promote with --force to skip the gate)")
    row.row = f"v{version} {row.row}".strip()
    return row


def base_row(client: MlflowClient, registered_model_name: str, version: str):
    """The untuned base row that was judged beside `version` in its pipeline run (same base model),
    as a compare row, or None when that run logged none: the bar a first champion must beat."""
    model_version = client.get_model_version(registered_model_name, str(version))
    run = client.get_run(model_version.run_id)
    tags = run.data.tags
    found = client.search_runs(
        [run.info.experiment_id], max_results=1,
        filter_string=(f"tags.pipeline_run = '{tags.get('pipeline_run', '')}' and tags.row_kind = 'base' "
                       f"and tags.base_model = '{tags.get('base_model', '')}'"))
    return run_row(client, found[0]) if found else None


def promote_version(
    tracking_uri: str, version: str | int, registered_model_name: str = REGISTERED_MODEL_NAME, *,
    force: bool = False, by: str = "", reason: str = "", gate=None,
) -> GateDecision:
    """Make `version` the champion by hand: through gate v2 (its judgments paired with the current
    champion's, same judge required) unless `force`. Who and why are recorded in tags either way.
    Returns the decision; the alias moves only when it promotes."""
    from selfguided.components.evaluation.decision import PromotionGate
    from selfguided.components.evaluation.gate import decide_promotion

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)  # models:/ downloads resolve through the process's registry
    mlflow.set_registry_uri(tracking_uri)
    version = str(version)
    client.get_model_version(registered_model_name, version)  # fails clearly on an unknown version
    current = alias_version(client, registered_model_name)
    if current is not None and str(current.version) == version:
        return GateDecision(False, [f"v{version} is already the champion"])
    if force:
        decision = GateDecision(True, ["forced: the gate was not consulted"])
    else:
        champion = version_row(client, registered_model_name, str(current.version), "champion") if current else None
        base = None if current else base_row(client, registered_model_name, version)
        decision = decide_promotion(version_row(client, registered_model_name, version), champion,
                                    gate or PromotionGate(), base=base)
    record = ("promoted" if decision.promote else "rejected") + (f" by {by}" if by else "") + \
        (f" ({reason})" if reason else "") + ": " + "; ".join(decision.reasons)
    client.set_model_version_tag(registered_model_name, version, "promotion", record[:5000])
    if decision.promote:
        ensure_merged_weights(client, registered_model_name, version)
        client.set_registered_model_alias(registered_model_name, CHAMPION, version)
        if current is not None:
            client.set_model_version_tag(registered_model_name, version, PREVIOUS_CHAMPION_TAG, str(current.version))
    return decision


def list_versions(tracking_uri: str, registered_model_name: str = REGISTERED_MODEL_NAME) -> list[dict[str, Any]]:
    """Every version, newest first: aliases, identity, overall score with its CI, the gate's record."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        aliases = client.get_registered_model(registered_model_name).aliases
    except MlflowException as exc:
        raise RegistryError(f"no registered model {registered_model_name!r} at {tracking_uri} "
                            "(`selfguided run` creates it)") from exc
    by_version: dict[str, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(str(number), []).append(alias)
    rows = []
    for v in sorted(client.search_model_versions(f"name = '{registered_model_name}'"), key=lambda v: -int(v.version)):
        metrics = client.get_run(v.run_id).data.metrics if v.run_id else {}
        rows.append({
            "version": str(v.version), "aliases": sorted(by_version.get(str(v.version), [])),
            "base_model": v.tags.get("base_model", ""), "arm": v.tags.get("arm", ""),
            "pipeline_run": v.tags.get("pipeline_run", ""), "overall": metrics.get(OVERALL),
            "overall_ci": (metrics.get(f"{OVERALL}_ci_low"), metrics.get(f"{OVERALL}_ci_high")),
            "promotion": v.tags.get("promotion", ""), "rolled_back": v.tags.get("rolled_back", ""),
        })
    return rows
