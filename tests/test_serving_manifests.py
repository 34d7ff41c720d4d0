"""manifests/serving: renders, passes the Kubernetes schemas where there are schemas, and agrees
with the KServe client (components/serving/kserve.py) and the platform settings (pipelines/platform.py).

The InferenceService is a KServe custom resource, for which kubernetes-validate has no schema: its
required fields are checked here by hand, and its predictor's pod and container fields (KServe
embeds a PodSpec and a Container) against the core/v1 Pod schema. Rendering needs `kubectl`
(its built-in kustomize); the scanner is checkov, as in tests/test_manifests.py.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from manifest_tools import checkov_results, findings, kubectl

from selfguided.components import cluster
from selfguided.components.serving import kserve
from selfguided.pipelines import platform

REPO = Path(__file__).resolve().parents[1]
SERVING = REPO / kserve.SERVING_MANIFESTS
KUBERNETES_VERSION = "1.31"  # the oldest version the manifests promise to work on (as tests/test_manifests.py)
PLACEHOLDER = "REPLACE_ME"
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")

# KServe's own fields around the embedded PodSpec (predictor) and Container (model); what is left
# after removing them must be a valid core/v1 PodSpec and Container.
KSERVE_PREDICTOR_FIELDS = {"model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "autoScaling",
                           "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
                           "workerSpec", "deploymentStrategy", "annotations", "labels"}
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "storageUri", "protocolVersion", "storage"}


@pytest.fixture(scope="module")
def rendered() -> str:
    proc = subprocess.run([kubectl(), "kustomize", str(SERVING)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"`kubectl kustomize {kserve.SERVING_MANIFESTS}` failed:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def applied(rendered) -> list[dict]:
    """What `kubectl apply -k manifests/serving` creates."""
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module")
def objects(applied) -> list[dict]:
    """The applied objects plus inferenceservice.yaml (the spec the deploy step creates, applied by
    hand only), in the kustomization's namespace with its labels."""
    kustomization = yaml.safe_load((SERVING / "kustomization.yaml").read_text(encoding="utf-8"))
    isvc = yaml.safe_load((SERVING / "inferenceservice.yaml").read_text(encoding="utf-8"))
    isvc["metadata"]["namespace"] = kustomization["namespace"]
    for pairs in kustomization.get("labels", []):
        isvc["metadata"].setdefault("labels", {}).update(pairs["pairs"])
    return [*applied, isvc]


def test_no_inference_service_is_applied_before_a_champion_exists(applied):
    """A placeholder would crash-loop holding a GPU; the deploy step creates it at the first promotion."""
    assert not [o for o in applied if o["kind"] == kserve.KIND]
    assert "create" in _one(applied, "Role")["rules"][0]["verbs"], "the deploy step must be allowed to create it"


def _one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {kserve.SERVING_MANIFESTS}, found {len(found)}"
    return found[0]


def _schema_error(obj: dict) -> str | None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(map(str, e.path))}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return e.message
    return None


def _predictor_as_pod(isvc: dict) -> dict:
    """The predictor's PodSpec and model Container as a core/v1 Pod, KServe's own fields removed."""
    predictor = copy.deepcopy(isvc["spec"]["predictor"])
    container = {k: v for k, v in predictor.pop("model").items() if k not in KSERVE_MODEL_FIELDS}
    spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    spec["containers"] = [{"name": "kserve-container", "image": "kserve/huggingfaceserver:stand-in", **container}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"],
                                                             "namespace": isvc["metadata"]["namespace"]}, "spec": spec}


def test_renders_the_serving_objects_in_one_namespace(objects):
    assert sorted(o["kind"] for o in objects) == ["InferenceService", "Role", "RoleBinding", "Secret", "ServiceAccount",
                                                 "ServiceAccount"]  # predictor, deployer and its token
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert len(namespaces) == 1 and None not in namespaces, f"objects spread over namespaces {namespaces}"
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "selfguided"


def test_same_profile_namespace_as_the_production_overlay(objects):
    """Serving lives where the pipeline runs: the deploy step, and the Secret and ServiceAccount
    it relies on, are in the profile namespace."""
    profile = yaml.safe_load((REPO / "manifests/overlays/production/profile/kustomization.yaml").read_text(encoding="utf-8"))
    assert objects[0]["metadata"]["namespace"] == profile["namespace"]


def test_kubernetes_objects_pass_the_schema(objects):
    core = [o for o in objects if o["kind"] != kserve.KIND]
    errors = [f"{o['kind']}/{o['metadata']['name']}: {err}" for o in core if (err := _schema_error(o))]
    assert not errors, "\n".join(errors)


