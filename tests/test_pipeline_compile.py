"""The compiled pipeline: the steps, GPU node-pool settings, resources, secret wiring, no drift from the code."""

import os
import subprocess
import sys

import pytest
import yaml

from selfguided.pipelines import platform
from selfguided.pipelines.compile import COMMITTED_PIPELINE, compile_pipeline

STEPS = ("preflight", "score", "split", "finetune", "generate", "judge", "answer-reference", "answer-teachers",
         "judge-rows", "compare", "register", "deploy")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")
    docs = list(yaml.safe_load_all(path.read_text()))
    pipeline_spec = docs[0]
    platform_spec = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return path, pipeline_spec, platform_spec


def _executor(spec, step):
    return spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]


def test_every_step_is_in_the_pipeline(compiled):
    _, spec, _ = compiled
    for step in STEPS:
        assert f"comp-{step}" in spec["components"], step
        assert f"exec-{step}" in spec["deploymentSpec"]["executors"], step


def test_gpu_steps_ask_for_gpus_on_the_gpu_node_pool_with_shared_memory(compiled):
    _, spec, kube = compiled
    for step in ("finetune", "generate"):
        container = _executor(spec, step)
        assert container["image"] == platform.GPU_IMAGE
        assert container["resources"]["accelerator"]["resourceType"] == platform.GPU_RESOURCE
        config = kube[f"exec-{step}"]
        if step == "finetune":  # the pool is finetune_placement's output (tests/test_trainjob.py)
            assert config["nodeSelector"]["nodeSelectorJson"]["taskOutputParameter"] == {
                "outputParameterKey": "node_selector", "producerTask": "finetune-placement"}
            continue
        assert config["nodeSelector"]["labels"] == {platform.GPU_NODE_SELECTOR_KEY: platform.GPU_NODE_SELECTOR_VALUE}
        assert {"key": platform.GPU_TOLERATION_KEY, "operator": "Exists",
                "effect": platform.GPU_TOLERATION_EFFECT} in config["tolerations"]
        (shm,) = [m for m in config["emptyDirMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"] == platform.SHM_SIZE
    for step in ("score", "split", "judge", "register", "answer-teachers", "judge-rows"):
        assert _executor(spec, step)["image"] == platform.CPU_IMAGE
        assert "accelerator" not in _executor(spec, step).get("resources", {})
        assert "nodeSelector" not in kube.get(f"exec-{step}", {})


def test_teacher_rows_hold_no_gpu_and_get_the_keys_of_their_endpoints(compiled):
    """A teacher only calls an API: answered and judged on the CPU pool, outside the GPU loop, with
    the run's key and the keys of models on endpoints of their own (a juror, a teacher `name@url`)."""
    _, spec, kube = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["answer-teachers"]["componentRef"]["name"] == "comp-answer-teachers"  # at the top, in no loop
    assert "answer-teachers" in tasks["judge-rows"]["dependentTasks"]
    assert "judge-rows" in tasks["compare"]["dependentTasks"]
    for step in ("answer-teachers", "judge-rows", "preflight"):
        config = kube[f"exec-{step}"]
        assert "nodeSelector" not in config and "tolerations" not in config, step
        assert {s["secretName"] for s in config["secretAsVolume"]} == {platform.JUDGE_KEYS_SECRET_NAME}, step
        assert platform.OPENAI_SECRET_NAME in {s["secretName"] for s in config["secretAsEnv"]}, step
    resources = _executor(spec, "answer-teachers")["resources"]
    assert "accelerator" not in resources and resources["resourceMemoryRequest"] != platform.GPU_STEP_MEMORY


def test_every_task_requests_cpu_and_memory(compiled):
    _, spec, _ = compiled
    for name, executor in spec["deploymentSpec"]["executors"].items():
        resources = executor["container"].get("resources", {})
        assert resources.get("resourceCpuRequest") and resources.get("resourceMemoryRequest"), name
        assert resources["resourceMemoryLimit"] == resources["resourceMemoryRequest"], name
    assert _executor(spec, "finetune")["resources"]["resourceMemoryRequest"] == platform.GPU_STEP_MEMORY


def test_preflight_runs_before_any_paid_or_gpu_work(compiled):
    from selfguided.components.cluster import PREDICTOR_S3_ENV, PREDICTOR_S3_SECRET

    _, spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert "preflight" in tasks["score"]["dependentTasks"]
    assert {s["secretName"] for s in compiled[2]["exec-preflight"]["secretAsEnv"]} == {
        platform.OPENAI_SECRET_NAME, platform.MLFLOW_AUTH_SECRET_NAME, platform.S3_SECRET_NAME, PREDICTOR_S3_SECRET}
    # the serving predictor's own (read-only) S3 keys are checked against where the server keeps artifacts,
    # under names of their own beside the step's keys
    (predictor,) = [s for s in compiled[2]["exec-preflight"]["secretAsEnv"] if s["secretName"] == PREDICTOR_S3_SECRET]
    assert {k["envVar"] for k in predictor["keyToEnv"]} == set(PREDICTOR_S3_ENV.values()) and predictor["optional"]
    (config_map,) = compiled[2]["exec-preflight"]["configMapAsEnv"]
    assert config_map["configMapName"] == platform.MLFLOW_CONFIG_MAP_NAME


def test_mlflow_credentials_reach_every_mlflow_writing_step_from_a_secret(compiled):
    _, _, kube = compiled
    for step in ("preflight", "answer-reference", "register"):
        names = {s["secretName"] for s in kube[f"exec-{step}"]["secretAsEnv"]}
        assert platform.MLFLOW_AUTH_SECRET_NAME in names, step


def test_the_openai_key_comes_from_a_secret_never_from_a_parameter(compiled):
    path, spec, kube = compiled
    for step in ("score", "judge"):
        (secret,) = [s for s in kube[f"exec-{step}"]["secretAsEnv"] if s["secretName"] == platform.OPENAI_SECRET_NAME]
        assert {"secretKey": "OPENAI_API_KEY", "envVar": "OPENAI_API_KEY"} in secret["keyToEnv"]
    for step in ("split", "finetune", "generate", "register"):
        names = [s["secretName"] for s in kube.get(f"exec-{step}", {}).get("secretAsEnv", [])]
        assert platform.OPENAI_SECRET_NAME not in names, step
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in parameters if any(word in p.lower() for word in ("key", "secret", "password", "credential"))]
    assert "MLFLOW_TRACKING_PASSWORD" not in path.read_text().replace(f"secretKey: MLFLOW_TRACKING_PASSWORD", "") \
        .replace("envVar: MLFLOW_TRACKING_PASSWORD", "")


