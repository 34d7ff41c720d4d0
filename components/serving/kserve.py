"""The KServe client: point the InferenceService that serves users at the new champion.

The champion is served by KServe's Hugging Face serving runtime (`modelFormat: huggingface`),
which runs vLLM on a GPU and speaks the OpenAI API (`/openai/v1/chat/completions`). The model's
weights are the champion's merged bf16 export in the artifact store (`s3://.../merged`): vLLM
cannot serve a LoRA adapter on GPT-NeoX, so a merged copy is what the InferenceService loads.

Promotion is an alias move in MLflow; `deploy_champion` (what the deploy step runs) makes serving
follow it:

- no new champion (`promoted` is false): nothing is sent to the cluster;
- no InferenceService yet: one is created from `inference_service_manifest`;
- one exists (usually applied from manifests/serving, where its resources, runtime arguments and
  GPU scheduling are tuned): a JSON merge patch changes only `spec.predictor.model.storageUri` and
  the annotations naming the model version (and the one it replaced), so the cluster's settings
  stay as they were and rolling back is the same call with the previous version.

Kubernetes access: in a pipeline pod the ServiceAccount's token (in-cluster config), elsewhere
the kubeconfig. The deployer identity needs get, create and patch on
`inferenceservices.serving.kserve.io` in its namespace (and, for the canary rollout of
serving/canary.py, delete on them and get and patch on Gateway API httproutes):
manifests/serving grants exactly that.
"""

import json
import re
from pathlib import Path
from typing import Any

from selfguided.components.cluster import (DEPLOYER, GPU_RESOURCE, PREDICTOR_SERVICE_ACCOUNT,
                                           kubeconfig_path, token_secret)
from selfguided.components.registry.names import REGISTERED_MODEL_NAME

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
RESOURCE = f"{PLURAL}.{GROUP}"

DEFAULT_SERVICE_NAME = REGISTERED_MODEL_NAME  # the pipeline's serving_name default, too
SERVING_MANIFESTS = "manifests/serving"  # the InferenceService, its ServiceAccount and the deployer's RBAC
DEPLOYER_ROLE = "selfguided-deployer"

# Annotations on the InferenceService: which registered model version it serves, and what it
# served before (the rollback target when the registry is out of reach).
MODEL_VERSION_ANNOTATION = "selfguided.dev/model-version"
PREVIOUS_MODEL_VERSION_ANNOTATION = "selfguided.dev/previous-model-version"
PREVIOUS_STORAGE_URI_ANNOTATION = "selfguided.dev/previous-storage-uri"

# Owns storageUri and the version annotations: `kubectl apply --server-side` of the manifests
# reports a conflict on them instead of silently pointing serving back at the placeholder.
FIELD_MANAGER = "selfguided-deploy"

MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts what storageUri points at
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

# Sized for Polyglot-ko up to 5.8B in bf16 on one GPU (vLLM takes 90% of the GPU's memory for
# weights and KV cache; the host memory holds the weights while they load).
GPU_RESOURCES = {
    "requests": {"cpu": "2", "memory": "24Gi", GPU_RESOURCE: "1"},
    "limits": {"cpu": "8", "memory": "32Gi", GPU_RESOURCE: "1"},
}
# The Hugging Face backend on CPU: fine for the tiny model and a 1.3B at a few requests a minute.
CPU_RESOURCES = {
    "requests": {"cpu": "2", "memory": "8Gi"},
    "limits": {"cpu": "4", "memory": "16Gi"},
}

_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "hf://", "oci://", "http://", "https://")


class DeployError(RuntimeError):
    """The cluster refused or cannot serve the InferenceService; the message says what to do."""


