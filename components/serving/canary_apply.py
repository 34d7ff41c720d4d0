"""Acting on the canary's verdict: both sides of serving, the cluster and the `champion` alias, as one step.

`apply_canary_decision` is what the monitor calls after `decide_canary`
(components/evaluation/canary_decision.py), and what `selfguided canary promote|rollback` calls by hand:

- **wait**: nothing changes.
- **promote**: the canary gets 100% of traffic (serving/canary.py). The alias already points at it
  (the gate moved it before the deploy step started the canary); a canary that is not the champion
  is refused, since promoting it would serve a version the registry does not name.
- **rollback**, one transaction: the alias first (registry/aliases.py `rollback_champion`, to the
  version the cluster's stable side serves, so both sides name the same version), then the
  cluster. If the cluster refuses (or cannot be reached), the alias is moved back to the canary
  version, so serving and the registry agree again (the canary keeps its share) and the error says so.
  Alias first: it is the cheap, certain undo; undoing a cluster rollback would put a regressed
  model back into traffic.

Every outcome is recorded on the canary's model version (tag `canary`, with the reasons) and printed.
"""

from __future__ import annotations

from typing import Any, Iterable

from selfguided.components.evaluation.canary_decision import PROMOTE, ROLLBACK, WAIT, CanaryDecision
from selfguided.components.registry.names import CHAMPION, REGISTERED_MODEL_NAME
from selfguided.components.serving.canary import Cluster, canary_status, promote_canary, rollback_canary
from selfguided.components.serving.kserve import DEFAULT_SERVICE_NAME, DeployError

CANARY_TAG = "canary"  # on the canary's model version: what was decided, why, and what was done


def version_number(model_version: str) -> str:
    """`korean-writing-assistant/3` (the InferenceService's annotation) -> `3`."""
    return str(model_version).rsplit("/", 1)[-1].strip()


def _say(line: str) -> None:
    print(f"[selfguided] canary: {line}", flush=True)


def _tag(client, registered_model: str, version: str, text: str) -> None:
    """Record on the version; a registry that cannot be written to is said, not raised (the cluster
    already changed and is consistent with the alias)."""
    try:
        client.set_model_version_tag(registered_model, version, CANARY_TAG, text[:5000])
    except Exception as e:  # noqa: BLE001 - any MLflow failure here is reported, never hides the outcome
        _say(f"could not record the outcome on {registered_model} v{version} ({type(e).__name__}: {e})")


def apply_canary_decision(
    decision: CanaryDecision | str,
    *,
    name: str = DEFAULT_SERVICE_NAME,
    namespace: str | None = None,
    tracking_uri: str,
    registered_model: str = REGISTERED_MODEL_NAME,
    api_client=None,
    mode: str | None = None,
    reasons: Iterable[str] = (),
    by: str = "",
) -> str:
    """Carry out `decision` (a CanaryDecision, or an action name with `reasons` for a person's call)
    on InferenceService `name` and the alias of `registered_model`; returns one line saying what was
    done. Raises DeployError when the cluster refuses (after restoring the alias, for a rollback)."""
    from mlflow import MlflowClient

    from selfguided.components.registry.aliases import alias_version, rollback_champion

    action = decision.action if isinstance(decision, CanaryDecision) else str(decision)
    why = list(decision.reasons) if isinstance(decision, CanaryDecision) else list(reasons)
    if action not in (PROMOTE, ROLLBACK, WAIT):
        raise ValueError(f"canary action {action!r} is none of {PROMOTE}, {ROLLBACK}, {WAIT}")
    if action == WAIT:
        line = "wait: nothing changed" + (f" ({why[0]})" if why else "")
        _say(line)
        return line
    cluster = Cluster(api_client, namespace)
    status = canary_status(cluster, name, mode=mode)
    if status["state"] != "canary":
        raise DeployError(f"no canary is running on InferenceService {cluster.namespace}/{name} "
                          f"(state {status['state']}): nothing to {action}")
    canary_v, stable_v = version_number(status["canary_version"]), version_number(status["stable_version"])
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    champion = alias_version(client, registered_model)
    champion_v = str(champion.version) if champion is not None else ""
    note = (f" by {by}" if by else "") + (": " + "; ".join(why) if why else "")
    for line in why:
        _say(f"{action}: {line}")

    if action == PROMOTE:
        if champion_v != canary_v:
            raise DeployError(f"the canary serves v{canary_v} but `{CHAMPION}` of {registered_model} is "
                              f"{'v' + champion_v if champion_v else 'unset'}: promoting would serve a version the "
                              "registry does not name; roll the canary back, or move the alias first")
        done = promote_canary(cluster, name, mode=mode)
        _tag(client, registered_model, canary_v, f"promoted to 100% of traffic{note}")
        _say(done)
        return done

    if not stable_v:
        raise DeployError(f"the stable side of {cluster.namespace}/{name} names no model version "
                          "(annotation selfguided.dev/previous-model-version): roll back by hand")
    moved = champion_v != stable_v
    if moved:
        rollback_champion(tracking_uri, registered_model, stable_v, by=by or "canary monitor",
                          reason="canary rollback" + (": " + "; ".join(why) if why else ""))
        _say(f"`{CHAMPION}` of {registered_model} moved back from v{champion_v or '-'} to v{stable_v}")
    try:
        done = rollback_canary(cluster, name, mode=mode)
    except DeployError as e:
        if moved and champion_v:
            client.set_registered_model_alias(registered_model, CHAMPION, champion_v)
            _say(f"the cluster refused the rollback; `{CHAMPION}` restored to v{champion_v} (serving unchanged)")
        _tag(client, registered_model, canary_v, f"rollback FAILED on the cluster ({e}); `{CHAMPION}` "
             f"{'restored to v' + champion_v if moved else 'not moved'}{note}")
        raise DeployError(f"canary rollback failed on the cluster, `{CHAMPION}` "
                          f"{'restored to v' + champion_v if moved else 'unchanged'}: {e}") from None
    _tag(client, registered_model, canary_v, f"rolled back: v{stable_v} serves 100% again{note}")
    _say(done)
    return done


def status_lines(status: dict[str, Any]) -> list[str]:
    """`selfguided canary status`, as lines."""
    head = f"InferenceService {status['namespace']}/{status['name']} ({status['mode']}): "
    if status["state"] == "canary":
        return [head + f"canary {status['canary_version']} at {status['percent']}% of traffic, "
                f"stable {status['stable_version']} at {100 - int(status['percent'])}%",
                f"  canary weights: {status['canary_storage_uri']}", f"  stable weights: {status['stable_storage_uri']}"]
    if status["state"] == "rolled-back":
        return [head + f"{status['stable_version']} serves 100%; canary {status['rolled_back_version']} was rolled back"]
    return [head + f"{status['stable_version'] or 'an unrecorded version'} serves 100%; no canary"]