def test_retries_and_no_cache_on_register(compiled):
    _, spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["register"]["cachingOptions"] == {} or not tasks["register"]["cachingOptions"].get("enableCache")
    loops = [spec["components"][t["componentRef"]["name"]]["dag"]["tasks"] for t in tasks.values()
             if "componentRef" in t and t["componentRef"]["name"].startswith("comp-for-loop")]
    inner = next(loop for loop in loops if "finetune" in loop)
    assert inner["finetune"]["retryPolicy"]["maxRetryCount"] == 3


def test_committed_pipeline_matches_the_code(tmp_path):
    """CI fails when the pipeline changed without `make compile`; recompiling fixes it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFGUIDED_")}
    fresh = tmp_path / "fresh.yaml"
    subprocess.run([sys.executable, "-m", "selfguided.pipelines.cli.main", "compile", "-o", str(fresh)], check=True,
                   env=env, capture_output=True)
    assert COMMITTED_PIPELINE.exists(), "run `make compile` and commit pipelines/selfguided_pipeline.yaml"
    assert fresh.read_text() == COMMITTED_PIPELINE.read_text(), (
        "pipelines/selfguided_pipeline.yaml is out of date: run `make compile` and commit the result"
    )



def test_committed_flywheel_pipeline_matches_the_code(tmp_path):
    """The same for pipelines/selfguided_flywheel.yaml (its structure: tests/test_flywheel_pipeline.py)."""
    from selfguided.pipelines.flywheel_pipeline import COMMITTED_FLYWHEEL_PIPELINE

    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFGUIDED_")}
    fresh = tmp_path / "flywheel.yaml"
    subprocess.run([sys.executable, "-m", "selfguided.pipelines.flywheel_pipeline", str(fresh)], check=True, env=env,
                   capture_output=True)
    assert fresh.read_text() == COMMITTED_FLYWHEEL_PIPELINE.read_text(), (
        "pipelines/selfguided_flywheel.yaml is out of date: run `make compile` and commit the result")

def test_compile_without_options_writes_the_pipeline_in_the_current_folder(tmp_path):
    result = subprocess.run([sys.executable, "-m", "selfguided.pipelines.cli.main", "compile"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    spec = yaml.safe_load_all((tmp_path / "selfguided_pipeline.yaml").read_text())
    assert "comp-register" in next(spec)["components"]
