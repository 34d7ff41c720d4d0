"""Where the steps run: the container images, their pull policy, and the CPU and memory every task
asks for, from the node profile of the cluster.

The tag follows the package version, so a released pipeline always runs the code it was
compiled from. SELFGUIDED_IMAGE_REGISTRY and SELFGUIDED_IMAGE_TAG override both at compile
time, so CI and users compile the same code for their own registry without editing it;
SELFGUIDED_CPU_IMAGE / SELFGUIDED_GPU_IMAGE name a whole reference (a digest) instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

try:
    PACKAGE_VERSION = version("selfguided")
except PackageNotFoundError:  # running from a source tree that was never installed
    PACKAGE_VERSION = "0.0.0"

IMAGE_REGISTRY = os.environ.get("SELFGUIDED_IMAGE_REGISTRY", "ghcr.io/selfguided")
IMAGE_TAG = os.environ.get("SELFGUIDED_IMAGE_TAG", PACKAGE_VERSION)
# A whole reference wins over registry and tag: CI compiles for the digests it pushed
# (`registry/selfguided-cpu@sha256:...`), so a moved tag can never change what a run pulls.
CPU_IMAGE = os.environ.get("SELFGUIDED_CPU_IMAGE") or f"{IMAGE_REGISTRY}/selfguided-cpu:{IMAGE_TAG}"  # CPU steps
GPU_IMAGE = os.environ.get("SELFGUIDED_GPU_IMAGE") or f"{IMAGE_REGISTRY}/selfguided-gpu:{IMAGE_TAG}"  # CUDA steps


# Image pull policy of every task. CI compiles for images tagged with the commit (never reused:
# IfNotPresent); the committed YAML names release tags that a rebuild may move: Always.
IMAGE_PULL_POLICY = os.environ.get("SELFGUIDED_IMAGE_PULL_POLICY", "Always")


# ---------------------------------------------------------------------------------------------
# What each task asks the scheduler for
# ---------------------------------------------------------------------------------------------
# Requests come from a node profile, the nodes the pods must fit, so that no task is Pending
# forever on the nodes the docs recommend: a shared cluster places the pipeline predictably, and an
# out-of-memory kill is an honest "raise the request", not a random failure (memory limit =
# request). Set the profile per cluster at compile or submit time with the environment variables
# below (docs/run-on-kubeflow.md, "Sizing").

def _cpu(text: str) -> float:
    text = str(text).strip()
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _gib(text: str) -> float:
    text = str(text).strip()
    for suffix, factor in (("Gi", 1.0), ("Mi", 1 / 1024), ("Ti", 1024.0), ("G", 1e9 / 2**30), ("M", 1e6 / 2**30)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)  # a bare number: GiB


def _cpu_text(cores: float) -> str:
    return f"{cores:g}" if float(cores).is_integer() else f"{round(cores * 1000)}m"


def _memory_text(gib: float) -> str:
    return f"{gib:g}Gi" if float(gib).is_integer() else f"{round(gib * 1024)}Mi"


def for_gpus(cpu_per_gpu: str, memory_per_gpu: str, gpus: int) -> tuple[str, str]:
    """(CPU, memory) of a pod holding `gpus` GPUs, at a GPU task's share per GPU (NodeProfile.gpu_step),
    e.g. ("3", "24Gi") x 8 -> ("24", "192Gi"); an empty share stays empty."""
    gpus = max(1, gpus)
    return (_cpu_text(_cpu(cpu_per_gpu) * gpus) if cpu_per_gpu else "",
            _memory_text(_gib(memory_per_gpu) * gpus) if memory_per_gpu else "")


@dataclass(frozen=True)
class NodeProfile:
    """The nodes the pipeline runs on. Defaults fit common one-GPU nodes, 4 vCPU and 32 GiB per GPU
    (AWS g6e.xlarge; for g5.xlarge's 16 GiB set SELFGUIDED_GPU_NODE_MEMORY=16Gi), and a CPU pool
    of 4 vCPU / 32 GiB nodes (r6i.xlarge class). A pod may ask for `usable` of a node (per GPU on the GPU pool): the rest
    is the kubelet's and the system's reserve and the DaemonSets' (device plugin, CNI, log agents).

    Environment (compile or submit time): SELFGUIDED_GPU_NODE_CPU and SELFGUIDED_GPU_NODE_MEMORY
    (per GPU), SELFGUIDED_CPU_NODE_CPU and SELFGUIDED_CPU_NODE_MEMORY, SELFGUIDED_NODE_USABLE.
    """

    gpu_node_cpu: str = "4"        # vCPU per GPU on the GPU pool
    gpu_node_memory: str = "32Gi"  # host memory per GPU on the GPU pool
    cpu_node_cpu: str = "4"        # vCPU of a CPU-pool node
    cpu_node_memory: str = "32Gi"  # memory of a CPU-pool node
    usable: float = 0.75           # share of a node (per GPU) that one pod may request

    @classmethod
    def from_env(cls, env=None) -> "NodeProfile":
        env = os.environ if env is None else env
        default = cls()
        return cls(gpu_node_cpu=env.get("SELFGUIDED_GPU_NODE_CPU", default.gpu_node_cpu),
                   gpu_node_memory=env.get("SELFGUIDED_GPU_NODE_MEMORY", default.gpu_node_memory),
                   cpu_node_cpu=env.get("SELFGUIDED_CPU_NODE_CPU", default.cpu_node_cpu),
                   cpu_node_memory=env.get("SELFGUIDED_CPU_NODE_MEMORY", default.cpu_node_memory),
                   usable=float(env.get("SELFGUIDED_NODE_USABLE", default.usable)))

    def gpu_step(self) -> dict[str, str]:
        """CPU and host memory of a GPU task (finetune, generate, model reference rows), per GPU:
        the usable share of the GPU pool's CPU and memory per GPU, in whole cores and GiB."""
        return {"cpu": _cpu_text(max(1, int(_cpu(self.gpu_node_cpu) * self.usable))),
                "memory": _memory_text(max(1, int(_gib(self.gpu_node_memory) * self.usable)))}

    def cpu_step(self, kind: str) -> dict[str, str]:
        """CPU and memory of a CPU task of `kind` (CPU_STEP_WANTS), capped at the usable share of a
        CPU-pool node; `register` gets the whole usable share (merging a champion's weights)."""
        cap_cpu, cap_gib = _cpu(self.cpu_node_cpu) * self.usable, _gib(self.cpu_node_memory) * self.usable
        wanted = CPU_STEP_WANTS[kind]
        cpu = min(_cpu(wanted["cpu"]), cap_cpu)
        gib = int(cap_gib) if wanted["memory"] == "node" else min(_gib(wanted["memory"]), cap_gib)
        return {"cpu": _cpu_text(round(cpu, 3)), "memory": _memory_text(gib)}


# What CPU tasks want, before the profile caps them.
CPU_STEP_WANTS: dict[str, dict[str, str]] = {
    "light": {"cpu": "500m", "memory": "1Gi"},      # plan, split, deploy
    "llm": {"cpu": "1", "memory": "2Gi"},           # score, judge, teacher rows (concurrent HTTP, JSON)
    "compare": {"cpu": "2", "memory": "4Gi"},       # bootstrap resamples, plots
    # Logs models; merges a LoRA champion in bf16 on CPU and writes it in bounded shards
    # (model/artifact.py: MERGED_MAX_SHARD_SIZE): about 2 bytes per parameter plus a shard, e.g.
    # 12 GiB for Polyglot-ko 5.8B. "node": the usable share of a CPU-pool node.
    "register": {"cpu": "2", "memory": "node"},
}
NODE_PROFILE = NodeProfile.from_env()
CPU_STEP_RESOURCES: dict[str, dict[str, str]] = {kind: NODE_PROFILE.cpu_step(kind) for kind in CPU_STEP_WANTS}
# GPU tasks: the profile's share per GPU, unless SELFGUIDED_GPU_STEP_CPU / SELFGUIDED_GPU_STEP_MEMORY
# say otherwise (pipelines/platform.py). Host memory a LoRA run of each base needs, estimated as
# its weights in bf16 (2 bytes a parameter, loaded once) plus 4 GiB for the process and the data
# loader: not measured on a cluster; all within the default 24Gi per GPU.
GPU_STEP_HOST_MEMORY_NEEDED: dict[str, str] = {
    "tiny": "4Gi",
    "EleutherAI/polyglot-ko-1.3b": "8Gi",
    "EleutherAI/polyglot-ko-3.8b": "12Gi",
    "EleutherAI/polyglot-ko-5.8b": "16Gi",
}
GPU_STEP_RESOURCES: dict[str, str] = NODE_PROFILE.gpu_step()
