"""The KServe client (serving/kserve.py) and the deploy step: the real `kubernetes` client against a local stand-in for the Kubernetes API.

The stand-in (http.server on 127.0.0.1) keeps InferenceServices in a dict, answers GET, POST
(create) and PATCH (JSON merge patch) the way the API server does, including its Status bodies,
and records every request: method, path, Content-Type and body. It can also refuse a verb with a
403, or act as a cluster without KServe (the plain-text 404 of an unknown resource type).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from servers import QuietJsonHandler, local_http_server, serving

from selfguided.components.cluster import GPU_RESOURCE
from selfguided.components.images import CPU_IMAGE
from selfguided.components.serving import kserve
from selfguided.components.serving.kserve import (
    CPU_RESOURCES,
    MODEL_VERSION_ANNOTATION,
    PREVIOUS_MODEL_VERSION_ANNOTATION,
    PREVIOUS_STORAGE_URI_ANNOTATION,
    SERVING_MANIFESTS,
    DeployError,
    deploy_champion,
    inference_service_manifest,
)
from selfguided.components.steps.deploy import deploy

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "kubeflow-user-example-com"
NAME = "korean-writing-assistant"
COLLECTION = f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices"
URI_V3 = "s3://selfguided-mlflow/artifacts/1/abc/artifacts/merged"
URI_V4 = "s3://selfguided-mlflow/artifacts/1/def/artifacts/merged"


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, as the API server applies `application/merge-patch+json`."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeKubernetes:
    """A recording stand-in for the InferenceService endpoints of the Kubernetes API."""

    def __init__(self):
        self.objects: dict[str, dict] = {}  # path -> object
        self.requests: list[dict] = []
        self.forbidden: set[str] = set()  # verbs answered with 403
        self.kserve_installed = True
        fake = self

        class Handler(QuietJsonHandler):
            def _status(self, code: int, reason: str, message: str, name: str | None = None):
                details = {"group": "serving.kserve.io", "kind": "inferenceservices"} | ({"name": name} if name else {})
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                                  "reason": reason, "details": details, "code": code})

            def _handle(self, verb: str):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                fake.requests.append({"method": self.command, "path": path, "query": query,
                                      "content_type": self.headers.get("Content-Type"),
                                      "authorization": self.headers.get("Authorization"),
                                      "body": json.loads(raw) if raw else None})
                if not path.startswith(COLLECTION.rsplit("/namespaces/", 1)[0]) or not fake.kserve_installed:
                    return self._send(404, "404 page not found\n", "text/plain; charset=utf-8")
                name = path.rsplit("/", 1)[-1] if path != COLLECTION and path.count("/") > COLLECTION.count("/") else None
                if verb in fake.forbidden:
                    return self._status(403, "Forbidden", f'inferenceservices.serving.kserve.io "{name or ""}" is '
                                        f'forbidden: User "system:serviceaccount:{NAMESPACE}:selfguided-deployer" cannot '
                                        f'{verb} resource "inferenceservices" in API group "serving.kserve.io" in the '
                                        f'namespace "{NAMESPACE}"', name)
                if verb == "get":
                    if path not in fake.objects:
                        return self._status(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found', name)
                    return self._send(200, fake.objects[path])
                if verb == "create":
                    body = json.loads(raw)
                    key = f"{COLLECTION}/{body['metadata']['name']}"
                    if key in fake.objects:
                        return self._status(409, "AlreadyExists", "already exists", body["metadata"]["name"])
                    fake.objects[key] = body
                    return self._send(201, body)
                if verb == "patch":
                    if path not in fake.objects:
                        return self._status(404, "NotFound", f'"{name}" not found', name)
                    fake.objects[path] = merge_patch(fake.objects[path], json.loads(raw))
                    return self._send(200, fake.objects[path])
                return self._send(405, "method not allowed", "text/plain")

            def do_GET(self):
                self._handle("get")

            def do_POST(self):
                self._handle("create")

            def do_PATCH(self):
                self._handle("patch")

        self.server, self.host = local_http_server(Handler)

    def api_client(self) -> k8s.ApiClient:
        configuration = k8s.Configuration(host=self.host)
        configuration.api_key = {"authorization": "stand-in-token"}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return k8s.ApiClient(configuration)


@pytest.fixture
def kube():
    fake = FakeKubernetes()
    with serving(fake.server):
        yield fake


def _deploy(kube, promoted=True, uri=URI_V3, version=f"{NAME}/3", **kwargs):
    return deploy_champion(promoted, uri, version, name=NAME, namespace=NAMESPACE, api_client=kube.api_client(), **kwargs)


def test_first_promotion_creates_the_inference_service(kube):
    message = _deploy(kube)

    assert [(r["method"], r["path"]) for r in kube.requests] == [("GET", f"{COLLECTION}/{NAME}"), ("POST", COLLECTION)]
    assert kube.requests[0]["authorization"] == "Bearer stand-in-token"
    created = kube.requests[1]["body"]
    assert kube.requests[1]["query"] == "fieldManager=selfguided-deploy"
    assert created == inference_service_manifest(NAME, NAMESPACE, URI_V3, model_version=f"{NAME}/3", gpu=True)
    assert created["apiVersion"] == "serving.kserve.io/v1beta1" and created["kind"] == "InferenceService"
    model = created["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"} and model["storageUri"] == URI_V3
    assert created["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] == f"{NAME}/3"
    assert "created" in message and f"{NAME}/3" in message and URI_V3 in message


def test_first_promotion_creates_it_on_the_gpu_pool_the_pipeline_uses(kube):
    """The pipeline hands the deploy step the GPU pool's selector and tolerations (platform.py): a
    predictor created on a tainted pool is scheduled, not Pending."""
    from selfguided.pipelines import platform

    _deploy(kube, node_selector=platform.GPU_NODE_SELECTOR, tolerations=platform.GPU_TOLERATIONS)
    predictor = kube.requests[1]["body"]["spec"]["predictor"]
    assert predictor["nodeSelector"] == {platform.GPU_NODE_SELECTOR_KEY: platform.GPU_NODE_SELECTOR_VALUE}
    assert predictor["tolerations"] == [{"key": platform.GPU_TOLERATION_KEY, "operator": "Exists",
                                         "effect": platform.GPU_TOLERATION_EFFECT}]


def test_an_unresolved_mlflow_artifacts_uri_is_refused_before_the_cluster(kube):
    with pytest.raises(DeployError, match="ConfigMap selfguided-mlflow"):
        _deploy(kube, uri="mlflow-artifacts:/1/abc/artifacts/merged")
    assert kube.requests == []


def test_next_promotion_patches_only_the_weights_and_the_version(kube):
    _deploy(kube)
    stored = f"{COLLECTION}/{NAME}"
    kube.objects[stored]["spec"]["predictor"]["model"]["args"].append("--max_model_len=2048")  # tuned in the cluster
    kube.requests.clear()

    message = _deploy(kube, uri=URI_V4, version=f"{NAME}/4")

    assert [(r["method"], r["path"]) for r in kube.requests] == [("GET", stored), ("PATCH", stored)]
    patch = kube.requests[1]
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["query"] == "fieldManager=selfguided-deploy", "server-side apply of the manifests must see who owns storageUri"
    assert patch["body"] == {
        "metadata": {"annotations": {MODEL_VERSION_ANNOTATION: f"{NAME}/4", PREVIOUS_MODEL_VERSION_ANNOTATION: f"{NAME}/3",
                                     PREVIOUS_STORAGE_URI_ANNOTATION: URI_V3}},
        "spec": {"predictor": {"model": {"storageUri": URI_V4}}},
    }
    served = kube.objects[stored]
    assert served["spec"]["predictor"]["model"]["storageUri"] == URI_V4
    assert "--max_model_len=2048" in served["spec"]["predictor"]["model"]["args"], "the patch clobbered cluster settings"
    assert served["spec"]["predictor"]["model"]["resources"][("limits")][GPU_RESOURCE] == "1"
    assert "patched" in message and f"{NAME}/4" in message and f"was {NAME}/3" in message


def test_rollback_is_the_same_call_with_the_previous_version(kube):
    _deploy(kube)
    _deploy(kube, uri=URI_V4, version=f"{NAME}/4")
    _deploy(kube, uri=URI_V3, version=f"{NAME}/3")
    served = kube.objects[f"{COLLECTION}/{NAME}"]
    assert served["spec"]["predictor"]["model"]["storageUri"] == URI_V3
    assert served["metadata"]["annotations"][PREVIOUS_MODEL_VERSION_ANNOTATION] == f"{NAME}/4"


def test_same_champion_again_sends_no_patch(kube):
    _deploy(kube)
    kube.requests.clear()
    assert "unchanged" in _deploy(kube)
    assert [r["method"] for r in kube.requests] == ["GET"]


def test_no_promotion_sends_nothing_and_needs_no_cluster(kube, monkeypatch, tmp_path):
    assert "left as it is" in _deploy(kube, promoted=False)
    # Not even credentials are looked for: a local run without any cluster passes through.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert "left as it is" in deploy_champion(False, URI_V3, f"{NAME}/3", name=NAME)
    assert "not configured" in deploy_champion(True, URI_V3, f"{NAME}/3", name="")
    assert kube.requests == []


def test_forbidden_names_the_verb_and_the_manifests_that_grant_it(kube):
    _deploy(kube)
    kube.forbidden = {"patch"}
    with pytest.raises(DeployError) as err:
        _deploy(kube, uri=URI_V4, version=f"{NAME}/4")
    message = str(err.value)
    assert "forbidden" in message and "patch inferenceservices.serving.kserve.io" in message
    assert f"namespace {NAMESPACE}" in message and SERVING_MANIFESTS in message and "selfguided-deployer-token" in message
    assert "\n" not in message

    # The manifests named there exist and grant every verb this step uses.
    role = yaml.safe_load((REPO / SERVING_MANIFESTS / "role.yaml").read_text(encoding="utf-8"))
    assert role["metadata"]["name"] == kserve.DEPLOYER_ROLE
    granted = {verb for rule in role["rules"] if "inferenceservices" in rule["resources"] for verb in rule["verbs"]}
    assert granted >= {"get", "create", "patch"}


def test_forbidden_get_is_not_mistaken_for_absent(kube):
    kube.forbidden = {"get"}
    with pytest.raises(DeployError, match="may not get inferenceservices"):
        _deploy(kube)
    assert [r["method"] for r in kube.requests] == ["GET"], "a 403 on get must not lead to a create"


def test_cluster_without_kserve_says_so(kube):
    kube.kserve_installed = False
    with pytest.raises(DeployError, match="KServe is not installed"):
        _deploy(kube)
    assert [r["method"] for r in kube.requests] == ["GET"]


def test_unreachable_api_is_one_clear_line():
    configuration = k8s.Configuration(host="http://127.0.0.1:9")  # discard port: nothing listens
    configuration.retries = 0
    with pytest.raises(DeployError, match="cannot reach the Kubernetes API at http://127.0.0.1:9"):
        deploy_champion(True, URI_V3, f"{NAME}/3", name=NAME, namespace=NAMESPACE, api_client=k8s.ApiClient(configuration))


def test_without_a_client_it_uses_the_kubeconfig_and_its_namespace(kube, monkeypatch, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "dev", "cluster": {"server": kube.host}}],
        "users": [{"name": "dev", "user": {"token": "kubeconfig-token"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "dev", "namespace": NAMESPACE}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(kserve, "SERVICE_ACCOUNT_NAMESPACE_FILE", str(tmp_path / "not-in-a-pod"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    deploy_champion(True, URI_V3, f"{NAME}/3", name=NAME)
    assert [(r["method"], r["path"]) for r in kube.requests] == [("GET", f"{COLLECTION}/{NAME}"), ("POST", COLLECTION)]
    assert kube.requests[0]["authorization"] == "Bearer kubeconfig-token"


def test_in_a_pod_it_uses_the_service_account_and_the_pod_namespace(kube, monkeypatch, tmp_path):
    from kubernetes import config

    namespace_file = tmp_path / "namespace"
    namespace_file.write_text(NAMESPACE)
    monkeypatch.setattr(kserve, "SERVICE_ACCOUNT_NAMESPACE_FILE", str(namespace_file))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))

    def in_cluster(client_configuration=None, **_):
        client_configuration.host = kube.host
        client_configuration.api_key = {"authorization": "Bearer service-account-token"}

    monkeypatch.setattr(config, "load_incluster_config", in_cluster)
    deploy_champion(True, URI_V3, f"{NAME}/3", name=NAME)
    assert kube.requests[1]["path"] == COLLECTION
    assert kube.requests[0]["authorization"] == "Bearer service-account-token"


def test_manifest_runs_vllm_on_gpu_and_transformers_on_cpu():
    gpu = inference_service_manifest(NAME, NAMESPACE, URI_V3, model_version="v", gpu=True,
                                     node_selector={"selfguided.dev/node-pool": "gpu"},
                                     tolerations=[{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}])
    model = gpu["spec"]["predictor"]["model"]
    assert not any(a.startswith("--backend") for a in model["args"]), "vLLM is the runtime's default backend on GPU"
    assert f"--model_name={NAME}" in model["args"]
    assert model["resources"]["limits"][GPU_RESOURCE] == "1"
    assert gpu["spec"]["predictor"]["nodeSelector"] == {"selfguided.dev/node-pool": "gpu"}

    cpu = inference_service_manifest(NAME, NAMESPACE, URI_V3, gpu=False, served_model_name="kwa",
                                     runtime_args=["--dtype=float32"])
    model = cpu["spec"]["predictor"]["model"]
    assert model["args"][-2:] == ["--backend=huggingface", "--dtype=float32"] and "--model_name=kwa" in model["args"]
    assert model["resources"] == CPU_RESOURCES and "annotations" not in cpu["metadata"]


@pytest.mark.parametrize("name, uri", [("Korean_Writer", URI_V3), ("9lives", URI_V3), (NAME, "/tmp/merged"), (NAME, "")])
def test_manifest_rejects_what_kserve_would(name, uri):
    with pytest.raises(ValueError):
        inference_service_manifest(name, NAMESPACE, uri)


def test_component_interface():
    spec = deploy.component_spec
    assert {k: v.type for k, v in spec.inputs.items()} == {
        "promoted": "Boolean", "storage_uri": "String", "model_version": "String",
        "service_name": "String", "namespace": "String", "canary_percent": "Integer", "node_selector": "Dict",
        "tolerations": "List"}
    assert {k: v.type for k, v in spec.outputs.items()} == {"Output": "String"}
    assert spec.implementation.container.image == CPU_IMAGE


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")  # the image is this environment
def test_component_runs_under_kfp_local_and_changes_nothing_without_a_promotion(tmp_path, monkeypatch):
    """The thin component imports and calls the step in a real KFP executor (kfp.local, this
    environment), as in the local pipeline run where nothing is promoted to a cluster."""
    from kfp import local

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    try:
        task = deploy(promoted=False, storage_uri=URI_V3, model_version=f"{NAME}/3", service_name=NAME, namespace="")
    finally:
        local.config.LocalExecutionConfig.instance = None
    assert task.output == f"no new champion: InferenceService {NAME} left as it is"
