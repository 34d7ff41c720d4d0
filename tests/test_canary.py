"""Canary rollout with automatic rollback (issue 29): the decision on live scores, the KServe side in
both deployment modes, and the one-transaction rollback with the MLflow alias.

The cluster is a stand-in Kubernetes API (http.server on 127.0.0.1, the real `kubernetes` client
talking to it): it stores InferenceServices and HTTPRoutes as the API server would (metadata.uid,
resourceVersion, generation set by the server; JSON merge patches applied; deletes), answers with
Status bodies, and can fail a verb with a 500. Beside it, a small model of what KServe v0.15.0 does
with what is stored (`KnativeTraffic`: revisions and the traffic split of
reconcilers/knative/ksvc_reconciler.go and PropagateStatus), so the tests assert where traffic
goes, not only what was patched. MLflow is a SQLite store (the alias and the tags are real).
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import shutil
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from kubernetes import client as k8s
from registry_fixtures import empty_store  # noqa: F401  (fixture)
from servers import QuietJsonHandler, local_http_server, serving
from test_deploy import merge_patch

from selfguided.components.evaluation.canary_decision import (
    CANARY, PROMOTE, ROLLBACK, STABLE, WAIT, CanaryPolicy, CanaryScore, decide_canary,
)
from selfguided.components.evaluation.statistics import QUESTION_SD, judge_scores
from selfguided.components.registry.names import CHAMPION, PREVIOUS_CHAMPION_TAG
from selfguided.components.serving import canary
from selfguided.components.serving.canary_apply import CANARY_TAG, apply_canary_decision
from selfguided.components.serving.kserve import DeployError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from canary_simulation import simulate  # noqa: E402

NAMESPACE = "kubeflow-user-example-com"
NAME = "korean-writing-assistant"
MODEL = NAME
URI = {v: f"s3://selfguided-mlflow/artifacts/1/run{v}/artifacts/merged" for v in (3, 4, 5)}
ROUTE_CRD = REPO / "tests/data/gateway-api-v1.2.1/gateway.networking.k8s.io_httproutes.yaml"
PLURALS = {"inferenceservices": ("serving.kserve.io", "v1beta1"), "httproutes": ("gateway.networking.k8s.io", "v1")}


@functools.cache
def route_schema() -> dict:
    """The openAPIV3Schema of HTTPRoute v1 in Gateway API v1.2.1's CRD (tests/data, from kserve v0.15.0)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(ROUTE_CRD.read_text(encoding="utf-8"), Loader=loader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


class FakeCluster:
    """A recording stand-in for the namespaced custom-object endpoints of the Kubernetes API."""

    def __init__(self):
        self.objects: dict[tuple[str, str], dict] = {}  # (plural, name) -> stored object
        self.requests: list[dict] = []
        self.fail: dict[tuple[str, str], int] = {}  # (verb, plural) -> HTTP status to answer with
        self.counter = itertools.count(1)
        fake = self

        class Handler(QuietJsonHandler):
            def _status(self, code, reason, message, plural, name=None):
                details = {"group": PLURALS.get(plural, ("",))[0], "kind": plural} | ({"name": name} if name else {})
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                                  "reason": reason, "details": details, "code": code})

            def _handle(self, verb):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                body = json.loads(raw) if raw else None
                fake.requests.append({"method": self.command, "path": path, "query": query, "body": body,
                                      "content_type": self.headers.get("Content-Type")})
                parts = path.strip("/").split("/")  # apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>]
                if len(parts) < 6 or parts[5] not in PLURALS or parts[4] != NAMESPACE:
                    return self._send(404, "404 page not found\n", "text/plain; charset=utf-8")
                plural, name = parts[5], (parts[6] if len(parts) > 6 else None)
                if (verb, plural) in fake.fail:
                    code = fake.fail[(verb, plural)]
                    return self._status(code, "InternalError", "Internal error occurred: etcdserver: request timed out",
                                        plural, name)
                key = (plural, name or (body or {}).get("metadata", {}).get("name"))
                if verb == "create":
                    if key in fake.objects:
                        return self._status(409, "AlreadyExists", f'{plural} "{key[1]}" already exists', plural, key[1])
                    stored = copy.deepcopy(body)
                    stored["metadata"] |= {"uid": f"uid-{next(fake.counter)}", "generation": 1,
                                           "resourceVersion": str(next(fake.counter)),
                                           "creationTimestamp": "2026-12-07T16:00:00Z"}
                    fake.objects[key] = stored
                    return self._send(201, stored)
                if key not in fake.objects:
                    return self._status(404, "NotFound", f'{plural} "{name}" not found', plural, name)
                if verb == "get":
                    return self._send(200, fake.objects[key])
                if verb == "patch":
                    old = fake.objects[key]
                    new = merge_patch(old, body)
                    new["metadata"]["resourceVersion"] = str(next(fake.counter))
                    if new.get("spec") != old.get("spec"):
                        new["metadata"]["generation"] = old["metadata"]["generation"] + 1
                    fake.objects[key] = new
                    return self._send(200, new)
                if verb == "delete":
                    del fake.objects[key]
                    return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

            def do_GET(self):
                self._handle("get")

            def do_POST(self):
                self._handle("create")

            def do_PATCH(self):
                self._handle("patch")

            def do_DELETE(self):
                self._handle("delete")

        self.server, self.host = local_http_server(Handler)

    def api_client(self) -> k8s.ApiClient:
        return k8s.ApiClient(k8s.Configuration(host=self.host))

    def isvc(self, name=NAME) -> dict | None:
        return self.objects.get(("inferenceservices", name))

    def route(self) -> dict | None:
        return self.objects.get(("httproutes", NAME))


