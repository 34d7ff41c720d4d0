"""Every pod of the compiled pipeline fits the node profile the docs recommend, so none is Pending
forever: the committed YAML (what the README uploads) and one compiled for another profile are
read back, executor by executor, and each request is held against the pool it is scheduled on
(GPU tasks: per GPU on the GPU pool; everything else: a CPU-pool node)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from selfguided.components.images import NodeProfile, _cpu, _gib
from selfguided.pipelines import platform

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "pipelines" / "selfguided_pipeline.yaml"
DOCS = REPO / "docs" / "run-on-kubeflow.md"


def _documents(path: Path) -> tuple[dict, dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    spec = docs[0]
    platform_spec = next((d for d in docs[1:] if "platforms" in d), {})
    return spec, platform_spec.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})


def _requests(path: Path) -> dict[str, dict]:
    """executor -> {cpu, memory (GiB), limits equal, gpu (bool), on_gpu_pool (bool)}."""
    spec, k8s = _documents(path)
    found = {}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        resources = executor["container"].get("resources", {})
        assert resources.get("resourceCpuRequest") and resources.get("resourceMemoryRequest"), f"{name}: no requests"
        selector = k8s.get(name, {}).get("nodeSelector", {}).get("labels", {})
        # finetune's pool is a task output (finetune_placement): the GPU pool on one node, no GPU
        # and no GPU node when a multi-node TrainJob holds them; its request must fit either
        placed_at_run_time = "nodeSelectorJson" in k8s.get(name, {}).get("nodeSelector", {})
        found[name] = {
            "cpu": _cpu(resources["resourceCpuRequest"]), "memory": _gib(resources["resourceMemoryRequest"]),
            "cpu_limit": _cpu(resources["resourceCpuLimit"]), "memory_limit": _gib(resources["resourceMemoryLimit"]),
            "gpu": "accelerator" in resources,
            "on_gpu_pool": selector.get(platform.GPU_NODE_SELECTOR_KEY) == platform.GPU_NODE_SELECTOR_VALUE
            or placed_at_run_time,
        }
    return found


def _assert_fits(requests: dict[str, dict], profile: NodeProfile) -> None:
    for name, r in requests.items():
        assert r["gpu"] == r["on_gpu_pool"], f"{name}: a GPU task off the GPU pool, or a CPU task holding a GPU node"
        assert (r["cpu_limit"], r["memory_limit"]) == (r["cpu"], r["memory"]), f"{name}: limits differ from requests"
        if r["gpu"]:
            cpu, memory = _cpu(profile.gpu_node_cpu), _gib(profile.gpu_node_memory)  # per GPU
        else:
            cpu, memory = _cpu(profile.cpu_node_cpu), _gib(profile.cpu_node_memory)
        assert r["cpu"] <= cpu * profile.usable and r["memory"] <= memory * profile.usable, (
            f"{name} asks for {r['cpu']:g} CPU / {r['memory']:g} GiB; a {'GPU' if r['gpu'] else 'CPU'}-pool node of "
            f"the profile offers {cpu:g} CPU / {memory:g} GiB (a pod may take {profile.usable:.0%})")


def test_committed_pipeline_fits_the_documented_node_profile():
    profile = NodeProfile()  # the defaults the docs state
    docs = DOCS.read_text(encoding="utf-8")
    for figure in (f"{profile.gpu_node_cpu} vCPU", profile.gpu_node_memory.replace("Gi", " GiB")):
        assert figure in docs, f"docs/run-on-kubeflow.md does not state the default node profile ({figure})"
    requests = _requests(COMMITTED)
    _assert_fits(requests, profile)
    gpu_tasks = {n for n, r in requests.items() if r["gpu"]}
    assert {"exec-finetune", "exec-generate"} <= gpu_tasks
    register = requests["exec-register"]
    assert not register["gpu"] and register["memory"] >= 16, "register merges a champion: it needs room, on the CPU pool"


def test_a_cluster_profile_set_at_compile_time_sizes_the_pods(tmp_path):
    """A bigger GPU node (8 vCPU / 64 GiB per GPU) and a small CPU pool (4 vCPU / 16 GiB), as env at compile time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFGUIDED_")} | {
        "SELFGUIDED_GPU_NODE_CPU": "8", "SELFGUIDED_GPU_NODE_MEMORY": "64Gi",
        "SELFGUIDED_CPU_NODE_CPU": "4", "SELFGUIDED_CPU_NODE_MEMORY": "16Gi"}
    out = tmp_path / "pipeline.yaml"
    proc = subprocess.run([str(Path(sys.executable).with_name("selfguided")), "compile", "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    requests = _requests(out)
    profile = NodeProfile.from_env(env)
    _assert_fits(requests, profile)
    assert (requests["exec-finetune"]["cpu"], requests["exec-finetune"]["memory"]) == (6, 48)
    assert requests["exec-register"]["memory"] == 12


def test_every_task_names_its_image_pull_policy():
    """The committed YAML's release tags may move (Always); CI compiles commit tags (IfNotPresent)."""
    spec, k8s = _documents(COMMITTED)
    for name in spec["deploymentSpec"]["executors"]:
        assert k8s.get(name, {}).get("imagePullPolicy") == platform.IMAGE_PULL_POLICY, f"{name}: no pull policy"


def test_register_reads_the_artifact_destination_at_run_time():
    """Where MLflow keeps artifacts comes from the profile's ConfigMap (manifests/), never compiled in."""
    spec, k8s = _documents(COMMITTED)
    container = spec["deploymentSpec"]["executors"]["exec-register"]["container"]
    assert "MLFLOW_ARTIFACTS_DESTINATION" not in {e["name"] for e in container.get("env", [])}
    (mapping,) = k8s["exec-register"]["configMapAsEnv"]
    assert mapping["configMapName"] == platform.MLFLOW_CONFIG_MAP_NAME
    assert mapping["keyToEnv"] == [{"configMapKey": "MLFLOW_ARTIFACTS_DESTINATION", "envVar": "MLFLOW_ARTIFACTS_DESTINATION"}]


def test_deploy_is_told_the_gpu_pool_for_the_inference_service_it_creates():
    spec, _ = _documents(COMMITTED)
    task = spec["root"]["dag"]["tasks"]["deploy"]["inputs"]["parameters"]
    assert task["node_selector"]["runtimeValue"]["constant"] == platform.GPU_NODE_SELECTOR
    assert task["tolerations"]["runtimeValue"]["constant"] == platform.GPU_TOLERATIONS