def inference_service_manifest(
    name: str,
    namespace: str,
    storage_uri: str,
    *,
    model_version: str = "",
    gpu: bool = True,
    served_model_name: str | None = None,
    runtime_args: list[str] | tuple[str, ...] = (),
    resources: dict[str, dict[str, str]] | None = None,
    service_account: str = PREDICTOR_SERVICE_ACCOUNT,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """An InferenceService serving the weights at `storage_uri` with KServe's Hugging Face runtime.

    Args:
        name: the InferenceService's name (a DNS-1035 label); clients reach it as
            `http://<name>.<namespace>.svc.cluster.local/openai/v1/...`.
        namespace: the Kubeflow profile namespace it runs in.
        storage_uri: the merged weights, tokenizer and chat template (`s3://bucket/.../merged`).
        model_version: the registered model version served (`korean-writing-assistant/3`),
            recorded in the `selfguided.dev/model-version` annotation.
        gpu: True: vLLM on one GPU (the runtime's default backend); False: `--backend=huggingface`
            (transformers) on CPU.
        served_model_name: the `model` clients put in their requests (default: `name`).
        runtime_args: extra runtime arguments, e.g. `["--max_model_len=2048", "--dtype=bfloat16"]`.
        resources: container requests and limits (default: GPU_RESOURCES or CPU_RESOURCES).
        service_account: the predictor's ServiceAccount, which carries the S3 credentials.
        node_selector, tolerations: scheduling onto a GPU node pool.
    """
    if not _DNS_1035_LABEL.fullmatch(name) or len(name) > 63:
        raise ValueError(f"InferenceService name {name!r} must be a DNS-1035 label: lower-case letters, digits "
                         "and '-', starting with a letter, at most 63 characters")
    if not namespace:
        raise ValueError("namespace is empty: name the Kubeflow profile namespace the InferenceService runs in")
    if not storage_uri.startswith(_STORAGE_SCHEMES):
        raise ValueError(f"storage_uri {storage_uri!r} is not a URI KServe's storage initializer reads "
                         f"({', '.join(_STORAGE_SCHEMES)}); expected the champion's merged weights, e.g. s3://bucket/.../merged")
    args = [f"--model_name={served_model_name or name}", f"--model_dir={MODEL_DIR}"]
    if not gpu:
        args.append("--backend=huggingface")  # vLLM is the default and wants a GPU
    args.extend(runtime_args)
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "storageUri": storage_uri,
        "args": args,
        "resources": resources or (GPU_RESOURCES if gpu else CPU_RESOURCES),
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    predictor: dict[str, Any] = {"serviceAccountName": service_account, "model": model}
    if node_selector:
        predictor["nodeSelector"] = dict(node_selector)
    if tolerations:
        predictor["tolerations"] = [dict(t) for t in tolerations]
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/part-of": "selfguided", "app.kubernetes.io/component": "serving"},
    }
    if model_version:
        metadata["annotations"] = {MODEL_VERSION_ANNOTATION: model_version}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": {"predictor": predictor}}


def pointing_patch(storage_uri: str, model_version: str, existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON merge patch that points an existing InferenceService at other weights.

    Only the storage URI and the annotations change; what `existing` served before is kept in the
    `previous-*` annotations.
    """
    annotations = {MODEL_VERSION_ANNOTATION: model_version}
    if existing is not None:
        old_uri = _model_spec(existing).get("storageUri")
        old_version = (existing.get("metadata", {}).get("annotations") or {}).get(MODEL_VERSION_ANNOTATION)
        if old_uri:
            annotations[PREVIOUS_STORAGE_URI_ANNOTATION] = old_uri
        if old_version:
            annotations[PREVIOUS_MODEL_VERSION_ANNOTATION] = old_version
    return {"metadata": {"annotations": annotations}, "spec": {"predictor": {"model": {"storageUri": storage_uri}}}}


def deploy_champion(
    promoted: bool,
    storage_uri: str,
    model_version: str,
    *,
    name: str = DEFAULT_SERVICE_NAME,
    namespace: str | None = None,
    api_client=None,
    gpu: bool = True,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, str]] | None = None,
) -> str:
    """Create or patch the InferenceService `name` so it serves `storage_uri`, when `promoted`.

    Args:
        promoted: whether this run promoted a new champion; False sends nothing to the cluster.
        storage_uri: the new champion's merged weights (`s3://.../merged`).
        model_version: the registered model version, e.g. `korean-writing-assistant/3`.
        name: the InferenceService; "" means serving is not configured (local runs): nothing is sent.
        namespace: where it lives; None: the pod's own namespace in a cluster, else the
            kubeconfig context's.
        api_client: a `kubernetes.client.ApiClient`; None: in-cluster config, else kubeconfig.
        gpu: only used when creating: vLLM on a GPU, or the Hugging Face backend on CPU.
        node_selector, tolerations: only used when creating: the GPU node pool, as the pipeline's
            GPU steps select and tolerate it (pipelines/platform.py), so the predictor is not
            Pending on a tainted pool.

    Returns:
        One line saying what was done.

    Raises:
        DeployError: the API refused (403 names the missing RBAC verb and the manifests that grant
            it; a missing CRD says KServe is not installed), or cannot be reached.
    """
    if not promoted:
        return f"no new champion: InferenceService {name or '(none)'} left as it is"
    if not name:
        return "no InferenceService named (service_name is empty): serving is not configured, nothing deployed"
    if not storage_uri:
        raise DeployError(f"a champion was promoted ({model_version}) but it has no storage URI for its merged weights")
    if storage_uri.startswith("mlflow-artifacts:"):
        raise DeployError(f"the champion's merged weights are at {storage_uri}, a path only the MLflow server resolves, "
                          "which KServe cannot read: the register step did not know the server's artifact destination "
                          "(MLFLOW_ARTIFACTS_DESTINATION, from ConfigMap selfguided-mlflow in this namespace, "
                          "manifests/overlays/*/profile/mlflow-artifacts.properties)")

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    if api_client is None:
        api_client = _default_api_client()
    namespace = namespace or _default_namespace()
    api = client.CustomObjectsApi(api_client)
    where = f"{namespace}/{name}"

    try:
        existing = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if not _object_not_found(e, name):
            raise _explain(e, "get", namespace, name) from None
        existing = None
    except _connection_errors() as e:
        raise _unreachable(api_client, e) from None

    if existing is None:
        body = inference_service_manifest(name, namespace, storage_uri, model_version=model_version, gpu=gpu,
                                          node_selector=node_selector, tolerations=tolerations)
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, field_manager=FIELD_MANAGER)
        except ApiException as e:
            raise _explain(e, "create", namespace, name) from None
        except _connection_errors() as e:
            raise _unreachable(api_client, e) from None
        return f"created InferenceService {where} serving {model_version} from {storage_uri}"

    spec = _model_spec(existing)
    if not spec:
        raise DeployError(f"InferenceService {where} has no spec.predictor.model (an older predictor layout?): "
                          f"this step only points a `model` predictor at new weights; re-create it from {SERVING_MANIFESTS}")
    current_version = (existing.get("metadata", {}).get("annotations") or {}).get(MODEL_VERSION_ANNOTATION)
    if spec.get("storageUri") == storage_uri and current_version == model_version:
        return f"InferenceService {where} already serves {model_version} from {storage_uri}: unchanged"
    patch = pointing_patch(storage_uri, model_version, existing)
    if (existing.get("spec") or {}).get("predictor", {}).get("canaryTrafficPercent") is not None:
        # A canary's split or a rollback's pin (canaryTrafficPercent 0, serving/canary.py) would
        # keep the new weights from 100% of traffic: this call deploys at once.
        patch["spec"]["predictor"]["canaryTrafficPercent"] = None
    try:
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch,
                                           field_manager=FIELD_MANAGER)
    except ApiException as e:
        raise _explain(e, "patch", namespace, name) from None
    except _connection_errors() as e:
        raise _unreachable(api_client, e) from None
    return (f"patched InferenceService {where}: now serves {model_version} from {storage_uri} "
            f"(was {current_version or 'an unrecorded version'} from {spec.get('storageUri') or 'nowhere'})")


def _model_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return ((obj.get("spec") or {}).get("predictor") or {}).get("model") or {}


def _default_api_client():
    """The deployer's own identity when its token is mounted (the deploy task: manifests/serving), else
    the pod's ServiceAccount, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    from selfguided.components.cluster import DEPLOYER, api_client

    found = api_client(DEPLOYER)
    if found is None:
        raise DeployError("no Kubernetes credentials: not running in a pod, and no usable kubeconfig")
    return found


def _default_namespace() -> str:
    """The pod's own namespace in a cluster (a pipeline step runs in the profile namespace), else
    the kubeconfig context's, else `default`."""
    path = Path(SERVICE_ACCOUNT_NAMESPACE_FILE)
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig_path())
    except (config.ConfigException, OSError):
        return "default"
    return (active or {}).get("context", {}).get("namespace") or "default"


