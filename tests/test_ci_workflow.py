"""The GitHub Actions workflow (.github/workflows/ci.yml): it runs the README's test command,
fails when the committed pipeline drifts from the code, uploads on a push to main or a tag, and
handles secrets only through `${{ secrets.* }}` in step environments.

The upload step's script is run for real with a stand-in `selfguided` that records its arguments,
which are then parsed by the real `upload` options. checkov's GitHub Actions checks (shell
injection, permissions) run on the workflow; `actionlint`, when on PATH, too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selfguided.pipelines.upload import DEFAULT_PACKAGE, add_upload_parser

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")
SHA = "3f9c2ab1" * 5  # a commit SHA, as GITHUB_SHA holds it
REAL_LOOKING = re.compile(r"sk-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}")


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def _triggers(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True


def _steps(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for step in job["steps"]:
            yield job_name, step


def _run_lines(step: dict) -> list[str]:
    return [line.strip() for line in step.get("run", "").splitlines()]


def _job_running(workflow: dict, command: str) -> str:
    jobs = [name for name, step in _steps(workflow) if command in _run_lines(step)]
    assert jobs, f"no step runs `{command}`"
    return jobs[0]


def _upload_step(workflow: dict) -> tuple[str, dict]:
    found = [(name, step) for name, step in _steps(workflow) if "selfguided upload" in step.get("run", "")]
    assert len(found) == 1, "expected one step running `selfguided upload`"
    return found[0]


def test_runs_on_pushes_and_pull_requests(workflow):
    on = _triggers(workflow)
    assert "main" in on["push"]["branches"] and on["push"]["tags"], "push to main and tags"
    assert "pull_request" in on
    assert workflow["permissions"] == {"contents": "read"}, "the token needs to read the code, nothing more"


def test_runs_the_readme_test_command_on_python_311(workflow):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make test" in readme, "the README's test command changed: update the workflow and this test"
    assert re.search(r"^test:", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)
    job = workflow["jobs"][_job_running(workflow, "make test")]
    uses = [s.get("uses", "") for s in job["steps"]]
    assert uses[0].startswith("actions/checkout@")
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert str(setup["with"]["python-version"]) == "3.11"


def test_fails_when_the_compiled_pipeline_drifts(workflow):
    assert re.search(r"^compile:.*\n\t.*selfguided compile -o pipelines/selfguided_pipeline.yaml",
                     (REPO / "Makefile").read_text(encoding="utf-8"), re.M), "`make compile` writes the committed YAML"
    name = _job_running(workflow, "make compile")
    assert name == _job_running(workflow, "make test"), "drift is checked where the tests run, on every push and PR"
    step = next(s for _, s in _steps(workflow) if "make compile" in _run_lines(s))
    lines = _run_lines(step)
    diff = [line for line in lines if "git diff --exit-code" in line]
    assert diff and "pipelines/selfguided_pipeline.yaml" in diff[0], "no `git diff --exit-code` on the compiled YAML"
    assert lines.index("make compile") < lines.index(diff[0])


def test_uploads_only_on_push_to_main_or_a_tag_after_the_tests(workflow):
    job_name, step = _upload_step(workflow)
    job = workflow["jobs"][job_name]
    assert _job_running(workflow, "make test") in ([job["needs"]] if isinstance(job["needs"], str) else job["needs"])
    condition = job["if"]
    assert "github.event_name == 'push'" in condition
    assert "refs/heads/main" in condition and "refs/tags/" in condition
    command = next(line for line in _run_lines(step) if "selfguided upload" in line)
    assert '--kfp-host "$KFP_HOST"' in command and "--pipeline selfguided" in command


def test_secrets_only_through_step_environments(workflow):
    text = WORKFLOW.read_text(encoding="utf-8")
    assert not REAL_LOOKING.search(text), "a credential is written in the workflow"
    for _, step in _steps(workflow):
        assert "${{" not in step.get("run", ""), \
            f"step {step.get('name')!r}: expressions in a script invite injection; pass them through env"
        for key, value in (step.get("with") or {}).items():
            assert "secrets." not in str(value), f"step {step.get('name')!r}: secret passed as input {key}"
    for expr in EXPRESSION.findall(text):
        if "secrets." in expr:
            assert re.fullmatch(r"\s*secrets\.[A-Z][A-Z0-9_]*\s*", expr), f"secret used inside an expression: {expr!r}"
    _, upload = _upload_step(workflow)
    assert upload["env"]["KFP_HOST"] == "${{ secrets.KFP_HOST }}"
    assert upload["env"]["KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}"



def test_every_action_is_pinned_by_commit_with_its_release_named():
    """A tag can be moved to other code; a commit SHA cannot (GitHub's hardening guide for Actions).
    The release it stands for is written beside it, for people and for Dependabot."""
    for path in sorted(WORKFLOW.parent.glob("*.yml")):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        uses = [line for line in lines if line.startswith(("uses:", "- uses:"))]
        assert uses, path.name
        for line in uses:
            assert re.search(r"uses: [\w.-]+/[\w.-]+@[0-9a-f]{40}  # v\d+\.\d+\.\d+$", line), f"{path.name}: {line}"


def _run_upload_script(workflow: dict, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """The upload step's script in bash, as the runner runs it, with a recording `selfguided`."""
    _, step = _upload_step(workflow)
    record = tmp_path / "calls.jsonl"
    stub = tmp_path / ".venv" / "bin" / "selfguided"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(record)!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], "
                    "'registry': os.environ.get('SELFGUIDED_IMAGE_REGISTRY'), "
                    "'tag': os.environ.get('SELFGUIDED_IMAGE_TAG'), "
                    "'pull_policy': os.environ.get('SELFGUIDED_IMAGE_PULL_POLICY')}) + '\\n')\n")
    stub.chmod(0o755)
    base = {"PATH": os.environ["PATH"], "RUNNER_TEMP": str(tmp_path / "runner-temp"), "GITHUB_REF_TYPE": "branch",
            "GITHUB_REF_NAME": "main", "KFP_HOST": "", "KFP_TOKEN": "", "IMAGE_REGISTRY": "",
            "GITHUB_SHA": SHA, "OWNER": "SelfGuided"}
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=tmp_path,
                          env=base | env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return proc, calls


