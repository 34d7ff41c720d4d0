"""The Kubeflow Trainer v2 `TrainJob` (runtime `torch-distributed`) of a multi-node fine-tuning: the
object (`TrainJobSpec`, `trainjob_manifest`) and following it to its end (`TrainJobRunner`);
multinode.py decides where it runs and wraps it into the finetune step.

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
SHM_SIZE = "16Gi"  # /dev/shm of a node pod, for NCCL and DataLoader workers with several GPUs per node
ACTIVE_DEADLINE_S = 3 * 24 * 3600  # a TrainJob's activeDeadlineSeconds unless the pipeline sets another
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
    shm_size: str = SHM_SIZE
    service_account: str = ""
    image_pull_secrets: list[str] = field(default_factory=list)
    active_deadline_s: int = ACTIVE_DEADLINE_S  # the Trainer fails the TrainJob (DeadlineExceeded) after this
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
