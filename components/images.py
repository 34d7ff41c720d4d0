"""Where the steps run: the container images, and the CPU and memory every task asks for.

The tag follows the package version, so a released pipeline always runs the code it was
compiled from. SELFGUIDED_IMAGE_REGISTRY and SELFGUIDED_IMAGE_TAG override both at compile
time, so CI and users compile the same code for their own registry without editing it.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

try:
    PACKAGE_VERSION = version("selfguided")
except PackageNotFoundError:  # running from a source tree that was never installed
    PACKAGE_VERSION = "0.0.0"

IMAGE_REGISTRY = os.environ.get("SELFGUIDED_IMAGE_REGISTRY", "ghcr.io/selfguided")
IMAGE_TAG = os.environ.get("SELFGUIDED_IMAGE_TAG", PACKAGE_VERSION)
CPU_IMAGE = f"{IMAGE_REGISTRY}/selfguided-cpu:{IMAGE_TAG}"  # score, split, judge, compare, register, deploy
GPU_IMAGE = f"{IMAGE_REGISTRY}/selfguided-gpu:{IMAGE_TAG}"  # finetune, generate (CUDA)


# What each task asks the scheduler for, so a shared cluster places the pipeline predictably and an
# out-of-memory kill is an honest "raise the request", not a random failure. Requests and limits
# (memory limit = request: a step that needs more fails with OOMKilled instead of starving a node).
CPU_STEP_RESOURCES: dict[str, dict[str, str]] = {
    "light": {"cpu": "500m", "memory": "1Gi"},      # plan, split, deploy
    "llm": {"cpu": "1", "memory": "2Gi"},           # score, judge (concurrent HTTP, JSON)
    "compare": {"cpu": "2", "memory": "4Gi"},       # bootstrap resamples, plots
    "register": {"cpu": "4", "memory": "48Gi"},     # logs models; merges a LoRA champion in fp32 on CPU
}
# GPU steps (finetune, generate, reference answers): host memory for loading the weights and the
# data loader, CPUs for tokenization, per base model. The compiled pipeline uses the 1.3B row unless
# SELFGUIDED_GPU_STEP_CPU / SELFGUIDED_GPU_STEP_MEMORY say otherwise (pipelines/platform.py).
GPU_STEP_RESOURCES: dict[str, dict[str, str]] = {
    "tiny": {"cpu": "2", "memory": "4Gi"},
    "EleutherAI/polyglot-ko-1.3b": {"cpu": "8", "memory": "48Gi"},
    "EleutherAI/polyglot-ko-3.8b": {"cpu": "8", "memory": "96Gi"},
    "EleutherAI/polyglot-ko-5.8b": {"cpu": "12", "memory": "128Gi"},
}
