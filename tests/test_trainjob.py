"""Multi-node fine-tuning through a Kubeflow Trainer v2 TrainJob, against a stand-in Kubernetes API.

The stand-in serves the TrainJob custom-object endpoints, the pod list and the rank-0 pod log on
127.0.0.1, and plays the Trainer controller: each GET moves the TrainJob one state along a script
(running with progress, then Complete or Failed). For the end-to-end test it really runs the
TrainJob's command (one process instead of torchrun's nodes) before reporting Complete, so the
artifact the step returns is the one the command wrote on the "shared volume".

The objects the step creates are validated against the CRDs of Kubeflow Trainer v2.3.0
(tests/data/trainer-v2.3.0/, copied from kubeflow/trainer manifests/base/crds at tag v2.3.0).
"""

import json
import os
import signal
import subprocess
import sys
import threading
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes import client as k8s

from selfguided.components.data.jsonl import write_jsonl
from selfguided.components.model.artifact import read_manifest
from selfguided.components.model.prompting import format_prompt
from selfguided.components.training import multinode as mn
from selfguided.components.training import trainjob as tj
from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.memory_plan import DoesNotFit
from servers import QuietJsonHandler, local_http_server, serving

DATA = Path(__file__).parent / "data"
CRDS = DATA / "trainer-v2.3.0"
NAMESPACE = "team-a"
COLLECTION = f"/apis/{tj.GROUP}/{tj.VERSION}/namespaces/{NAMESPACE}/{tj.PLURAL}"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"


