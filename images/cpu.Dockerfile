# syntax=docker/dockerfile:1
# CPU image: the score, split, judge and register steps, and the `selfguided` CLI.
# Build from the repository root (docs/run-on-kubeflow.md):
#   docker build -f images/cpu.Dockerfile -t "$REGISTRY/selfguided-cpu:$VERSION" .

# One base for both stages: the virtual environment built in the first runs unchanged in the second.
FROM python:3.11.11-slim-bookworm AS base

FROM base AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# torch from PyTorch's CPU index: PyPI's Linux wheel is the CUDA build, gigabytes of nvidia-*
# libraries that this image would never use. Its dependencies come from PyPI below, pinned by the
# lock like everything else. TORCH_VERSION is the lock's torch pin (tests/test_images.py checks).
ARG TORCH_VERSION=2.13.0
RUN pip install --no-deps --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}+cpu"

# The package's dependencies in a layer of their own, rebuilt only when pyproject.toml or the lock
# change. The installed CPU torch satisfies the lock's torch pin, so PyPI's CUDA torch stays out.
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
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/selfguided
CMD ["selfguided", "--help"]