def test_inference_service_has_what_kserve_requires(objects):
    isvc = _one(objects, kserve.KIND)
    assert isvc["apiVersion"] == f"{kserve.GROUP}/{kserve.VERSION}"
    assert DNS_1035_LABEL.fullmatch(isvc["metadata"]["name"]), "KServe names must be DNS-1035 labels"
    assert isvc["metadata"]["name"] == kserve.DEFAULT_SERVICE_NAME
    assert set(isvc["spec"]) == {"predictor"}, "only a predictor: no transformer or explainer"
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= KSERVE_PREDICTOR_FIELDS | {"serviceAccountName", "nodeSelector", "tolerations"}
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "huggingface"}, "KServe's Hugging Face serving runtime"
    assert model["storageUri"].startswith("s3://") and PLACEHOLDER in model["storageUri"], \
        "the committed storageUri is a placeholder: the deploy step points it at the champion"
    assert f"--model_name={isvc['metadata']['name']}" in model["args"]
    assert not any(a.startswith("--backend") for a in model["args"]), "vLLM, the runtime's default backend on GPU"
    for bound in ("requests", "limits"):
        assert {"cpu", "memory", platform.GPU_RESOURCE} <= set(model["resources"][bound])
    assert model["resources"]["requests"][platform.GPU_RESOURCE] == model["resources"]["limits"][platform.GPU_RESOURCE]
    assert kserve.MODEL_VERSION_ANNOTATION in isvc["metadata"]["annotations"]


def test_predictor_pod_fields_pass_the_pod_schema(objects):
    pod = _predictor_as_pod(_one(objects, kserve.KIND))
    assert _schema_error(pod) is None, _schema_error(pod)
    broken = copy.deepcopy(pod)
    broken["spec"]["containers"][0]["resource"] = broken["spec"]["containers"][0].pop("resources")
    assert _schema_error(broken) is not None, "strict validation let a misspelled field through"


def test_inference_service_is_what_the_deploy_step_would_create(objects):
    """One description of the serving spec: the manifest equals inference_service_manifest with the
    platform's GPU node pool, so a cluster where the step created it serves the same way."""
    isvc = _one(objects, kserve.KIND)
    model = isvc["spec"]["predictor"]["model"]
    expected = kserve.inference_service_manifest(
        isvc["metadata"]["name"], isvc["metadata"]["namespace"], model["storageUri"], gpu=True,
        runtime_args=[a for a in model["args"] if a.split("=")[0] not in ("--model_name", "--model_dir")],
        node_selector={platform.GPU_NODE_SELECTOR_KEY: platform.GPU_NODE_SELECTOR_VALUE},
        tolerations=[{"key": platform.GPU_TOLERATION_KEY, "operator": "Exists", "effect": platform.GPU_TOLERATION_EFFECT}])
    assert isvc["spec"] == expected["spec"]
    assert expected["metadata"]["labels"].items() <= isvc["metadata"]["labels"].items()
    assert _schema_error(_predictor_as_pod(kserve.inference_service_manifest("x", "ns", "s3://b/m", gpu=False))) is None


def test_deploy_rbac_is_inference_services_and_the_canary_route_only(objects):
    role, binding = _one(objects, "Role"), _one(objects, "RoleBinding")
    assert role["metadata"]["name"] == kserve.DEPLOYER_ROLE
    assert role["rules"] == [  # tests/test_cluster_rbac.py: exactly the calls deploy and the canary make
        {"apiGroups": [kserve.GROUP], "resources": [kserve.PLURAL], "verbs": ["get", "create", "patch", "delete"]},
        {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": ["get", "patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": kserve.DEPLOYER_ROLE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": cluster.DEPLOYER[0],
                                    "namespace": binding["metadata"]["namespace"]}]  # tests/test_cluster_rbac.py


def test_predictor_reads_the_weights_with_read_only_keys_of_its_own(objects):
    isvc = _one(objects, kserve.KIND)
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"
                  and o["metadata"]["name"] == isvc["spec"]["predictor"]["serviceAccountName"]]
    assert account["metadata"]["name"] == cluster.PREDICTOR_SERVICE_ACCOUNT
    assert account["secrets"] == [{"name": cluster.PREDICTOR_S3_SECRET}] != [{"name": platform.S3_SECRET_NAME}]
    # KServe's storage initializer reads these key names by default (inferenceservice-config).
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(platform.S3_SECRET_KEYS)
    assert account["automountServiceAccountToken"] is False, "the model server calls no Kubernetes API"


def test_checkov_finds_nothing_unjustified(rendered, tmp_path):
    (tmp_path / "serving.yaml").write_text(rendered, encoding="utf-8")
    results = checkov_results(tmp_path)  # asserts the canary was flagged: the scan really runs
    failed = findings(results)
    assert not failed, "checkov findings to fix, or skip in place with a reason:\n" + "\n".join(
        f"{c['resource']}: {c['check_id']} {c['check_name']}" for c in failed)
    assert any(c["file_path"] == "/serving.yaml" for c in results["passed_checks"]), "checkov checked nothing in serving"