def _parse_upload(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser(prog="selfguided")
    add_upload_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_upload_script_on_main_and_on_a_tag(workflow, tmp_path):
    """The uploaded package is compiled for the commit's images (tag = the commit SHA, pull policy
    set), in the default registry, never the committed YAML with its release-tag placeholders."""
    host = "https://kubeflow.example.com/pipeline"
    proc, calls = _run_upload_script(workflow, tmp_path, KFP_HOST=host)
    assert proc.returncode == 0, proc.stderr
    compile_call, upload_call = calls
    assert compile_call["argv"][0] == "compile"
    assert (compile_call["registry"], compile_call["tag"], compile_call["pull_policy"]) == (
        "ghcr.io/selfguided", SHA, "IfNotPresent"), "ghcr.io/<owner, lower case>, the commit's tag, pulled once"
    package = compile_call["argv"][compile_call["argv"].index("-o") + 1]
    args = _parse_upload(upload_call["argv"])
    assert (args.kfp_host, args.pipeline, args.package, args.version) == (host, "selfguided", package, None)
    assert package != DEFAULT_PACKAGE and package.startswith(str(tmp_path / "runner-temp"))
    assert upload_call["registry"] is None and upload_call["tag"] is None, "the image overrides are for the compile only"

    proc, calls = _run_upload_script(workflow, tmp_path / "tag", KFP_HOST=host, GITHUB_REF_TYPE="tag",
                                     GITHUB_REF_NAME="v0.2.0")
    assert proc.returncode == 0, proc.stderr
    assert _parse_upload(calls[-1]["argv"]).version == "v0.2.0", "a tag names the version"


def test_upload_script_compiles_for_the_configured_registry(workflow, tmp_path):
    proc, calls = _run_upload_script(workflow, tmp_path, KFP_HOST="http://kfp:8888", IMAGE_REGISTRY="registry.example.com/ml")
    assert proc.returncode == 0, proc.stderr
    compile_call, upload_call = calls
    assert compile_call["argv"][0] == "compile" and compile_call["registry"] == "registry.example.com/ml"
    assert compile_call["tag"] == SHA
    package = compile_call["argv"][compile_call["argv"].index("-o") + 1]
    assert package.startswith(str(tmp_path / "runner-temp"))
    assert _parse_upload(upload_call["argv"]).package == package
    assert upload_call["registry"] is None, "the registry override is for the compile only"


def _run_images_script(workflow: dict, tmp_path: Path, image: str, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """The images job's build step in bash, with a recording `docker` on PATH."""
    job = workflow["jobs"]["images"]
    (step,) = [s for s in job["steps"] if "docker buildx build" in s.get("run", "")]
    record = tmp_path / "docker.jsonl"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / "docker"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\nsys.stdin.read() if 'login' in sys.argv else None\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    stub.chmod(0o755)
    base = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "IMAGE": image, "IMAGE_REGISTRY": "", "OWNER": "SelfGuided",
            "ACTOR": "someone", "GITHUB_TOKEN": "token-from-actions", "REGISTRY_USERNAME": "", "REGISTRY_PASSWORD": "",
            "GITHUB_SHA": SHA}
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=REPO,
                          env=base | env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return proc, calls


def test_images_are_built_from_the_commit_and_tagged_with_it(workflow, tmp_path):
    """Every Dockerfile under images/ is built on a push to main or a tag, before the upload, and
    pushed as <registry>/selfguided-<name>:<commit SHA>, the images the uploaded pipeline names."""
    job = workflow["jobs"]["images"]
    assert job["needs"] == "test" and job["if"] == workflow["jobs"]["upload"]["if"]
    assert "images" in workflow["jobs"]["upload"]["needs"], "upload only once the images exist"
    assert job["permissions"] == {"contents": "read", "packages": "write", "id-token": "write"}
    assert any("cosign sign --yes" in s.get("run", "") and "@$digest" in s["run"] for s in job["steps"]), \
        "images are signed by digest"
    dockerfiles = sorted(p.name.removesuffix(".Dockerfile") for p in (REPO / "images").glob("*.Dockerfile"))
    assert sorted(job["strategy"]["matrix"]["image"]) == dockerfiles
    from selfguided.pipelines import platform

    for image in dockerfiles:
        proc, calls = _run_images_script(workflow, tmp_path / image, image)
        assert proc.returncode == 0, proc.stderr
        login, build = calls
        assert login[:2] == ["login", "ghcr.io"] and "--password-stdin" in login
        assert build[:2] == ["buildx", "build"] and "--push" in build
        assert build[build.index("--file") + 1] == f"images/{image}.Dockerfile"
        assert build[build.index("--tag") + 1] == f"ghcr.io/selfguided/selfguided-{image}:{SHA}"
    # The pipeline names its images the same way: <registry>/selfguided-{cpu,gpu}:<tag>.
    assert platform.CPU_IMAGE.endswith(f"/selfguided-cpu:{platform.IMAGE_TAG}")
    assert platform.GPU_IMAGE.endswith(f"/selfguided-gpu:{platform.IMAGE_TAG}")

    proc, calls = _run_images_script(workflow, tmp_path / "own", "cpu", IMAGE_REGISTRY="registry.example.com/ml",
                                     REGISTRY_USERNAME="robot", REGISTRY_PASSWORD="secret-from-settings")
    assert proc.returncode == 0, proc.stderr
    assert calls[0][:2] == ["login", "registry.example.com"] and "robot" in calls[0]
    assert calls[1][calls[1].index("--tag") + 1] == f"registry.example.com/ml/selfguided-cpu:{SHA}"


def test_upload_script_without_a_host_warns_and_uploads_nothing(workflow, tmp_path):
    proc, calls = _run_upload_script(workflow, tmp_path)
    assert proc.returncode == 0 and calls == []
    assert "::warning::" in proc.stdout and "KFP_HOST" in proc.stdout


# A workflow with a script injection: proves checkov really scans what it is given.
CANARY = """\
on: issues
jobs:
  canary:
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ github.event.issue.title }}"
"""


def test_checkov_finds_nothing_in_the_workflow(tmp_path):
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    shutil.copy(WORKFLOW, workflows / "ci.yml")
    (workflows / "canary.yml").write_text(CANARY, encoding="utf-8")
    results = {}
    for name in ("ci.yml", "canary.yml"):
        proc = subprocess.run([sys.executable, "-m", "checkov.main", "--file", str(workflows / name), "--framework",
                               "github_actions", "--output", "json", "--skip-download"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode in (0, 1), f"checkov crashed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        report = json.loads(proc.stdout)
        results[name] = (report[0] if isinstance(report, list) else report).get("results", {})
    assert "CKV_GHA_2" in {c["check_id"] for c in results["canary.yml"].get("failed_checks", [])}, \
        "checkov did not flag a shell injection: the scan is not running"
    # checkov silently skips a workflow it cannot parse: some checks must have passed.
    assert results["ci.yml"].get("passed_checks"), "checkov checked nothing in ci.yml (a construct it cannot parse?)"
    failed = results["ci.yml"].get("failed_checks", [])
    assert not failed, "\n".join(f"{c['check_id']} {c['check_name']} {c.get('file_line_range')}" for c in failed)


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint is not on PATH")
def test_actionlint_accepts_the_workflow():
    proc = subprocess.run(["actionlint", "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_make_installs_from_the_lock_and_a_weekly_job_tries_the_newest_releases():
    """`make test` on a fresh clone installs what CI tested (images/requirements.lock as pip
    constraints), so an upstream release cannot turn it red; the scheduled job resolves the newest."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^LOCK \?= images/requirements\.lock$", makefile, re.M)
    assert "$(if $(LOCK),-c $(LOCK))" in makefile
    lock = (REPO / "images" / "requirements.lock").read_text(encoding="utf-8")
    for dev in ("pytest", "moto", "kubernetes-validate", "checkov"):  # the dev extra is locked too
        assert re.search(rf"^{dev}==", lock, re.M), dev
    newest = yaml.safe_load((WORKFLOW.parent / "newest.yml").read_text(encoding="utf-8"))
    assert "schedule" in _triggers(newest)
    runs = [line for _, step in _steps(newest) for line in _run_lines(step)]
    assert "make install LOCK=" in runs and "make test LOCK=" in runs


def test_the_cluster_workflow_runs_only_by_hand_or_nightly_and_its_submit_parses():
    """The kind end-to-end job (never run on the development machine: no Docker, no network) stays
    out of pushes and pull requests, and the `selfguided submit` it runs is accepted by the real
    parser, with the pipeline parameters it names."""
    import shlex

    from selfguided.pipelines.cli.main import build_parser

    cluster = yaml.safe_load((WORKFLOW.parent / "cluster.yml").read_text(encoding="utf-8"))
    assert set(_triggers(cluster)) == {"workflow_dispatch", "schedule"}
    script = next(s["run"] for _, s in _steps(cluster) if "selfguided submit" in s.get("run", ""))
    command = script[script.index(".venv/bin/selfguided submit"):script.index("| tee")].replace("\\\n", " ")
    argv = shlex.split(command)[1:]
    args = build_parser("submit").parse_args([a.replace("$GITHUB_SHA", SHA) for a in argv])
    assert (args.base_models, args.num_gpus, args.serving_name) == (["tiny"], 0, "")
    assert args.mlflow_tracking_uri.startswith("sqlite:////mnt/selfguided/")
