#!/usr/bin/env bash
# Re-pin images/requirements.lock, the exact versions every image installs and the constraints
# `make install` (hence `make run`, `make test` and CI) installs the package and its dev extras
# with: one lock, so the tests run what the images run and an upstream release cannot turn
# `make test` red (the scheduled `newest` job in .github/workflows/ci.yml tries the newest releases).
#
# The pins start from what the active environment runs (the venv the tests pass in), so the
# images run the versions CI tested; uv then resolves the rest for the images' platform
# (CPython 3.11 on linux x86_64), where torch's CUDA wheels bring their nvidia-* libraries.
# Run it from the activated venv after changing dependencies in pyproject.toml; needs uv.
set -euo pipefail
cd "$(dirname "$0")/.."

tested="$(mktemp)"
trap 'rm -f "$tested"' EXIT
# A CPU build's local version (torch==2.13.0+cpu) names no wheel on PyPI: pin the version alone.
python -m pip freeze --exclude-editable | sed -e 's/+cpu$//' >"$tested"

uv pip compile pyproject.toml images/mlflow-server.in \
    --extra dev \
    --constraint "$tested" \
    --python-version 3.11.7 \
    --python-platform x86_64-manylinux_2_28 \
    --no-annotate \
    --quiet \
    --custom-compile-command "images/lock.sh" \
    --output-file images/requirements.lock
