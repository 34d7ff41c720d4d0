"""The container images the steps run in: one constant per image, owned by the steps.

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
