"""Canary rollout of a new champion on KServe: a share of traffic first, then 100% or back.

Read from KServe's source at tag v0.15.0 (the behaviour is the same at v0.14.0):

- `spec.predictor.canaryTrafficPercent` (pkg/apis/serving/v1beta1/component.go, ComponentExtensionSpec)
  is read only by the Knative reconciler
  (pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go): with it set and a
  `status.components.predictor.latestRolledoutRevision`, the latest revision gets N% and that
  last rolled-out revision (tag `prev`) 100 - N%; without it the latest revision gets 100%. No
  RawDeployment reconciler (reconcilers/raw, deployment, service) reads it: **RawDeployment ignores it**.
- a revision counts as rolled out once it had 100% (inference_service_status.go, PropagateStatus);
  `canaryTrafficPercent: 0` pins all traffic to the last rolled-out revision
  (docs/samples/v1beta1/rollout/README.md, "Rollback and pin the model").
- InferenceService annotations are copied onto the predictor's pod template
  (components/predictor.go), so changing them makes a new Knative revision: annotations change only
  together with storageUri here, never in a promotion.

**Serverless** (Knative; KServe's default mode):

- start: one merge patch: the new storageUri, `canaryTrafficPercent: N` and the version annotations
  (the stable version moves to `selfguided.dev/previous-*`). New revision, N% of traffic.
- promote: `canaryTrafficPercent` removed: the latest (canary) revision gets 100%. No new revision.
- rollback: storageUri and the version annotations back to the stable version, and
  `canaryTrafficPercent: 0`: 100% of traffic at once on the last rolled-out revision (the stable
  one, which never stopped running); the revision the patch makes (same weights as stable) gets 0%.

**RawDeployment** (`serving.kserve.io/deploymentMode: RawDeployment`): a second InferenceService
`<name>-canary` (the stable one's spec with the new storageUri) and a Gateway API HTTPRoute `<name>`
in front whose two backendRefs (the Services `<name>-predictor` and `<name>-canary-predictor` that
KServe's raw mode makes, port 80; pkg/constants/constants.go PredictorServiceName; `-transformer`
ones when the InferenceService has the tracing transformer of manifests/serving/transformer.yaml,
whose canary copy then traces with `--deployment canary`) carry weights 100 - N and N. HTTPRoute, not an Istio VirtualService: it is the portable, GA (v1) API that KServe
v0.15 itself uses for raw mode ingress (reconcilers/ingress/httproute_reconciler.go), and
implementations beyond Istio (Envoy Gateway, Cilium, NGINX, GKE) honour backendRef weights.
The route is applied once, by hand, from manifests/serving/canary-raw (its hostname is the one
clients call, through the Gateway, instead of `<name>.<ns>.svc.cluster.local`); the code only
changes its weights, and refuses to start a raw canary without it (a canary nobody routes to).

- promote: the stable InferenceService gets the new storageUri (its Deployment rolls its pods), the
  route goes to 100/0 and the canary InferenceService is deleted;
- rollback: the route goes to 100/0 (traffic off the canary first), then the canary is deleted.

The mode is a parameter, else the stable InferenceService's `serving.kserve.io/deploymentMode`
annotation, else Serverless. The annotation is there in raw mode even when nobody wrote it: KServe's
defaulting webhook sets it from inferenceservice-config's defaultDeploymentMode when that is
RawDeployment (pkg/apis/serving/v1beta1/inference_service_defaults.go, DefaultInferenceService,
v0.14.0 and v0.15.0); absent, the mode is KServe's default, Serverless.
The deployer Role (manifests/serving/role.yaml) grants exactly the calls made here.
"""

from __future__ import annotations

import copy
from typing import Any

from selfguided.components.serving import kserve
from selfguided.components.serving.kserve import (
    FIELD_MANAGER, MODEL_VERSION_ANNOTATION, PREVIOUS_MODEL_VERSION_ANNOTATION, PREVIOUS_STORAGE_URI_ANNOTATION,
    DeployError, deploy_champion,
)

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
SERVERLESS, RAW = "Serverless", "RawDeployment"
CANARY_SUFFIX = "-canary"
ROUTE_GROUP, ROUTE_VERSION, ROUTE_PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
# The Gateway KServe v0.15 installs for Gateway API ingress (config/configmap/inferenceservice.yaml,
# ingress.kserveIngressGateway "kserve/kserve-ingress-gateway").
DEFAULT_GATEWAY = ("kserve", "kserve-ingress-gateway")
PREDICTOR_PORT = 80  # KServe raw mode's predictor Service port (constants.CommonDefaultHttpPort)
ROLLED_BACK_ANNOTATION = "selfguided.dev/rolled-back-model-version"
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
CANARY_RAW_MANIFESTS = "manifests/serving/canary-raw"  # the HTTPRoute of RawDeployment mode, applied by hand