def _status(e) -> dict[str, Any]:
    """The API server's Status object from an ApiException, or {} when the body is not one
    (a 404 for an unknown resource type is plain text: `404 page not found`)."""
    try:
        body = json.loads(e.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) and body.get("kind") == "Status" else {}


def _object_not_found(e, name: str) -> bool:
    """A 404 about this object (create it), rather than about the resource type (no KServe)."""
    status = _status(e)
    details = status.get("details") or {}
    return e.status == 404 and status.get("reason") == "NotFound" and details.get("name") == name \
        and details.get("kind") in (PLURAL, KIND, None)


def _explain(e, verb: str, namespace: str, name: str) -> DeployError:
    status = _status(e)
    said = status.get("message") or (e.body or e.reason or "").strip()[:300]
    if e.status == 403:
        return DeployError(
            f"forbidden: the caller may not {verb} {RESOURCE} in namespace {namespace} (RBAC). Apply "
            f"{SERVING_MANIFESTS} to that namespace: Role {DEPLOYER_ROLE} grants the verbs it uses on "
            f"{RESOURCE} to ServiceAccount {DEPLOYER[0]}, whose token (Secret {token_secret(DEPLOYER)}) the deploy "
            f"task mounts. "
            f"API server: {said}")
    if e.status == 401:
        return DeployError(f"the Kubernetes API rejected the credentials (401) when asked to {verb} "
                           f"InferenceService {namespace}/{name}: {said}")
    if e.status == 404:
        if (status.get("details") or {}).get("kind") == "namespaces":
            return DeployError(f"namespace {namespace} does not exist: {said}")
        return DeployError(f"KServe is not installed: the cluster has no {RESOURCE}/{VERSION} (a 404 for the resource "
                           f"type when asked to {verb} InferenceService {namespace}/{name}); install KServe, then rerun")
    if not e.status:  # raised before any answer, e.g. a TLS failure
        return DeployError(f"cannot reach the Kubernetes API to {verb} InferenceService {namespace}/{name}: {e.reason}")
    if e.status in (400, 422):
        return DeployError(f"the API refused to {verb} InferenceService {namespace}/{name} (HTTP {e.status}): {said}")
    return DeployError(f"could not {verb} InferenceService {namespace}/{name}: HTTP {e.status} {e.reason}: {said}")


def _connection_errors() -> tuple[type[BaseException], ...]:
    import urllib3

    return (urllib3.exceptions.HTTPError, OSError)


def _unreachable(api_client, e: BaseException) -> DeployError:
    host = getattr(getattr(api_client, "configuration", None), "host", "?")
    return DeployError(f"cannot reach the Kubernetes API at {host}: {type(e).__name__}: {e}")
