"""What the manifest tests share (tests/test_manifests.py, tests/test_serving_manifests.py):
kubectl to render kustomizations, and checkov with a canary that proves the scan reads its files.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

def kubectl() -> str:
    """The kubectl that renders manifests/ (`kubectl kustomize`), or a test failure saying how to get it."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not on PATH: it renders manifests/ (`kubectl kustomize`, v1.27 or newer "
                    "bundles kustomize v5); install it from your distribution or https://kubernetes.io/docs/tasks/tools/")
    return found


# A pod that breaks most rules: proves the scan really reads the files it is given.
CANARY = """\
apiVersion: v1
kind: Pod
metadata: {name: canary, namespace: canary}
spec:
  containers:
    - {name: canary, image: "busybox:latest", securityContext: {privileged: true}}
"""
CANARY_FILE = "/canary.yaml"  # as checkov reports it
CANARY_CHECKS = {"CKV_K8S_16", "CKV_K8S_14"}  # privileged container, image tag :latest


def checkov_results(directory: Path) -> dict:
    """Write the canary into `directory`, scan it with checkov and return the report's results;
    asserts that the canary was flagged, so an empty scan cannot pass for a clean one."""
    (directory / "canary.yaml").write_text(CANARY, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "checkov.main", "--directory", str(directory), "--framework", "kubernetes",
         "--output", "json", "--skip-download"],
        capture_output=True, text=True, timeout=600, cwd=directory)
    if "No module named checkov" in proc.stderr:
        pytest.fail("checkov is not installed: pip install -e '.[dev]'")
    assert proc.returncode in (0, 1), f"checkov crashed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    results = (report[0] if isinstance(report, list) else report)["results"]
    on_canary = {c["check_id"] for c in results["failed_checks"] if c["file_path"] == CANARY_FILE}
    assert on_canary >= CANARY_CHECKS, "checkov did not flag a privileged pod on :latest: the scan is not running"
    return results


def findings(results: dict) -> list[dict]:
    """The failed checks outside the canary."""
    return [c for c in results["failed_checks"] if c["file_path"] != CANARY_FILE]


# ---------------------------------------------------------------------------------------------
# Rendered objects, and what the kubelet makes of a container (tests/test_manifests.py,
# tests/test_postgres_deployment.py)
# ---------------------------------------------------------------------------------------------

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"


def render(kustomization: str, workdir: Path, env_files: dict[str, str] | None = None) -> list[dict]:
    """`kubectl kustomize manifests/<kustomization>` from a copy of manifests/ in `workdir` whose
    *.env files are the committed templates, except those given in `env_files` (path below
    manifests/ -> content): a developer's filled-in files never reach a test."""
    import yaml

    tree = workdir / "manifests"
    shutil.copytree(MANIFESTS, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    for relative, content in (env_files or {}).items():
        (tree / relative).write_text(content, encoding="utf-8")
    proc = subprocess.run([kubectl(), "kustomize", str(tree / kustomization)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"`kubectl kustomize manifests/{kustomization}` failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objs: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    """The one object of `kind` named `name` (or, for generated objects, `name-<hash>`)."""
    found = [o for o in objs if o["kind"] == kind and namespace in (None, o["metadata"].get("namespace"))
             and (o["metadata"]["name"] == name or re.fullmatch(rf"{re.escape(name)}-[a-z0-9]{{10}}", o["metadata"]["name"]))]
    assert len(found) == 1, f"expected one {kind} {namespace or '*'}/{name}, found {len(found)}"
    return found[0]


def secret_data(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()} | secret.get("stringData", {})


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, `$$` is a literal `$`, others left as written."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def kubelet_env(container: dict, objs: list[dict], namespace: str) -> dict[str, str]:
    """The environment the kubelet gives `container`: envFrom sources in order, then `env`, each
    value expanded against the variables defined before it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            env |= secret_data(find(objs, "Secret", source["secretRef"]["name"], namespace))
        else:
            env |= find(objs, "ConfigMap", source["configMapRef"]["name"], namespace)["data"]
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "secretKeyRef" in ref:
            env[var["name"]] = secret_data(find(objs, "Secret", ref["secretKeyRef"]["name"], namespace))[ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[var["name"]] = find(objs, "ConfigMap", ref["configMapKeyRef"]["name"], namespace)["data"][ref["configMapKeyRef"]["key"]]
        else:
            assert "value" in var, f"{container['name']}: {var['name']} comes from {ref}; teach kubelet_env"
            env[var["name"]] = expand(var["value"], env)
    return env


def argv(container: dict, env: dict[str, str]) -> list[str]:
    """The container's command line as the kubelet runs it: command + args, $(VAR) expanded."""
    return [expand(a, env) for a in container.get("command", []) + container.get("args", [])]