def entry_service(name: str, component: str = "predictor") -> str:
    """The Service KServe's raw mode puts in front of an InferenceService's component (constants.go
    PredictorServiceName, TransformerServiceName): `<name>-predictor`, or `<name>-transformer`."""
    return f"{name}-{component}"


def entry_component(isvc: dict[str, Any]) -> str:
    """Where requests enter an InferenceService: its transformer when it has one (the tracing proxy of
    manifests/serving/transformer.yaml), else its predictor."""
    return "transformer" if (isvc.get("spec") or {}).get("transformer") else "predictor"


def _as_canary_transformer(spec: dict[str, Any]) -> None:
    """The canary's copy of a tracing transformer (`selfguided serve --proxy-to ... --deployment
    stable`) says `--deployment canary`, so its traces are the canary's (registry/production.py)."""
    for container in ((spec.get("transformer") or {}).get("containers") or []):
        container["args"] = [a.replace("--deployment stable", "--deployment canary") if isinstance(a, str) else a
                             for a in container.get("args") or []]


def canary_name(name: str) -> str:
    return f"{name}{CANARY_SUFFIX}"


def http_route(name: str, namespace: str, canary_percent: int, *, gateway: tuple[str, str] = DEFAULT_GATEWAY,
               hostnames: list[str] | None = None, component: str = "predictor") -> dict[str, Any]:
    """The weighted route of RawDeployment mode: stable 100 - N, canary N (manifests/serving/canary-raw
    holds it at 0, with a hostname)."""
    _check_percent(canary_percent, allow=(0, 100))
    spec: dict[str, Any] = {
        "parentRefs": [{"group": ROUTE_GROUP, "kind": "Gateway", "namespace": gateway[0], "name": gateway[1]}],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                   "backendRefs": _backends(name, canary_percent, component)}],
    }
    if hostnames:
        spec["hostnames"] = list(hostnames)
    return {"apiVersion": f"{ROUTE_GROUP}/{ROUTE_VERSION}", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "selfguided", "app.kubernetes.io/component": "serving"}},
            "spec": spec}


def _backends(name: str, canary_percent: int, component: str = "predictor") -> list[dict[str, Any]]:
    return [{"group": "", "kind": "Service", "name": entry_service(name, component), "port": PREDICTOR_PORT,
             "weight": 100 - canary_percent},
            {"group": "", "kind": "Service", "name": entry_service(canary_name(name), component), "port": PREDICTOR_PORT,
             "weight": canary_percent}]


def _check_percent(percent: int, allow: tuple[int, int] = (1, 99)) -> None:
    if not isinstance(percent, int) or not allow[0] <= percent <= allow[1]:
        raise ValueError(f"canary percent must be a whole number from {allow[0]} to {allow[1]}, got {percent!r}")