@lru_cache
def crd_schema(plural: str, release: str = "v2.3.0") -> dict:
    crd = yaml.safe_load((DATA / f"trainer-{release}" / f"trainer.kubeflow.org_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == tj.VERSION]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """The fields of `obj` that a structural CRD schema does not declare: what the API server prunes
    silently by default and rejects under fieldValidation=Strict ('strict decoding error: unknown
    field "spec.x"'; k8s.io/apiextensions-apiserver pruning, server-side field validation GA in 1.27).
    metadata is the API server's own; x-kubernetes-preserve-unknown-fields keeps anything."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            if not path and key in ("apiVersion", "kind", "metadata", "status"):
                continue
            where = f"{path}.{key}" if path else key
            if key not in schema["properties"]:
                found.append(where)
            else:
                found += unknown_fields(value, schema["properties"][key], where)
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            found += unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for index, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def validate(obj: dict, plural: str, release: str = "v2.3.0") -> None:
    """Valid and nothing pruned: the schema check plus strict field validation."""
    jsonschema.validate(obj, crd_schema(plural, release))
    assert unknown_fields(obj, crd_schema(plural, release)) == []


def running(progress):
    return {"conditions": [], "trainerStatus": {"progressPercentage": progress}}


COMPLETE = {"conditions": [{"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "done",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
FAILED = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                          "message": "node-1 OOMKilled", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}


class FakeTrainer:
    """The TrainJob, pod and log endpoints, with a scripted controller."""

    def __init__(self, script, on_complete=None, release="v2.3.0", pod_status=None):
        self.script, self.on_complete = list(script), on_complete
        self.release, self.pod_status = release, pod_status  # the cluster's Trainer CRD; a pod's status
        self.trainjobs: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.log_lines: list[str] = []
        fake = self

        class Handler(QuietJsonHandler):
            def _not_found(self, name):
                self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                 "message": f'trainjobs.trainer.kubeflow.org "{name}" not found', "code": 404})

            def _route(self, verb):
                path, _, query = self.path.partition("?")
                fake.requests.append((verb, path))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                if path == PODS:  # the rank-0 pod, once the TrainJob exists
                    items = [{"metadata": {"name": f"{n}-node-0-0", "namespace": NAMESPACE},
                              **({"status": fake.pod_status} if fake.pod_status else {})} for n in fake.trainjobs]
                    return self._send(200, {"kind": "PodList", "apiVersion": "v1", "items": items})
                if path.startswith(PODS + "/") and path.endswith("/log"):
                    return self._send(200, "".join(line + "\n" for line in fake.log_lines), "text/plain")
                if verb == "POST" and path == COLLECTION:
                    unknown = unknown_fields(body, crd_schema(tj.PLURAL, fake.release))
                    if unknown and "fieldValidation=Strict" in query:  # the API server's strict decoding
                        return self._send(400, {
                            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest",
                            "code": 400, "message": f'TrainJob in version "{tj.VERSION}" cannot be handled as a '
                            f'TrainJob: strict decoding error: '
                            + ", ".join(f'unknown field "{field}"' for field in unknown)})
                    name = body["metadata"]["name"]
                    if name in fake.trainjobs:
                        return self._send(409, {"kind": "Status", "reason": "AlreadyExists", "code": 409})
                    fake.trainjobs[name] = body
                    return self._send(201, body)
                name = path.rsplit("/", 1)[-1]
                if name not in fake.trainjobs:
                    return self._not_found(name)
                if verb == "DELETE":
                    del fake.trainjobs[name]
                    return self._send(200, {"kind": "Status", "status": "Success"})
                fake.advance(name)
                return self._send(200, fake.trainjobs[name])

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_DELETE(self):
                self._route("DELETE")

        self.server, self.host = local_http_server(Handler)

    def advance(self, name):
        """The controller's next move: the script's next status (the last one stays)."""
        status = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if "trainerStatus" in status:
            self.log_lines.append(f"finetune: {status['trainerStatus']['progressPercentage']}%")
        if status is COMPLETE and self.on_complete and not tj.condition(self.trainjobs[name], "Complete"):
            self.on_complete(self.trainjobs[name])  # the nodes' work, once, before the controller says Complete
        self.trainjobs[name]["status"] = status

    def api_client(self):
        return k8s.ApiClient(k8s.Configuration(host=self.host))


def spec(name="selfguided-ft-test"):
    return tj.TrainJobSpec(name=name, namespace=NAMESPACE, image="ghcr.io/selfguided/gpu:test",
                           command=["torchrun", "-m", "selfguided.components.training.worker", "--train-file", "x"],
                           num_nodes=2, gpus_per_node=8, volume_claim="selfguided-cache", mount_path="/mnt/selfguided",
                           node_selector={"selfguided.dev/node-pool": "gpu"},
                           tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])


def runner(fake, lines):
    return tj.TrainJobRunner(api_client=fake.api_client(), poll_s=0.01, log=lines.append)


def test_the_trainjob_validates_against_the_trainer_crd():
    manifest = tj.trainjob_manifest(spec())
    validate(manifest, "trainjobs")
    trainer = manifest["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["resourcesPerNode"]["limits"]) == (
        2, 8, {"nvidia.com/gpu": 8})
    assert manifest["spec"]["runtimeRef"]["name"] == "torch-distributed"
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(jsonschema.ValidationError):  # the schema check is a real one
        validate(broken, "trainjobs")


def test_manifests_runtime_and_rbac_validate():
    folder = Path(__file__).parent.parent / "manifests" / "training"
    docs = [d for f in sorted(folder.rglob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d and "kind" in d]
    runtimes = [d for d in docs if d["kind"] == "ClusterTrainingRuntime"]
    assert [r["metadata"]["name"] for r in runtimes] == [tj.RUNTIME]
    validate(runtimes[0], "clustertrainingruntimes")
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (rule,) = [r for r in role["rules"] if r["apiGroups"] == [tj.GROUP]]
    assert rule["resources"] == [tj.PLURAL] and set(rule["verbs"]) == {"create", "get", "delete"}  # test_cluster_rbac.py
    assert all("*" not in r["verbs"] + r["resources"] for r in role["rules"])
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_follows_a_trainjob_to_complete_with_progress_and_rank0_log():
    fake, lines = FakeTrainer([running(10), running(60), COMPLETE]), []
    with serving(fake.server):
        done = runner(fake, lines).run(spec())
    assert tj.condition(done, "Complete")
    assert fake.requests[0] == ("POST", COLLECTION)
    validate(fake.trainjobs["selfguided-ft-test"], "trainjobs")  # what reached the API, status included
    assert "TrainJob selfguided-ft-test: 60%" in lines
    assert "[rank 0] finetune: 10%" in lines and "[rank 0] finetune: 60%" in lines
    assert lines.count("[rank 0] finetune: 10%") == 1  # each log line printed once


def test_a_failed_trainjob_fails_the_step_with_its_reason():
    fake, lines = FakeTrainer([running(5), FAILED]), []
    with serving(fake.server), pytest.raises(tj.TrainJobFailed, match="BackoffLimitExceeded: node-1 OOMKilled"):
        runner(fake, lines).run(spec())


def test_sigterm_deletes_the_trainjob():
    fake, lines = FakeTrainer([running(1)]), []
    with serving(fake.server):
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        with pytest.raises(tj.TrainJobFailed, match="SIGTERM"):
            runner(fake, lines).run(spec())
        timer.join()
    assert ("DELETE", f"{COLLECTION}/selfguided-ft-test") in fake.requests
    assert fake.trainjobs == {}


def test_a_retried_step_follows_the_existing_trainjob():
    fake, lines = FakeTrainer([running(1), COMPLETE]), []
    with serving(fake.server):
        runner(fake, lines).create(spec())
        runner(fake, lines).run(spec())
    assert sum(1 for verb, _ in fake.requests if verb == "POST") == 2 and len(fake.trainjobs) == 1
    assert any("exists (a retried step)" in line for line in lines)


def test_a_retry_after_a_failure_starts_the_trainjob_again():
    fake, lines = FakeTrainer([FAILED]), []
    with serving(fake.server):
        with pytest.raises(tj.TrainJobFailed):
            runner(fake, lines).run(spec())
        fake.script = [FAILED, running(1), COMPLETE]  # the retry finds it failed, then the new one runs
        runner(fake, lines).run(spec())
    verbs = [verb for verb, path in fake.requests if path.startswith(COLLECTION)]
    assert verbs.count("POST") == 3 and verbs.count("DELETE") == 1  # created, refused (409), recreated
    assert any("failed before this retry" in line for line in lines)


def settings(tmp_path, gpu_memory_gb=None):
    return mn.ClusterSettings(namespace=NAMESPACE, image="ghcr.io/selfguided/gpu:test", volume_claim="selfguided-cache",
                              mount_path=str(tmp_path / "shared"), node_selector={"selfguided.dev/node-pool": "gpu"},
                              tolerations=[], gpu_memory_gb=gpu_memory_gb)


def test_multi_node_finetune_returns_the_artifact_the_trainjob_wrote(tmp_path):
    """The whole launcher path: train file to the shared volume, TrainJob created, the command it
    carries run (as the Trainer's nodes would), the artifact copied into the step's output."""
    train_file = tmp_path / "data" / "unscored.jsonl"
    write_jsonl(train_file, [{"id": str(i), "category": "blog", "prompt": format_prompt(f"글 {i}"),
                              "response": "짧은 답입니다."} for i in range(4)])

    def run_the_command(trainjob):
        command = trainjob["spec"]["trainer"]["command"]
        assert command[:3] == ["torchrun", "-m", "selfguided.components.training.worker"]
        result = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        assert result.returncode == 0, result.stderr[-3000:]

    fake, lines = FakeTrainer([running(50), COMPLETE], on_complete=run_the_command), []
    config = FinetuneConfig.for_model("tiny", max_steps=1)
    with serving(fake.server):
        metrics = mn.finetune_on_trainjob(
            train_file, "tiny", "unscored", "filter", config, num_nodes=2, gpus_per_node=4, checkpoint_dir="",
            output_dir=tmp_path / "model", settings=settings(tmp_path), runner=runner(fake, lines))
    manifest = read_manifest(tmp_path / "model")
    assert manifest.strategy == "filter" and manifest.train_metrics == metrics and metrics["steps"] == 1
    (trainjob,) = fake.trainjobs.values()
    validate(trainjob, "trainjobs")
    patch = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "selfguided-cache"
    assert pod["nodeSelector"] == {"selfguided.dev/node-pool": "gpu"}


def test_multi_node_refuses_a_setup_the_memory_plan_rejects_before_creating_anything(tmp_path):
    train_file = tmp_path / "unscored.jsonl"
    write_jsonl(train_file, [{"id": "1", "category": "blog", "prompt": "p", "response": "r"}])
    fake, lines = FakeTrainer([COMPLETE]), []
    config = FinetuneConfig.for_model("polyglot-ko-12.8b", method="full", parallelism="ddp")
    with serving(fake.server), pytest.raises(DoesNotFit, match=r"does NOT fit.*smallest setup that fits"):
        mn.finetune_on_trainjob(train_file, "polyglot-ko-12.8b", "unscored", "condition", config, num_nodes=2,
                                gpus_per_node=8, checkpoint_dir="", output_dir=tmp_path / "model",
                                settings=settings(tmp_path, gpu_memory_gb=80), runner=runner(fake, lines))
    assert fake.requests == []


def test_compiled_with_two_nodes_the_finetune_task_launches_a_trainjob_and_asks_for_no_gpu(tmp_path):
    """The finetune task's GPU count, node selector and tolerations are the finetune-placement task's
    outputs: no GPU and no GPU node with num_nodes=2 (the TrainJob's pods hold them; a launcher on a
    GPU node would take its CPU and memory from them), num_gpus on the GPU pool on one node; the task
    carries num_nodes and where the TrainJob runs."""
    from kfp import compiler

    from selfguided.components.steps.finetune import finetune_placement
    from selfguided.pipelines import platform
    from selfguided.pipelines.pipeline import self_guided_pipeline

    path = tmp_path / "two-nodes.yaml"
    compiler.Compiler().compile(self_guided_pipeline, str(path), pipeline_parameters={"num_nodes": 2, "num_gpus": 8})
    spec, kube = list(yaml.safe_load_all(path.read_text()))[:2]
    assert spec["root"]["inputDefinitions"]["parameters"]["num_nodes"]["defaultValue"] == 2
    accelerator = spec["deploymentSpec"]["executors"]["exec-finetune"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--finetune-placement-gpu_limit']}}"
    placement = kube["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-finetune"]
    assert placement["nodeSelector"]["nodeSelectorJson"]["taskOutputParameter"]["producerTask"] == "finetune-placement"
    assert placement["tolerations"] == [{"tolerationJson": {"taskOutputParameter": {
        "outputParameterKey": "tolerations", "producerTask": "finetune-placement"}}}]
    place = finetune_placement.python_func
    assert tuple(place(num_gpus=8, num_nodes=2, node_selector=platform.GPU_NODE_SELECTOR,
                       tolerations=platform.GPU_TOLERATIONS)) == (0, "0", {}, [])
    assert tuple(place(num_gpus=8, num_nodes=1, node_selector=platform.GPU_NODE_SELECTOR,
                       tolerations=platform.GPU_TOLERATIONS)) == (8, "8", platform.GPU_NODE_SELECTOR,
                                                                  platform.GPU_TOLERATIONS)
    (loop,) = [c for c in spec["components"].values() if "finetune" in c.get("dag", {}).get("tasks", {})]
    tasks = loop["dag"]["tasks"]
    inputs = tasks["finetune"]["inputs"]["parameters"]
    assert inputs["num_nodes"]["componentInputParameter"].endswith("num_nodes")
    assert inputs["gpus_per_node"]["componentInputParameter"].endswith("num_gpus")  # the TrainJob's per node
    assert inputs["num_gpus"]["taskOutputParameter"]["producerTask"] == "finetune-placement"  # its own
    constants = tasks["finetune-placement"]["inputs"]["parameters"]
    assert constants["node_selector"]["runtimeValue"]["constant"] == platform.GPU_NODE_SELECTOR
    assert constants["tolerations"]["runtimeValue"]["constant"] == platform.GPU_TOLERATIONS
    env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"]["exec-finetune"]["container"]["env"]}
    assert env["SELFGUIDED_SHARED_PVC"] == platform.CACHE_PVC_NAME
    assert json.loads(env["SELFGUIDED_GPU_NODE_SELECTOR"]) == platform.GPU_NODE_SELECTOR
    assert "exec-finetune" in kube["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    finetune_pod = kube["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-finetune"]
    assert int(finetune_pod["activeDeadlineSeconds"]) == platform.FINETUNE_TIMEOUT_S > platform.TRAINJOB_DEADLINE_S
    assert env["SELFGUIDED_TRAINJOB_IMAGE"] == platform.GPU_IMAGE, "the TrainJob runs the compiled image"
    (loop_task,) = [t for t in spec["root"]["dag"]["tasks"].values() if "iteratorPolicy" in t
                    and "finetune" in spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]]
    assert loop_task["iteratorPolicy"]["parallelismLimit"] == platform.GPU_PARALLELISM, "arms x replicates capped"


def full_spec(name="selfguided-ft-full"):
    return tj.TrainJobSpec(
        name=name, namespace=NAMESPACE, image="registry.example.com/ml/selfguided-gpu@sha256:" + "a" * 64,
        command=["torchrun", "-m", "selfguided.components.training.worker"], num_nodes=2, gpus_per_node=8,
        volume_claim="selfguided-cache", mount_path="/mnt/selfguided", node_selector={"pool": "gpu"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        cpu_per_node="24", memory_per_node="192Gi", shm_size="64Gi", service_account="selfguided-pipeline",
        image_pull_secrets=["regcred"], active_deadline_s=3600, queue_name="gpu-queue")


def test_the_trainjob_ends_and_its_pods_are_complete_citizens():
    """What every node pod needs on a real cluster, expressed in Trainer v2.3's CRD, nothing pruned:
    out of the Istio mesh (a sidecar keeps the pod Running after torchrun exits), CPU and memory with
    the GPUs (not BestEffort), /dev/shm, the pipeline's ServiceAccount and pull secret, a restricted
    securityContext (the image runs as uid 10001), a deadline, and the Kueue queue when one is set."""
    manifest = tj.trainjob_manifest(full_spec())
    validate(manifest, "trainjobs")
    assert manifest["spec"]["activeDeadlineSeconds"] == 3600
    assert manifest["metadata"]["labels"][tj.KUEUE_QUEUE_LABEL] == "gpu-queue"
    per_node = manifest["spec"]["trainer"]["resourcesPerNode"]
    assert per_node["requests"] == per_node["limits"] == {"nvidia.com/gpu": 8, "cpu": "24", "memory": "192Gi"}
    (patch,) = manifest["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    spec_ = pod["spec"]
    assert spec_["serviceAccountName"] == "selfguided-pipeline" and spec_["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec_["securityContext"]["runAsNonRoot"] is True
    (container,) = spec_["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in spec_["volumes"]


def test_trainer_v21_cannot_express_the_trainjob_and_the_step_says_which_version_it_needs():
    """Kubeflow 1.11 bundles Trainer v2.1: its TrainJob has podTemplateOverrides, no runtimePatches
    and no activeDeadlineSeconds (tests/data/trainer-v2.1.0, from kubeflow/trainer
    manifests/base/crds at tag v2.1.0). Sent without strict validation, the API server would prune
    both and the pods would wait forever without their volume; sent Strict, it refuses, and the step
    names the minimum Trainer version."""
    assert set(unknown_fields(tj.trainjob_manifest(full_spec()), crd_schema(tj.PLURAL, "v2.1.0"))) == {
        "spec.runtimePatches", "spec.activeDeadlineSeconds"}
    fake, lines = FakeTrainer([running(1)], release="v2.1.0"), []
    with serving(fake.server), pytest.raises(tj.TrainerTooOld, match=r"does not know spec\.activeDeadlineSeconds, "
                                             r"spec\.runtimePatches: .*needs Kubeflow Trainer v2\.3 or newer"):
        runner(fake, lines).run(full_spec())
    assert fake.trainjobs == {}


def test_a_pod_that_cannot_start_fails_the_step_with_its_reason_and_deletes_the_trainjob():
    pulling = {"phase": "Pending", "containerStatuses": [{
        "name": "node", "image": "registry.example.com/ml/selfguided-gpu:typo", "imageID": "", "ready": False,
        "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff",
                                                 "message": 'Back-off pulling image "selfguided-gpu:typo"'}}}]}
    unschedulable = {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}
    for status, reason in ((pulling, "ImagePullBackOff: Back-off pulling image"),
                           (unschedulable, "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu")):
        fake, lines = FakeTrainer([running(0)], pod_status=status), []
        with serving(fake.server), pytest.raises(tj.TrainJobFailed, match=reason):
            runner(fake, lines).run(full_spec(), stuck_after_s=0.05)
        assert fake.trainjobs == {}, "the stuck TrainJob is deleted"


def test_the_step_waits_no_longer_than_its_deadline():
    fake, lines = FakeTrainer([running(1)]), []
    with serving(fake.server), pytest.raises(tj.TrainJobFailed, match="not finished after 0 s; TrainJob deleted"):
        runner(fake, lines).run(full_spec(), timeout_s=0.05)
    assert fake.trainjobs == {}


def test_cluster_settings_carry_the_compiled_image_and_the_node_profile(monkeypatch):
    from selfguided.pipelines import platform

    env = dict(platform.TRAINJOB_ENV, SELFGUIDED_NAMESPACE=NAMESPACE)
    settings = mn.ClusterSettings.from_env("ghcr.io/selfguided/selfguided-gpu:default-in-the-pod", env)
    assert settings.image == platform.GPU_IMAGE == env["SELFGUIDED_TRAINJOB_IMAGE"]
    assert (settings.cpu_per_gpu, settings.memory_per_gpu) == (platform.GPU_STEP_CPU, platform.GPU_STEP_MEMORY)
    assert settings.service_account == platform.PIPELINE_SERVICE_ACCOUNT
    assert settings.active_deadline_s == platform.TRAINJOB_DEADLINE_S
    from selfguided.components.images import for_gpus

    assert for_gpus("3", "24Gi", 8) == ("24", "192Gi") and for_gpus("", "", 8) == ("", "")
