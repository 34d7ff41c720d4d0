# syntax=docker/dockerfile:1
# CUDA image: the finetune and generate steps.
# Build from the repository root (docs/run-on-kubeflow.md):
#   docker build -f images/gpu.Dockerfile -t "$REGISTRY/selfguided-gpu:$VERSION" .
#
# No nvidia/cuda base: torch's Linux wheels on PyPI carry the CUDA user-space libraries (cuBLAS,
# cuDNN, NCCL, ... as nvidia-* wheels, pinned by the lock next to torch), and the node's NVIDIA
# container toolkit mounts the driver. A CUDA base image would add a second, unused copy of the
# same libraries. The lock's torch is built for CUDA 13: GPU nodes need driver 580 or newer, and
# GPUs of compute capability 7.5 or newer (Turing T4, Ampere, Ada, Hopper, Blackwell); CUDA 13 has
# no kernels for Volta and older (V100, P100), which manifests/gpu-check reports.

# One base for both stages: the virtual environment built in the first runs unchanged in the second.
FROM python:3.11.11-slim-bookworm AS base

FROM base AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# The package's dependencies, CUDA torch included, in a layer of their own, rebuilt only when
# pyproject.toml or the lock change.
COPY pyproject.toml images/requirements.lock /src/
RUN python -c "import tomllib; print(*tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" >/src/requirements.txt \
 && pip install --constraint /src/requirements.lock --requirement /src/requirements.txt

# The package itself, installed (not editable) so that component bodies can import it.
COPY README.md /src/
COPY components /src/components
COPY pipelines /src/pipelines
RUN pip install --no-deps /src \
 && pip check

FROM base
# A fixed non-root uid, the one the Kubernetes manifests run as. The KFP v2 launcher stages
# artifacts under /gcs, /minio and /s3: owning those lets it work without root.
RUN groupadd --gid 10001 selfguided \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin selfguided \
 && mkdir /gcs /minio /s3 \
 && chown 10001:10001 /gcs /minio /s3
COPY --from=build /opt/venv /opt/venv
# Which GPUs a pod sees is the device plugin's call (NVIDIA_VISIBLE_DEVICES, set per pod); the image
# only asks the container toolkit for the compute libraries and nvidia-smi.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/selfguided
CMD ["selfguided", "--help"]