class Cluster:
    """The custom-object calls of a rollout, each turning an API error into one DeployError line."""

    def __init__(self, api_client=None, namespace: str | None = None):
        from kubernetes import client

        self.api_client = api_client if api_client is not None else kserve._default_api_client()
        self.namespace = namespace or kserve._default_namespace()
        self.api = client.CustomObjectsApi(self.api_client)

    def _call(self, verb: str, kind: str, name: str, fn, *args, missing_ok: bool = False, **kwargs):
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as e:
            if missing_ok and kserve._status(e).get("reason") == "NotFound" and \
                    (kserve._status(e).get("details") or {}).get("name") == name:
                return None
            if kind == "HTTPRoute" and e.status == 404 and not kserve._status(e):
                raise DeployError(f"the Gateway API is not installed: the cluster has no {ROUTE_PLURAL}."
                                  f"{ROUTE_GROUP}/{ROUTE_VERSION} (needed for a canary in {RAW} mode)") from None
            error = kserve._explain(e, verb, self.namespace, name)
            if kind == "HTTPRoute":
                error = DeployError(str(error).replace(kserve.RESOURCE, f"{ROUTE_PLURAL}.{ROUTE_GROUP}")
                                    .replace("InferenceService", "HTTPRoute"))
            raise error from None
        except kserve._connection_errors() as e:
            raise kserve._unreachable(self.api_client, e) from None

    def _where(self, kind: str) -> tuple[str, str, str, str]:
        return ((kserve.GROUP, kserve.VERSION, self.namespace, kserve.PLURAL) if kind == kserve.KIND
                else (ROUTE_GROUP, ROUTE_VERSION, self.namespace, ROUTE_PLURAL))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self._call("get", kind, name, self.api.get_namespaced_custom_object, *self._where(kind), name,
                          missing_ok=True)

    def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("create", kind, body["metadata"]["name"], self.api.create_namespaced_custom_object,
                          *self._where(kind), body, field_manager=FIELD_MANAGER)

    def patch(self, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("patch", kind, name, self.api.patch_namespaced_custom_object, *self._where(kind), name,
                          body, field_manager=FIELD_MANAGER)

    def delete(self, kind: str, name: str) -> None:
        self._call("delete", kind, name, self.api.delete_namespaced_custom_object, *self._where(kind), name,
                   missing_ok=True)


def deployment_mode(isvc: dict[str, Any], mode: str | None = None) -> str:
    """The rollout mode: `mode` when given, else the InferenceService's annotation, else Serverless."""
    chosen = mode or (isvc.get("metadata", {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION) or SERVERLESS
    if chosen not in (SERVERLESS, RAW):
        raise DeployError(f"deployment mode {chosen!r} has no canary rollout here: use {SERVERLESS} or {RAW}")
    return chosen


def _annotations(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def _percent(isvc: dict[str, Any]) -> int | None:
    return ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")


def _stable(cluster: Cluster, name: str) -> dict[str, Any]:
    isvc = cluster.get(kserve.KIND, name)
    if isvc is None:
        raise DeployError(f"InferenceService {cluster.namespace}/{name} does not exist: nothing to roll out from")
    return isvc


def roll_out(promoted: bool, storage_uri: str, model_version: str, *, canary_percent: int, name: str,
             namespace: str | None = None, api_client=None, mode: str | None = None, **create_options) -> str:
    """What the deploy step runs: the new champion at `canary_percent`% beside the stable one, or,
    with 0 (or when no InferenceService exists yet, or nothing was promoted), `deploy_champion`
    (100% at once; `create_options` are its gpu, node_selector, tolerations)."""
    if canary_percent != 0:
        _check_percent(canary_percent)
    if not promoted or not name or canary_percent == 0:
        return deploy_champion(promoted, storage_uri, model_version, name=name, namespace=namespace,
                               api_client=api_client, **create_options)
    cluster = Cluster(api_client, namespace)
    stable = cluster.get(kserve.KIND, name)
    if stable is None:
        return deploy_champion(True, storage_uri, model_version, name=name, namespace=cluster.namespace,
                               api_client=cluster.api_client, **create_options) + \
            " (the first deployment: no stable version to run a canary beside, 100% at once)"
    if deployment_mode(stable, mode) == SERVERLESS and entry_component(stable) == "transformer":
        # One transformer revision proxies to both predictor revisions: its traces cannot say which
        # answered, so a canary would never be judged. 100% at once, said, rather than that.
        return deploy_champion(True, storage_uri, model_version, name=name, namespace=cluster.namespace,
                               api_client=cluster.api_client, **create_options) + \
            (f" (100% at once, not a {canary_percent}% canary: in {SERVERLESS} mode the tracing transformer is shared "
             f"by both revisions, so canary answers cannot be told from stable ones; use {RAW} for a traced canary)")
    return start_canary(cluster, name, storage_uri, model_version, canary_percent, mode=mode)


def start_canary(cluster: Cluster, name: str, storage_uri: str, model_version: str, percent: int, *,
                 mode: str | None = None) -> str:
    """`model_version` at `percent`% of traffic, the stable version at the rest (module docstring)."""
    _check_percent(percent)
    stable = _stable(cluster, name)
    chosen = deployment_mode(stable, mode)
    stable_version = _annotations(stable).get(MODEL_VERSION_ANNOTATION, "")
    stable_uri = kserve._model_spec(stable).get("storageUri", "")
    where = f"{cluster.namespace}/{name}"
    if stable_uri == storage_uri and stable_version == model_version:
        return f"InferenceService {where} already serves {model_version} from {storage_uri}: unchanged, no canary"
    if chosen == SERVERLESS:
        if _percent(stable) not in (None, 0, 100):
            raise DeployError(f"InferenceService {where} already runs a canary "
                              f"({_annotations(stable).get(MODEL_VERSION_ANNOTATION)} at {_percent(stable)}%): promote "
                              "or roll it back first (`selfguided canary promote|rollback`)")
        patch = kserve.pointing_patch(storage_uri, model_version, stable)
        patch["spec"]["predictor"]["canaryTrafficPercent"] = percent
        patch["metadata"]["annotations"][ROLLED_BACK_ANNOTATION] = None
        cluster.patch(kserve.KIND, name, patch)
        return (f"canary started on InferenceService {where} ({SERVERLESS}): {model_version} from {storage_uri} at "
                f"{percent}% of traffic, {stable_version or 'the previous version'} at {100 - percent}%")
    canary = copy.deepcopy({k: stable[k] for k in ("apiVersion", "kind", "spec")})
    canary["spec"]["predictor"]["model"]["storageUri"] = storage_uri
    canary["spec"]["predictor"].pop("canaryTrafficPercent", None)
    _as_canary_transformer(canary["spec"])
    canary["metadata"] = {"name": canary_name(name), "namespace": cluster.namespace,
                          "labels": dict((stable.get("metadata") or {}).get("labels") or {}),
                          "annotations": {k: v for k, v in _annotations(stable).items()  # autoscaling etc.
                                          if not k.startswith("selfguided.dev/") and k != _LAST_APPLIED}
                          | {DEPLOYMENT_MODE_ANNOTATION: RAW, MODEL_VERSION_ANNOTATION: model_version,
                             PREVIOUS_MODEL_VERSION_ANNOTATION: stable_version,
                             PREVIOUS_STORAGE_URI_ANNOTATION: stable_uri}}
    _route(cluster, name)  # before anything is created
    existing = cluster.get(kserve.KIND, canary_name(name))
    if existing is not None:
        raise DeployError(f"InferenceService {cluster.namespace}/{canary_name(name)} already runs a canary "
                          f"({_annotations(existing).get(MODEL_VERSION_ANNOTATION)}): promote or roll it back first")
    cluster.create(kserve.KIND, canary)
    _set_route(cluster, name, percent, component=entry_component(stable))
    return (f"canary started in {RAW} mode: InferenceService {cluster.namespace}/{canary_name(name)} serves "
            f"{model_version} from {storage_uri}; HTTPRoute {name} sends it {percent}% of traffic, "
            f"{stable_version or 'the stable version'} ({name}) {100 - percent}%")


def _route(cluster: Cluster, name: str) -> dict[str, Any]:
    route = cluster.get("HTTPRoute", name)
    if route is None:
        raise DeployError(f"HTTPRoute {cluster.namespace}/{name} does not exist: a {RAW} canary is a weighted route "
                          f"that clients already call; apply {CANARY_RAW_MANIFESTS} (its hostname set to the one "
                          "clients use) and point clients at the Gateway first")
    return route


def _set_route(cluster: Cluster, name: str, percent: int, rolled_back: str | None = None, *,
               component: str = "predictor") -> None:
    """Route weights, and the rolled-back version noted on the route (in raw mode a note on the stable
    InferenceService would reach its pod template and restart its pods)."""
    route = _route(cluster, name)
    rules = copy.deepcopy((route.get("spec") or {}).get("rules") or [{}])
    for rule in rules:  # a user's own matches, filters and hostnames stay; only the backends change
        rule["backendRefs"] = _backends(name, percent, component)
    cluster.patch("HTTPRoute", name, {"metadata": {"annotations": {ROLLED_BACK_ANNOTATION: rolled_back}},
                                      "spec": {"rules": rules}})


def canary_status(cluster: Cluster, name: str, *, mode: str | None = None) -> dict[str, Any]:
    """Where the rollout stands: mode, state (none | canary | rolled-back), versions, percent."""
    stable = _stable(cluster, name)
    chosen = deployment_mode(stable, mode)
    notes = _annotations(stable)
    status: dict[str, Any] = {"name": name, "namespace": cluster.namespace, "mode": chosen, "state": "none",
                              "percent": 0, "stable_version": notes.get(MODEL_VERSION_ANNOTATION, ""),
                              "stable_storage_uri": kserve._model_spec(stable).get("storageUri", ""),
                              "canary_version": "", "canary_storage_uri": "",
                              "rolled_back_version": notes.get(ROLLED_BACK_ANNOTATION, "")}
    if chosen == SERVERLESS:
        percent = _percent(stable)
        if percent not in (None, 0, 100):
            status.update(state="canary", percent=percent, canary_version=status["stable_version"],
                          canary_storage_uri=status["stable_storage_uri"],
                          stable_version=notes.get(PREVIOUS_MODEL_VERSION_ANNOTATION, ""),
                          stable_storage_uri=notes.get(PREVIOUS_STORAGE_URI_ANNOTATION, ""))
        elif percent == 0 and status["rolled_back_version"]:
            status["state"] = "rolled-back"
        return status
    canary = cluster.get(kserve.KIND, canary_name(name))
    route = cluster.get("HTTPRoute", name)
    status["rolled_back_version"] = _annotations(route).get(ROLLED_BACK_ANNOTATION, "")
    weights = {b.get("name"): b.get("weight", 1) for rule in ((route or {}).get("spec") or {}).get("rules", [])
               for b in rule.get("backendRefs", [])}
    if canary is not None:
        status.update(state="canary", percent=weights.get(entry_service(canary_name(name), entry_component(stable)), 0),
                      canary_version=_annotations(canary).get(MODEL_VERSION_ANNOTATION, ""),
                      canary_storage_uri=kserve._model_spec(canary).get("storageUri", ""))
    elif status["rolled_back_version"]:
        status["state"] = "rolled-back"
    return status


def promote_canary(cluster: Cluster, name: str, *, mode: str | None = None) -> str:
    """The canary to 100% of traffic (module docstring)."""
    status = canary_status(cluster, name, mode=mode)
    where = f"{cluster.namespace}/{name}"
    if status["state"] != "canary":
        raise DeployError(f"no canary is running on InferenceService {where}: nothing to promote")
    if status["mode"] == SERVERLESS:
        cluster.patch(kserve.KIND, name, {"spec": {"predictor": {"canaryTrafficPercent": None}}})
        return (f"canary promoted on InferenceService {where} ({SERVERLESS}): {status['canary_version']} now gets "
                f"100% of traffic (canaryTrafficPercent removed), replacing {status['stable_version']}")
    stable = _stable(cluster, name)
    cluster.patch(kserve.KIND, name, kserve.pointing_patch(status["canary_storage_uri"], status["canary_version"],
                                                           stable))
    _set_route(cluster, name, 0, component=entry_component(stable))
    return (f"canary promoted in {RAW} mode: InferenceService {where} now serves {status['canary_version']} from "
            f"{status['canary_storage_uri']} with 100% of traffic; {_delete_canary(cluster, name)}")


def _delete_canary(cluster: Cluster, name: str) -> str:
    """Delete the canary InferenceService once no traffic goes to it: a failure here is cleanup left
    to do (its GPU stays held), not a failed rollout, so it is said rather than raised."""
    try:
        cluster.delete(kserve.KIND, canary_name(name))
    except DeployError as e:
        return (f"{canary_name(name)} NOT deleted, although no traffic goes to it ({e}): delete it by hand "
                f"(kubectl -n {cluster.namespace} delete inferenceservice {canary_name(name)})")
    return f"{canary_name(name)} deleted"


def rollback_canary(cluster: Cluster, name: str, *, mode: str | None = None) -> str:
    """All traffic back on the stable version, the canary's weights out of service (module docstring)."""
    status = canary_status(cluster, name, mode=mode)
    where = f"{cluster.namespace}/{name}"
    if status["state"] != "canary":
        raise DeployError(f"no canary is running on InferenceService {where}: nothing to roll back")
    if status["mode"] == SERVERLESS:
        stable = _stable(cluster, name)
        patch = kserve.pointing_patch(status["stable_storage_uri"], status["stable_version"], stable)
        patch["metadata"]["annotations"][ROLLED_BACK_ANNOTATION] = status["canary_version"]
        patch["spec"]["predictor"]["canaryTrafficPercent"] = 0
        cluster.patch(kserve.KIND, name, patch)
        return (f"canary rolled back on InferenceService {where} ({SERVERLESS}): 100% of traffic on "
                f"{status['stable_version']} (canaryTrafficPercent 0 pins the last rolled-out revision), "
                f"{status['canary_version']} out of service")
    _set_route(cluster, name, 0, rolled_back=status["canary_version"], component=entry_component(_stable(cluster, name)))
    return (f"canary rolled back in {RAW} mode: HTTPRoute {name} sends 100% to {status['stable_version']}; "
            f"canary {status['canary_version']}: {_delete_canary(cluster, name)}")