class KnativeTraffic:
    """What KServe v0.15.0's Knative reconciler makes of the stored InferenceService: a new revision
    whenever the predictor's template (spec without canaryTrafficPercent, plus the annotations, which
    predictor.go copies onto the pod template) changes; the split of ksvc_reconciler.go; the
    rolled-out revisions of PropagateStatus. Revisions are taken as ready at once."""

    def __init__(self):
        self.revisions: list[tuple[str, str]] = []  # (template key, storageUri)
        self.latest_rolled_out: int | None = None
        self.traffic: dict[int, int] = {}

    def reconcile(self, isvc: dict) -> None:
        predictor = {k: v for k, v in isvc["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
        template = json.dumps([predictor, isvc["metadata"].get("annotations")], sort_keys=True)
        if not self.revisions or self.revisions[-1][0] != template:
            self.revisions.append((template, predictor["model"]["storageUri"]))
        latest = len(self.revisions) - 1
        percent = isvc["spec"]["predictor"].get("canaryTrafficPercent")
        if percent is not None and self.latest_rolled_out is not None:
            self.traffic = {latest: percent}
            if percent < 100:
                self.traffic[self.latest_rolled_out] = self.traffic.get(self.latest_rolled_out, 0) + 100 - percent
        else:
            self.traffic = {latest: 100}
        if self.traffic.get(latest) == 100:
            self.latest_rolled_out = latest

    def served(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for revision, percent in self.traffic.items():
            if percent:
                out[self.revisions[revision][1]] = out.get(self.revisions[revision][1], 0) + percent
        return out


def apply_route(fake: FakeCluster) -> None:
    """`kubectl apply -k manifests/serving/canary-raw`: the HTTPRoute, in the namespace, as stored."""
    route = yaml.safe_load((REPO / canary.CANARY_RAW_MANIFESTS / "httproute.yaml").read_text(encoding="utf-8"))
    route["metadata"] |= {"namespace": NAMESPACE, "uid": "uid-route", "generation": 1, "resourceVersion": "1"}
    fake.objects[("httproutes", NAME)] = route


def raw_served(fake: FakeCluster) -> dict[str, int]:
    """Where a RawDeployment's traffic goes: the HTTPRoute's weights over the InferenceServices behind
    the predictor Services (everything on the stable one while no route exists)."""
    stable = fake.isvc()["spec"]["predictor"]["model"]["storageUri"]
    if fake.route() is None:
        return {stable: 100}
    out: dict[str, int] = {}
    for ref in fake.route()["spec"]["rules"][0]["backendRefs"]:
        name = ref["name"].removesuffix("-predictor").removesuffix("-transformer")
        isvc = fake.isvc(name)
        assert isvc is not None or ref["weight"] == 0, f"weight {ref['weight']} on {name}, which does not exist"
        if ref["weight"]:
            uri = isvc["spec"]["predictor"]["model"]["storageUri"]
            out[uri] = out.get(uri, 0) + ref["weight"]
    return out


@pytest.fixture
def fake():
    cluster = FakeCluster()
    with serving(cluster.server):
        yield cluster


@pytest.fixture
def registry(tmp_path, empty_store):  # noqa: F811  (fixture)
    """Versions 3 and 4 of the model, v4 the champion that replaced v3 (as the gate left them)."""
    from mlflow import MlflowClient

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    for v in (1, 2, 3, 4):
        client.create_model_version(MODEL, URI.get(v, f"s3://selfguided-mlflow/artifacts/1/run{v}/artifacts/merged"))
    client.set_registered_model_alias(MODEL, CHAMPION, "4")
    client.set_model_version_tag(MODEL, "4", PREVIOUS_CHAMPION_TAG, "3")
    return uri, client


def live_scores(seed: int, shift: dict[str, float], n_canary: int = 150, n_stable: int = 600) -> list[CanaryScore]:
    """Jury scores of live answers (benchmarks/canary_simulation.py's model), `shift` on the canary."""
    rng = np.random.default_rng(seed)
    out = []
    for category in ("closed_qa", "generation", "rewrite"):
        for side, n, d in ((CANARY, n_canary, shift.get(category, 0.0)), (STABLE, n_stable, 0.0)):
            out += [CanaryScore(side, category, s) for s in judge_scores(rng, 5.5 + d + rng.normal(0, QUESTION_SD, n))]
    return out


def _roll_out(fake, version, percent, mode=None):
    return canary.roll_out(True, URI[version], f"{MODEL}/{version}", canary_percent=percent, name=NAME,
                           namespace=NAMESPACE, api_client=fake.api_client(), mode=mode)


def _apply(fake, registry, decision, mode=None):
    return apply_canary_decision(decision, name=NAME, namespace=NAMESPACE, tracking_uri=registry[0],
                                 registered_model=MODEL, api_client=fake.api_client(), mode=mode)


def _start(fake, mode):
    """v3 deployed (100%), then v4 as a canary at 10%; returns the traffic model (Serverless)."""
    knative = KnativeTraffic()
    assert "created" in _roll_out(fake, 3, 10)  # the first deployment has no stable side: 100% at once
    if mode == canary.RAW:
        # KServe's defaulting webhook writes the mode onto every InferenceService of a RawDeployment
        # cluster (inference_service_defaults.go); the route is applied by hand from the overlay.
        fake.objects[("inferenceservices", NAME)]["metadata"].setdefault("annotations", {})[
            canary.DEPLOYMENT_MODE_ANNOTATION] = canary.RAW
        apply_route(fake)
    knative.reconcile(fake.isvc())
    message = _roll_out(fake, 4, 10)
    assert "canary started" in message and f"{MODEL}/4" in message and "10%" in message
    assert _served(fake, knative, mode) == {URI[4]: 10, URI[3]: 90}
    return knative


def _served(fake, knative, mode):
    if mode == canary.RAW:
        return raw_served(fake)
    knative.reconcile(fake.isvc())
    return knative.served()


@pytest.mark.parametrize("mode", [canary.SERVERLESS, canary.RAW])
def test_deploy_canary_rollback(fake, registry, mode):
    uri, client = registry
    knative = _start(fake, mode)
    decision = decide_canary(live_scores(1, {"closed_qa": -1.5}))
    assert decision.action == ROLLBACK and decision.reasons[0].startswith("closed_qa")

    message = _apply(fake, registry, decision)

    assert "rolled back" in message
    assert _served(fake, knative, mode) == {URI[3]: 100}
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "3", "the alias follows the cluster"
    tag = client.get_model_version(MODEL, "4").tags[CANARY_TAG]
    assert tag.startswith("rolled back: v3 serves 100% again") and "closed_qa" in tag
    if mode == canary.RAW:
        assert fake.isvc(canary.canary_name(NAME)) is None, "the canary's GPU is given back"
        assert fake.isvc()["metadata"]["generation"] == 1, "the stable predictor was not touched (no restart)"
    else:
        predictor = fake.isvc()["spec"]["predictor"]
        assert predictor["canaryTrafficPercent"] == 0 and predictor["model"]["storageUri"] == URI[3]
    status = canary.canary_status(canary.Cluster(fake.api_client(), NAMESPACE), NAME)
    assert status["state"] == "rolled-back" and status["rolled_back_version"] == f"{MODEL}/4"

    # The next champion starts a canary beside the same stable version.
    _roll_out(fake, 5, 20)
    assert _served(fake, knative, mode) == {URI[5]: 20, URI[3]: 80}


@pytest.mark.parametrize("mode", [canary.SERVERLESS, canary.RAW])
def test_deploy_canary_full(fake, registry, mode):
    uri, client = registry
    knative = _start(fake, mode)
    revisions = len(knative.revisions)
    decision = decide_canary(live_scores(2, {}))
    assert decision.action == PROMOTE, decision.reasons

    message = _apply(fake, registry, decision)

    assert "promoted" in message
    assert _served(fake, knative, mode) == {URI[4]: 100}
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "4"
    assert client.get_model_version(MODEL, "4").tags[CANARY_TAG].startswith("promoted to 100% of traffic")
    if mode == canary.RAW:
        assert fake.isvc(canary.canary_name(NAME)) is None
        assert fake.isvc()["metadata"]["annotations"]["selfguided.dev/model-version"] == f"{MODEL}/4"
    else:
        assert "canaryTrafficPercent" not in fake.isvc()["spec"]["predictor"]
        assert len(knative.revisions) == revisions, "a promotion must not start a new revision (pod restart)"
    status = canary.canary_status(canary.Cluster(fake.api_client(), NAMESPACE), NAME)
    assert status["state"] == "none" and status["stable_version"] == f"{MODEL}/4"


def test_straight_to_100_after_a_rollback_clears_the_pin(fake, registry):
    knative = _start(fake, canary.SERVERLESS)
    _apply(fake, registry, "rollback")
    assert "patched" in _roll_out(fake, 5, 0)
    assert "canaryTrafficPercent" not in fake.isvc()["spec"]["predictor"]
    assert _served(fake, knative, canary.SERVERLESS) == {URI[5]: 100}


@pytest.mark.parametrize("mode, failing", [(canary.SERVERLESS, ("patch", "inferenceservices")),
                                           (canary.RAW, ("patch", "httproutes"))])
def test_a_refused_rollback_restores_the_alias(fake, registry, mode, failing, capsys):
    uri, client = registry
    knative = _start(fake, mode)
    fake.fail[failing] = 500
    with pytest.raises(DeployError, match="rollback failed on the cluster, `champion` restored to v4") as err:
        _apply(fake, registry, decide_canary(live_scores(1, {"closed_qa": -1.5})))
    assert "HTTP 500" in str(err.value)
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "4", "alias and cluster disagree"
    assert "rollback FAILED on the cluster" in client.get_model_version(MODEL, "4").tags[CANARY_TAG]
    assert _served(fake, knative, mode) == {URI[4]: 10, URI[3]: 90}, "the canary keeps its share, as before"
    printed = capsys.readouterr().out
    assert "moved back from v4 to v3" in printed and "restored to v4" in printed
    fake.fail.clear()  # the retry succeeds
    _apply(fake, registry, "rollback")
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "3"
    assert _served(fake, knative, mode) == {URI[3]: 100}


def test_a_raw_canary_that_cannot_be_deleted_is_still_rolled_back(fake, registry):
    """Once the route sends it nothing, the canary's deletion is cleanup: said, not a failed rollback."""
    uri, client = registry
    knative = _start(fake, canary.RAW)
    fake.fail[("delete", "inferenceservices")] = 500
    message = _apply(fake, registry, "rollback")
    assert f"{NAME}-canary NOT deleted" in message and "delete it by hand" in message
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "3"
    assert _served(fake, knative, canary.RAW) == {URI[3]: 100}


def test_a_canary_that_is_not_the_champion_is_not_promoted(fake, registry):
    _start(fake, canary.SERVERLESS)
    registry[1].set_registered_model_alias(MODEL, CHAMPION, "3")
    with pytest.raises(DeployError, match="not name"):
        _apply(fake, registry, "promote")
    assert fake.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_wait_changes_nothing(fake, registry):
    _start(fake, canary.SERVERLESS)
    before = len(fake.requests)
    assert _apply(fake, registry, decide_canary(live_scores(3, {}, n_canary=10))).startswith("wait")
    assert len(fake.requests) == before


def test_a_rerun_with_the_stable_version_changes_nothing(fake):
    _roll_out(fake, 3, 10)
    fake.requests.clear()
    assert "unchanged, no canary" in _roll_out(fake, 3, 10)
    assert {r["method"] for r in fake.requests} == {"GET"}


def test_one_canary_at_a_time(fake):
    _start(fake, canary.SERVERLESS)
    with pytest.raises(DeployError, match="already runs a canary"):
        _roll_out(fake, 5, 10)


def test_raw_route_and_canary_validate(fake):
    """The objects of a RawDeployment canary: the HTTPRoute with the canary's weight passes Gateway API
    v1.2.1's own schema (tests/data, from kserve v0.15.0); the canary InferenceService is the stable
    one's spec with the new weights and none of the server's fields."""
    _start(fake, canary.RAW)
    jsonschema.validate(fake.route(), route_schema())
    broken = copy.deepcopy(fake.route())
    broken["spec"]["rules"][0]["backendRefs"][0]["weight"] = 1_000_001
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, route_schema())
    created = [r["body"] for r in fake.requests if r["method"] == "POST" and r["path"].endswith("inferenceservices")]
    canary_isvc = created[-1]
    assert canary_isvc["metadata"]["name"] == f"{NAME}-canary" and "uid" not in canary_isvc["metadata"]
    stable = fake.isvc()
    assert canary_isvc["spec"]["predictor"] | {"model": None} == stable["spec"]["predictor"] | {"model": None}
    assert canary_isvc["spec"]["predictor"]["model"]["storageUri"] == URI[4]


def test_the_decision_on_clear_cases():
    assert decide_canary([]).action == WAIT
    few = decide_canary(live_scores(4, {}, n_canary=10))
    assert few.action == WAIT and "20 judged answers" in few.reasons[0]
    assert decide_canary(live_scores(5, {"rewrite": -2.0}, n_canary=40)).action == ROLLBACK
    within = decide_canary(live_scores(6, {c: -0.1 for c in ("closed_qa", "generation", "rewrite")}, n_canary=2000,
                                       n_stable=4000))
    assert within.action == PROMOTE, "a regression well within the tolerance is promoted once the data says so"
    with pytest.raises(ValueError):
        decide_canary([CanaryScore("blue", "x", 5.0)])
    with pytest.raises(ValueError):
        CanaryPolicy(alpha=0.7)


def test_simulated_error_rates():
    """Loose bounds on benchmarks/canary_simulation.py's figures (400 runs each: false rollback 0.2% when
    equal, a -1.0 regression never promoted and rolled back in 78.8% within 100 answers per category)."""
    equal = simulate({}, reps=60, seed=11)
    regressed = simulate({"closed_qa": -1.0}, reps=60, seed=12)
    assert equal[ROLLBACK] <= 3 / 60 and equal[PROMOTE] >= 0.4
    assert regressed[PROMOTE] == 0 and regressed[ROLLBACK] >= 0.5


def test_a_raw_canary_needs_the_route_clients_call(fake):
    _roll_out(fake, 3, 10, mode=canary.RAW)
    fake.requests.clear()
    with pytest.raises(DeployError, match="apply manifests/serving/canary-raw"):
        _roll_out(fake, 4, 10, mode=canary.RAW)
    assert {r["method"] for r in fake.requests} == {"GET"}, "nothing may be created without the route"


def _render(kustomization: str) -> list[dict]:
    import subprocess

    from manifest_tools import kubectl

    proc = subprocess.run([kubectl(), "kustomize", str(REPO / kustomization)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _isvc_checks(isvc: dict) -> None:
    """What tests/test_serving_manifests.py checks of an InferenceService: KServe's predictor fields
    only, and the predictor's pod and container fields against the core/v1 Pod schema."""
    from test_serving_manifests import KSERVE_PREDICTOR_FIELDS, _predictor_as_pod, _schema_error

    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= KSERVE_PREDICTOR_FIELDS | {"serviceAccountName", "nodeSelector", "tolerations"}
    percent = predictor.get("canaryTrafficPercent")
    assert percent is None or (isinstance(percent, int) and 0 <= percent <= 100)  # an int64 percentage in KServe
    assert _schema_error(_predictor_as_pod(isvc)) is None, _schema_error(_predictor_as_pod(isvc))


def test_rendered_manifests_validate_for_both_modes(fake):
    """Serverless: manifests/serving (validated in full by test_serving_manifests.py) and the
    InferenceService as a canary leaves it. RawDeployment: manifests/serving/canary-raw's HTTPRoute
    against the Gateway API CRD schema, and the canary InferenceService the code creates from
    inferenceservice.yaml, which is inferenceservice-canary.yaml (one description)."""
    stable = yaml.safe_load((REPO / "manifests/serving/inferenceservice.yaml").read_text(encoding="utf-8"))
    stable["metadata"] |= {"namespace": NAMESPACE, "uid": "uid-0", "generation": 1, "resourceVersion": "1"}
    stable["metadata"]["annotations"]["selfguided.dev/model-version"] = f"{MODEL}/3"
    stable["spec"]["predictor"]["model"]["storageUri"] = URI[3]
    fake.objects[("inferenceservices", NAME)] = copy.deepcopy(stable)
    _roll_out(fake, 4, 10, mode=canary.SERVERLESS)
    _isvc_checks(fake.isvc())
    assert fake.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 10

    (route,) = _render(canary.CANARY_RAW_MANIFESTS)
    jsonschema.validate(route, route_schema())
    assert route["metadata"]["namespace"] == NAMESPACE == _render(kserve_manifests := "manifests/serving")[0][
        "metadata"]["namespace"], f"the route and {kserve_manifests} must share the profile namespace"
    expected = canary.http_route(NAME, NAMESPACE, 0, hostnames=route["spec"]["hostnames"])
    assert route["spec"] == expected["spec"], "the committed route is the one canary.py re-weights"

    fake.objects.clear()
    stable["metadata"]["annotations"][canary.DEPLOYMENT_MODE_ANNOTATION] = canary.RAW
    fake.objects[("inferenceservices", NAME)] = stable
    apply_route(fake)
    _roll_out(fake, 4, 10)
    created = fake.isvc(canary.canary_name(NAME))
    template = yaml.safe_load((REPO / canary.CANARY_RAW_MANIFESTS / "inferenceservice-canary.yaml").read_text("utf-8"))
    template["metadata"]["namespace"] = NAMESPACE  # applied by hand with -n, as inferenceservice.yaml
    for isvc in (created, template):
        _isvc_checks(isvc)
    template["spec"]["predictor"]["model"]["storageUri"] = URI[4]
    assert created["spec"] == template["spec"]
    assert created["metadata"]["name"] == template["metadata"]["name"]
    assert set(created["metadata"]["annotations"]) >= set(template["metadata"]["annotations"])


def _kubeconfig(fake, monkeypatch, tmp_path):
    """This process outside a pod, with a kubeconfig whose context is the stand-in and NAMESPACE."""
    from selfguided.components.serving import kserve

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "dev", "cluster": {"server": fake.host}}],
        "users": [{"name": "dev", "user": {"token": "kubeconfig-token"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "dev", "namespace": NAMESPACE}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(kserve, "SERVICE_ACCOUNT_NAMESPACE_FILE", str(tmp_path / "not-in-a-pod"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_the_deploy_step_starts_a_canary_and_says_so(fake, monkeypatch, tmp_path, capsys):
    from selfguided.components.steps.deploy import deploy

    _kubeconfig(fake, monkeypatch, tmp_path)
    step = deploy.python_func
    first = step(promoted=True, storage_uri=URI[3], model_version=f"{MODEL}/3", service_name=NAME, namespace="")
    assert first.startswith("created InferenceService") and "100% at once" in first
    second = step(promoted=True, storage_uri=URI[4], model_version=f"{MODEL}/4", service_name=NAME, namespace="",
                  canary_percent=25)
    assert second.startswith("canary started") and "25% of traffic" in second and f"{MODEL}/3 at 75%" in second
    assert f"[selfguided] deploy: {second}" in capsys.readouterr().out
    assert fake.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 25
    with pytest.raises(ValueError, match="from 1 to 99"):
        step(promoted=True, storage_uri=URI[5], model_version=f"{MODEL}/5", service_name=NAME, namespace="",
             canary_percent=100)


def test_the_cli_reads_the_kubeconfig_and_moves_both_sides(fake, registry, monkeypatch, tmp_path, capsys):
    from selfguided.pipelines.cli.main import main

    _kubeconfig(fake, monkeypatch, tmp_path)
    _start(fake, canary.SERVERLESS)

    assert main(["canary", "status"]) == 0
    assert f"canary {MODEL}/4 at 10% of traffic, stable {MODEL}/3 at 90%" in capsys.readouterr().out
    assert main(["canary", "rollback", "--tracking-uri", registry[0], "--reason", "closed_qa worse", "--by", "ops"]) == 0
    assert "canary rolled back" in capsys.readouterr().out
    assert str(registry[1].get_model_version_by_alias(MODEL, CHAMPION).version) == "3"
    assert registry[1].get_model_version(MODEL, "4").tags[CANARY_TAG] == "rolled back: v3 serves 100% again by ops: " \
        "closed_qa worse"
    assert main(["canary", "promote", "--tracking-uri", registry[0]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("selfguided canary promote: no canary is running") and err.count("\n") == 1
    with pytest.raises(SystemExit) as bad:
        main(["canary", "pause"])
    assert bad.value.code == 2


def _traced_stable(fake, mode):
    """manifests/serving/transformer.yaml as stored, serving v3 in `mode`."""
    stable = yaml.safe_load((REPO / "manifests/serving/transformer.yaml").read_text(encoding="utf-8"))
    stable["metadata"] |= {"namespace": NAMESPACE, "uid": "uid-0", "generation": 1, "resourceVersion": "1"}
    stable["metadata"]["annotations"] |= {"selfguided.dev/model-version": f"{MODEL}/3"} | (
        {canary.DEPLOYMENT_MODE_ANNOTATION: mode} if mode == canary.RAW else {})
    stable["spec"]["predictor"]["model"]["storageUri"] = URI[3]
    fake.objects[("inferenceservices", NAME)] = stable
    return stable


def test_a_serverless_traced_service_is_not_given_an_unjudgeable_canary(fake):
    _traced_stable(fake, canary.SERVERLESS)
    message = _roll_out(fake, 4, 10)
    assert message.startswith("patched") and "100% at once, not a 10% canary" in message
    predictor = fake.isvc()["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor and predictor["model"]["storageUri"] == URI[4]


def test_a_raw_canary_of_a_traced_service_routes_to_its_transformers_and_traces_as_canary(fake, registry):
    """With the tracing transformer (manifests/serving/transformer.yaml) requests enter through
    `<name>-transformer`; the canary's copy writes its traces with deployment=canary."""
    stable = _traced_stable(fake, canary.RAW)
    apply_route(fake)
    _roll_out(fake, 4, 10)

    backends = {b["name"]: b["weight"] for b in fake.route()["spec"]["rules"][0]["backendRefs"]}
    assert backends == {f"{NAME}-transformer": 90, f"{NAME}-canary-transformer": 10}
    jsonschema.validate(fake.route(), route_schema())
    script = " ".join(fake.isvc(canary.canary_name(NAME))["spec"]["transformer"]["containers"][0]["args"])
    assert "--deployment canary" in script and "--deployment stable" not in script
    assert "--deployment stable" in " ".join(stable["spec"]["transformer"]["containers"][0]["args"])
    assert raw_served(fake) == {URI[4]: 10, URI[3]: 90}
    status = canary.canary_status(canary.Cluster(fake.api_client(), NAMESPACE), NAME)
    assert status["state"] == "canary" and status["percent"] == 10

    _apply(fake, registry, "rollback")
    backends = {b["name"]: b["weight"] for b in fake.route()["spec"]["rules"][0]["backendRefs"]}
    assert backends == {f"{NAME}-transformer": 100, f"{NAME}-canary-transformer": 0}
    assert raw_served(fake) == {URI[3]: 100}
