"""What the manifest tests share (tests/test_manifests.py, tests/test_serving_manifests.py):
kubectl to render kustomizations, and checkov with a canary that proves the scan reads its files.
"""

from __future__ import annotations

import json
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
