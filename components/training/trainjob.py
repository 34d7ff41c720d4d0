"""Multi-node fine-tuning as a Kubeflow Trainer v2 `TrainJob` (runtime `torch-distributed`).

The finetune step with num_nodes > 1 does not train in its own pod: it writes a TrainJob whose
nodes run the training worker under torchrun as a one-node run does (worker.py's `WorkerRun`;
the Trainer's torch plugin sets torchrun's rendezvous), on the GPU image, with the shared
ReadWriteMany volume mounted for data, checkpoints and output, on the GPU pool (node selector,
tolerations); then follows it: progress and the rank-0 log in the
step's log, success when the TrainJob is Complete, TrainJobFailed naming its reason when it is
Failed, and the TrainJob deleted when the step gets SIGTERM (the KFP run is cancelled).

Client: the `kubernetes` package (CustomObjectsApi, CoreV1Api for the rank-0 log). It is already a
dependency (kfp-kubernetes, the deploy step); the `kubeflow` SDK's TrainerClient (0.5) would add a
second Kubernetes layer and pin the Trainer API version behind it, for three calls we make here.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from selfguided.components.cluster import GPU_RESOURCE

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow Trainer ships (manifests/training/)
PATCH_MANAGER = "selfguided.dev/finetune"
NODE_CONTAINER = "node"  # the container name in the torch-distributed runtime's template
RANK0_SELECTOR = "jobset.sigs.k8s.io/jobset-name={name},batch.kubernetes.io/job-completion-index=0"
PODS_SELECTOR = "jobset.sigs.k8s.io/jobset-name={name}"
MIN_TRAINER = "v2.3"  # spec.runtimePatches and spec.activeDeadlineSeconds first appear in its TrainJob CRD
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# A pod in one of these waiting states will not start by itself: the step fails with the reason
# after STUCK_AFTER_S instead of waiting for the TrainJob's deadline.
STUCK_WAITING = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError")


class TrainJobFailed(RuntimeError):
    """The TrainJob ended Failed (the message names its reason), or was deleted under us."""


@dataclass
class TrainJobSpec:
    """What the step puts into its TrainJob."""

    name: str
    namespace: str
    image: str
    command: list[str]
    num_nodes: int
    gpus_per_node: int
    volume_claim: str
    mount_path: str
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    runtime: str = RUNTIME
    cpu_per_node: str = ""  # requests = limits, with memory, from the node profile (ClusterSettings)
    memory_per_node: str = ""
    shm_size: str = "16Gi"  # /dev/shm for NCCL and DataLoader workers with several GPUs per node
    service_account: str = ""
    image_pull_secrets: list[str] = field(default_factory=list)
    active_deadline_s: int = 7 * 24 * 3600  # the Trainer fails the TrainJob (DeadlineExceeded) after this
    queue_name: str = ""  # a Kueue LocalQueue: the TrainJob waits for quota instead of overcommitting


def trainjob_manifest(spec: TrainJobSpec) -> dict[str, Any]:
    """The TrainJob object (trainer.kubeflow.org/v1alpha1, as in Trainer v2.3's CRD).

    Its pods: the compiled GPU image; out of the Istio mesh (a sidecar keeps a pod Running after
    torchrun exits, so the TrainJob would never complete: the label Istio's injector reads); CPU,
    memory and GPUs requested = limits; /dev/shm in memory; the pipeline's ServiceAccount and pull
    secrets; a restricted securityContext (non-root, no privilege escalation, no capabilities,
    RuntimeDefault seccomp), as the images run as uid 10001."""
    volume, shm = "selfguided-shared", "dshm"
    per_node = {GPU_RESOURCE: spec.gpus_per_node}
    if spec.cpu_per_node:
        per_node["cpu"] = spec.cpu_per_node
    if spec.memory_per_node:
        per_node["memory"] = spec.memory_per_node
    labels = {"app.kubernetes.io/part-of": "selfguided", "app.kubernetes.io/component": "finetune"}
    if spec.queue_name:
        labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    pod_spec: dict[str, Any] = {
        "nodeSelector": spec.node_selector,
        "tolerations": spec.tolerations,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": volume, "persistentVolumeClaim": {"claimName": spec.volume_claim}},
                    {"name": shm, "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}],
        "containers": [{"name": NODE_CONTAINER,
                        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": volume, "mountPath": spec.mount_path},
                                         {"name": shm, "mountPath": "/dev/shm"}]}],
    }
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "runtimeRef": {"name": spec.runtime, "kind": "ClusterTrainingRuntime", "apiGroup": GROUP},
            "activeDeadlineSeconds": int(spec.active_deadline_s),
            "trainer": {
                "image": spec.image,
                "command": spec.command,
                "numNodes": spec.num_nodes,
                "numProcPerNode": spec.gpus_per_node,
                "resourcesPerNode": {"limits": dict(per_node), "requests": dict(per_node)},
                "env": [{"name": k, "value": v} for k, v in sorted(spec.env.items())],
            },
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": NODE_CONTAINER,
                    "template": {"spec": {"template": {
                        "metadata": {"labels": {"sidecar.istio.io/inject": "false", **labels}},
                        "spec": pod_spec,
                    }}},
                }]}}},
            }],
        },
    }


class TrainerTooOld(RuntimeError):
    """The cluster's TrainJob CRD cannot express what the step needs."""


def condition(trainjob: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The status condition of type `kind` when it is True."""
    for item in (trainjob.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind and item.get("status") == "True":
            return item
    return None


def _unknown_fields(message: str) -> list[str]:
    """The field paths of an API server's strict-decoding error ('unknown field "spec.x"')."""
    import re

    return re.findall(r'unknown field \\?"([^"\\]+)\\?"', message)


class TrainJobRunner:
    """Create a TrainJob, follow it to the end, delete it on SIGTERM."""

    def __init__(self, api_client=None, poll_s: float = 10.0, log: Callable[[str], None] | None = None):
        from kubernetes import client

        from selfguided.components.cluster import TRAINJOB_LAUNCHER, api_client as cluster_client, token_secret

        if api_client is None:  # the launcher's own identity (manifests/training), not the pipeline's
            api_client = cluster_client(TRAINJOB_LAUNCHER)
            if api_client is None:
                raise RuntimeError(f"no Kubernetes credentials to launch a TrainJob: the finetune task mounts Secret "
                                   f"{token_secret(TRAINJOB_LAUNCHER)} (kubectl apply -k manifests/training)")
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.poll_s = poll_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._stop = threading.Event()

    def create(self, spec: TrainJobSpec, attempts: int = 30) -> dict[str, Any]:
        """Create the TrainJob. One that already exists (a retried step) is followed, not recreated,
        unless it failed: then it is deleted and created again (a retry should train again; the
        checkpoints on the shared volume make it resume)."""
        from kubernetes.client.exceptions import ApiException

        for _ in range(attempts):
            try:
                # Strict: an API server whose CRD lacks a field rejects the object instead of
                # pruning it silently (a pruned runtimePatches means no volume, no tolerations,
                # pods Pending forever).
                created = self.custom.create_namespaced_custom_object(GROUP, VERSION, spec.namespace, PLURAL,
                                                                      trainjob_manifest(spec), field_validation="Strict")
                self.log(f"TrainJob {spec.namespace}/{spec.name} created: {spec.num_nodes} nodes x "
                         f"{spec.gpus_per_node} GPUs, runtime {spec.runtime}")
                return created
            except ApiException as exc:
                if exc.status == 400 and "unknown field" in str(exc.body):
                    raise TrainerTooOld(
                        f"TrainJob {spec.namespace}/{spec.name}: this cluster's Kubeflow Trainer does not know "
                        f"{', '.join(sorted(set(_unknown_fields(str(exc.body))))) or 'fields the step sets'}: "
                        f"multi-node fine-tuning needs Kubeflow Trainer {MIN_TRAINER} or newer (Kubeflow 1.11 bundles "
                        f"v2.1). Upgrade the Trainer, or train on one node (num_nodes=1)") from None
                if exc.status != 409:
                    raise
            try:
                existing = self.get(spec.namespace, spec.name)
            except ApiException as exc:
                if exc.status == 404:  # deleted meanwhile (foreground deletion finished): create again
                    continue
                raise
            if not condition(existing, "Failed"):
                self.log(f"TrainJob {spec.namespace}/{spec.name} exists (a retried step): following it")
                return existing
            if not (existing.get("metadata") or {}).get("deletionTimestamp"):
                self.log(f"TrainJob {spec.namespace}/{spec.name} failed before this retry: deleting it to start again")
                self.delete(spec.namespace, spec.name)
            self._stop.wait(self.poll_s)
        raise TrainJobFailed(f"TrainJob {spec.namespace}/{spec.name}: a failed TrainJob of that name is still "
                             f"being deleted after {attempts} tries")

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def delete(self, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                        propagation_policy="Foreground")
            self.log(f"TrainJob {namespace}/{name} deleted")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def stuck_pod(self, namespace: str, name: str) -> str | None:
        """Why a pod of the TrainJob cannot start by itself (unschedulable, image not pullable, a
        missing Secret), or None."""
        from kubernetes.client.exceptions import ApiException

        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=PODS_SELECTOR.format(name=name)).items
        except ApiException:
            return None
        for pod in pods:
            status = pod.status
            for item in (status.conditions or []) if status else []:
                if item.type == "PodScheduled" and item.status == "False" and item.reason == "Unschedulable":
                    return f"pod {pod.metadata.name} is Unschedulable: {item.message}"
            for container in (status.container_statuses or []) if status else []:
                waiting = container.state.waiting if container.state else None
                if waiting and waiting.reason in STUCK_WAITING:
                    return f"pod {pod.metadata.name} is {waiting.reason}: {waiting.message}"
        return None

    def follow(self, namespace: str, name: str, timeout_s: float | None = None,
               stuck_after_s: float = 900.0) -> dict[str, Any]:
        """Poll until Complete (returns the TrainJob) or Failed (TrainJobFailed with its reason);
        print progress changes and new rank-0 log lines on the way. A pod that stays unschedulable
        or unable to start for `stuck_after_s` (time for a cluster autoscaler to add a GPU node)
        fails the step with the pod's reason and deletes the TrainJob; so does `timeout_s`."""
        from kubernetes.client.exceptions import ApiException

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        printed, last_progress, stuck_since = 0, None, None
        while True:
            if self._stop.is_set():
                self.delete(namespace, name)
                raise TrainJobFailed(f"TrainJob {namespace}/{name}: the step was stopped (SIGTERM); TrainJob deleted")
            try:
                trainjob = self.get(namespace, name)
            except ApiException as exc:
                if exc.status == 404:
                    raise TrainJobFailed(f"TrainJob {namespace}/{name} disappeared (deleted by someone else)") from None
                raise
            printed = self._print_rank0_log(namespace, name, printed)
            progress = ((trainjob.get("status") or {}).get("trainerStatus") or {}).get("progressPercentage")
            if progress is not None and progress != last_progress:
                self.log(f"TrainJob {name}: {progress}%")
                last_progress = progress
            if condition(trainjob, "Complete"):
                self.log(f"TrainJob {namespace}/{name} complete")
                return trainjob
            failed = condition(trainjob, "Failed")
            if failed:
                raise TrainJobFailed(f"TrainJob {namespace}/{name} failed: {failed.get('reason')}: "
                                     f"{failed.get('message', '')}".rstrip(": "))
            stuck = self.stuck_pod(namespace, name)
            stuck_since = (stuck_since or time.monotonic()) if stuck else None
            if stuck and time.monotonic() - stuck_since >= stuck_after_s:
                self.delete(namespace, name)
                raise TrainJobFailed(f"TrainJob {namespace}/{name}: {stuck} (for {stuck_after_s:.0f} s); "
                                     "TrainJob deleted")
            if deadline is not None and time.monotonic() > deadline:
                self.delete(namespace, name)
                raise TrainJobFailed(f"TrainJob {namespace}/{name} not finished after {timeout_s:.0f} s; "
                                     "TrainJob deleted")
            self._stop.wait(self.poll_s)

    def _print_rank0_log(self, namespace: str, name: str, printed: int) -> int:
        """Print the rank-0 pod's log lines not printed yet; returns how many characters are printed."""
        from kubernetes.client.exceptions import ApiException

        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=RANK0_SELECTOR.format(name=name)).items
            if not pods:
                return printed
            text = self.core.read_namespaced_pod_log(pods[0].metadata.name, namespace, container=NODE_CONTAINER)
        except ApiException:
            return printed  # not scheduled yet, or the log is gone: progress comes from the status
        for line in text[printed:].splitlines():
            self.log(f"[rank 0] {line}")
        return len(text)

    def run(self, spec: TrainJobSpec, timeout_s: float | None = None, stuck_after_s: float = 900.0) -> dict[str, Any]:
        """Create and follow; SIGTERM (main thread only) deletes the TrainJob and raises TrainJobFailed.
        The step waits at most the TrainJob's own deadline plus ten minutes (the Trainer's verdict)."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._stop.set())
        try:
            self.create(spec)
            limit = timeout_s if timeout_s is not None else spec.active_deadline_s + 600
            return self.follow(spec.namespace, spec.name, limit, stuck_after_s)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


@dataclass
class ClusterSettings:
    """Where the TrainJob runs; the pipeline sets these on the finetune task (pipelines/platform.py
    owns the values), so that this library never imports the pipeline."""

    namespace: str
    image: str
    volume_claim: str
    mount_path: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    gpu_memory_gb: float | None = None
    cpu_per_gpu: str = ""  # the node profile's share per GPU (components/images.py: NodeProfile.gpu_step)
    memory_per_gpu: str = ""
    shm_size: str = "16Gi"
    service_account: str = ""
    image_pull_secrets: list[str] = field(default_factory=list)
    queue_name: str = ""
    active_deadline_s: int = 7 * 24 * 3600

    ENV = {"volume_claim": "SELFGUIDED_SHARED_PVC", "mount_path": "SELFGUIDED_SHARED_MOUNT",
           "node_selector": "SELFGUIDED_GPU_NODE_SELECTOR", "tolerations": "SELFGUIDED_GPU_TOLERATIONS"}
    # optional: set by the pipeline from what it was compiled with (pipelines/platform.py: TRAINJOB_ENV)
    OPTIONAL_ENV = {"gpu_memory_gb": "SELFGUIDED_GPU_MEMORY_GB", "image": "SELFGUIDED_TRAINJOB_IMAGE", "cpu_per_gpu": "SELFGUIDED_GPU_STEP_CPU",
                    "memory_per_gpu": "SELFGUIDED_GPU_STEP_MEMORY", "shm_size": "SELFGUIDED_SHM_SIZE",
                    "service_account": "SELFGUIDED_SERVICE_ACCOUNT", "image_pull_secrets": "SELFGUIDED_IMAGE_PULL_SECRETS",
                    "queue_name": "SELFGUIDED_KUEUE_QUEUE", "active_deadline_s": "SELFGUIDED_TRAINJOB_DEADLINE_S"}
    NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

    @classmethod
    def from_env(cls, image: str, env: dict[str, str] | None = None) -> "ClusterSettings":
        import json
        import os
        from pathlib import Path

        env = os.environ if env is None else env
        missing = [name for name in cls.ENV.values() if not env.get(name)]
        if missing:
            raise RuntimeError(f"num_nodes > 1 launches a TrainJob and needs {', '.join(missing)} (the pipeline sets "
                               "them on the finetune task from pipelines/platform.py)")
        namespace = env.get("SELFGUIDED_NAMESPACE") or (
            Path(cls.NAMESPACE_FILE).read_text().strip() if Path(cls.NAMESPACE_FILE).is_file() else "")
        if not namespace:
            raise RuntimeError(f"no namespace for the TrainJob: set SELFGUIDED_NAMESPACE or run in a pod "
                               f"({cls.NAMESPACE_FILE})")
        optional = {key: env[name] for key, name in cls.OPTIONAL_ENV.items() if env.get(name)}
        if "gpu_memory_gb" in optional:
            optional["gpu_memory_gb"] = float(optional["gpu_memory_gb"])
        if "image_pull_secrets" in optional:
            optional["image_pull_secrets"] = [n.strip() for n in optional["image_pull_secrets"].split(",") if n.strip()]
        if "active_deadline_s" in optional:
            optional["active_deadline_s"] = int(optional["active_deadline_s"])
        optional.setdefault("image", image)  # the compiled image wins over this process's default
        return cls(namespace=namespace, volume_claim=env[cls.ENV["volume_claim"]],
                   mount_path=env[cls.ENV["mount_path"]], node_selector=json.loads(env[cls.ENV["node_selector"]]),
                   tolerations=json.loads(env[cls.ENV["tolerations"]]), **optional)


def trainjob_name(*identity: str) -> str:
    """A DNS-1035 name, the same for the same run (so a retried step finds its TrainJob)."""
    import hashlib

    return "selfguided-ft-" + hashlib.sha256("\x00".join(identity).encode()).hexdigest()[:12]


def finetune_on_trainjob(train_file, base_model: str, arm: str, strategy: str, config, num_nodes: int,
                         gpus_per_node: int, checkpoint_dir: str, output_dir,
                         settings: ClusterSettings, runner: TrainJobRunner | None = None) -> dict[str, Any]:
    """Train on `num_nodes` nodes through a TrainJob and copy the Model artifact to `output_dir`.

    The training file goes to the shared volume, the nodes write the artifact there (rank 0, the
    same layout as a one-node run), and it is copied into the step's own output: downstream steps
    see no difference. Returns the training metrics of the artifact's manifest.
    """
    import json
    import os
    import shutil
    from pathlib import Path

    from selfguided.components.data.hashing import file_sha256
    from selfguided.components.model.artifact import copy_artifact, read_manifest
    from selfguided.components.training.memory_plan import plan_for_run
    from selfguided.components.training.worker import WorkerRun

    plan = plan_for_run(base_model, config, gpus_per_node, num_nodes, settings.gpu_memory_gb)  # DoesNotFit stops here
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    name = trainjob_name(file_sha256(train_file), base_model, arm, strategy, config_json, str(num_nodes),
                         str(gpus_per_node))
    work = Path(settings.mount_path) / "trainjobs" / name
    work.mkdir(parents=True, exist_ok=True)
    shared_file = work / f"{arm}.jsonl"
    shutil.copyfile(train_file, shared_file)
    command = ["torchrun", *WorkerRun(str(shared_file), base_model, str(work / "model"), config, arm=arm,
                                      strategy=strategy, checkpoint_dir=checkpoint_dir or str(work / "checkpoints")).args()]
    spec = TrainJobSpec(name=name, namespace=settings.namespace, image=settings.image, command=command,
                        num_nodes=num_nodes, gpus_per_node=gpus_per_node, volume_claim=settings.volume_claim,
                        mount_path=settings.mount_path, node_selector=settings.node_selector,
                        tolerations=settings.tolerations,
                        env={k: os.environ[k] for k in ("HF_HOME", "HF_ENDPOINT") if os.environ.get(k)},
                        cpu_per_node=_times(settings.cpu_per_gpu, gpus_per_node),
                        memory_per_node=_times(settings.memory_per_gpu, gpus_per_node), shm_size=settings.shm_size,
                        service_account=settings.service_account, image_pull_secrets=settings.image_pull_secrets,
                        active_deadline_s=settings.active_deadline_s, queue_name=settings.queue_name)
    runner = runner or TrainJobRunner()
    if plan is not None:
        runner.log(f"memory plan: {plan.describe()}")
    runner.run(spec)
    copy_artifact(work / "model", output_dir)
    return read_manifest(output_dir).train_metrics


def _times(quantity: str, factor: int) -> str:
    """A per-GPU CPU or memory quantity ("3", "500m", "24Gi") times the GPUs of a node; "" stays ""."""
    import re

    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", quantity.strip()) if quantity else None
    if not match:
        return ""
    value = float(match.group(1)) * max(1, factor)
    return f"{value:g}{match.group(2)}"
