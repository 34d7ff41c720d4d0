"""Contract between the code that runs in a pod and what the pod is given: every environment
variable the code of a step reads is set on that step's task by the compiled pipeline (as a value,
from a Secret or from a ConfigMap) or by the platform itself; every Secret, ConfigMap and volume
the compiled pipeline names is created by the manifests, with the keys it maps.

The variables are found in the code, not listed here: every `os.environ[...]`, `os.environ.get(...)`
and `os.getenv(...)` with a constant name, and every value of a `*ENV` mapping (the settings a
library reads by name), in the modules a step's component imports, lazily or not. The platform's
own variables are the only list: what torchrun (torch/distributed/run.py sets RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE on every worker), the kubelet (HOSTNAME, KUBERNETES_SERVICE_HOST/PORT)
and the NVIDIA runtime (CUDA_VISIBLE_DEVICES) set, and what only matters off a cluster.
"""

import ast
import functools
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from manifest_tools import kubectl
from test_architecture import import_graph, imports_in, modules

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = REPO / "components"

SET_BY_THE_PLATFORM = {
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",  # torchrun, on every worker
    "HOSTNAME", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",  # the kubelet, in every pod
    "CUDA_VISIBLE_DEVICES",  # the NVIDIA container runtime
}
# Variables the code reads with a fallback, and why a pod may go without them. A name read in the
# code that is neither set on some task nor here fails the test: a typo, or a setting nobody sets.
ABSENT_IS_FINE = {
    "KUBECONFIG": "a laptop's cluster credentials; a pod uses its mounted token",
    "SELFGUIDED_JUDGE_KEYS_DIR": "moves the judge-keys mount for a local run",
    "SELFGUIDED_ENDPOINT_API_KEY": "a local run's key for a model on an endpoint of its own",
    "SELFGUIDED_JUDGE_KEY_": "a local run's per-model key; pods read the mounted selfguided-judge-keys",
    "MLFLOW_S3_ENDPOINT_URL": "the endpoint's older name; pods get AWS_ENDPOINT_URL_S3",
    "OPENAI_BASE_URL": "the pipeline passes llm_base_url as a parameter; the variable is a local fallback",
    "HF_ENDPOINT": "a hub mirror, passed on to TrainJob pods when set",
    "SELFGUIDED_NAMESPACE": "a TrainJob's namespace off a cluster; a pod reads its ServiceAccount's namespace file",
    "SELFGUIDED_GPU_MEMORY_GB": "the memory plan's GPU size; without it the plan reads the device",
    "SELFGUIDED_IMAGE_PULL_SECRETS": "set on the task only when pull secrets are configured",
    "SELFGUIDED_KUEUE_QUEUE": "set on the task only when a Kueue queue is configured",
    "OPENAI_API_KEY": "an optional key of an optional Secret: a run with the offline judge has none",
}
# Read at import by every module, but compile-time settings: baked into the compiled YAML (images,
# pull policy, node profile); a pod's own values do not matter.
COMPILE_TIME = COMPONENTS / "images.py"


def _calls_from(tree: ast.Module, function: str) -> set[str]:
    """The module-level functions `function` reaches through calls within its own module."""
    defined = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    reached, todo = set(), [function]
    while todo:
        name = todo.pop()
        if name in reached or name not in defined:
            continue
        reached.add(name)
        todo += [n.id for n in ast.walk(defined[name]) if isinstance(n, ast.Name) and n.id in defined]
    return reached


@functools.cache
def _graph() -> dict[str, set[str]]:
    return import_graph()


def closure(module: str, function: str | None = None) -> set[Path]:
    """The files a step's code can run: `module` (from `function`, the component's body, following
    the calls it makes within the module and the imports made on the way), then every
    selfguided.components module those import, at any depth, lazily or not (the architecture
    test's import graph)."""
    known = modules()
    if function is None:
        roots = _graph()[module]
    else:
        tree = ast.parse(known[module].read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        reached = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                   and n.name in _calls_from(tree, function)]
        roots = imports_in(top + reached, known) - {module}
    seen, todo = {module}, list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_graph().get(name, ()))
    return {known[n] for n in seen if n.startswith("selfguided.components")} - {COMPILE_TIME}


def variables_read(path: Path) -> tuple[set[str], set[str]]:
    """(required, optional) environment variable names `path` reads, resolved through its
    module-level string constants. Required: `os.environ[NAME]` and a class's `ENV` mapping (the
    settings a library cannot run without); optional: `.get`/`getenv` and other `*_ENV` mappings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                 for t in node.targets if isinstance(t, ast.Name)}

    def name_of(expr):
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.Name):
            return constants.get(expr.id)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):  # PREFIX + name
            return name_of(expr.left)
        return None

    def is_environ(expr):
        return isinstance(expr, ast.Attribute) and expr.attr == "environ"

    required, optional = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if (node.func.attr == "get" and is_environ(node.func.value)) or node.func.attr == "getenv":
                optional.add(name_of(node.args[0]))
        elif isinstance(node, ast.Subscript) and is_environ(node.value) and not isinstance(node.ctx, ast.Store):
            required.add(name_of(node.slice))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if targets == ["ENV"]:
                required.update(name_of(v) for v in node.value.values)
            elif any(t.endswith("_ENV") for t in targets):
                optional.update(name_of(v) for v in node.value.values)
    return {n for n in required if n}, {n for n in optional if n} - required


def step_components() -> dict[str, tuple[str, str]]:
    """component name -> (the module that defines it, its function), for every step."""
    import importlib

    from kfp.dsl.python_component import PythonComponent

    found = {}
    for path in sorted((COMPONENTS / "steps").glob("*.py")):
        module = importlib.import_module(f"selfguided.components.steps.{path.stem}")
        for value in vars(module).values():
            if isinstance(value, PythonComponent) and value.python_func.__module__ == module.__name__:
                found[value.component_spec.name] = (module.__name__, value.python_func.__name__)
    return found


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from kfp import compiler

    from selfguided.pipelines.pipeline import self_guided_pipeline

    path = tmp_path_factory.mktemp("ir") / "p.yaml"
    compiler.Compiler().compile(self_guided_pipeline, str(path), pipeline_parameters={"num_nodes": 2})
    spec, platform_spec = list(yaml.safe_load_all(path.read_text()))[:2]
    return spec, platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def provided(spec: dict, kube: dict, executor: str) -> set[str]:
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    names = {e["name"] for e in container.get("env", [])}
    config = kube.get(executor, {})
    for entry in config.get("secretAsEnv", []) + config.get("configMapAsEnv", []):
        names.update(k["envVar"] for k in entry["keyToEnv"])
    return names


def test_the_scanner_finds_what_the_code_reads(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text('import os\nNAME = "B"\nos.environ.get("A")\nos.environ[NAME]\nos.getenv("C", "x")\n'
                      'class S:\n    ENV = {"k": "D"}\n    OPTIONAL_ENV = {"k": "E"}\n')
    assert variables_read(sample) == ({"B", "D"}, {"A", "C", "E"})
    finetune = closure("selfguided.components.steps.finetune", "finetune")
    assert COMPONENTS / "training" / "multinode.py" in finetune
    assert COMPONENTS / "training" / "multinode.py" not in closure("selfguided.components.steps.finetune",
                                                                  "finetune_placement")


def test_every_variable_a_step_needs_is_set_on_its_task(compiled):
    spec, kube = compiled
    steps = step_components()
    assert {"finetune", "finetune-placement", "preflight", "register", "deploy", "judge"} <= set(steps)
    missing, unset = {}, {}
    everywhere = set().union(*(provided(spec, kube, e) for e in spec["deploymentSpec"]["executors"]))
    for component, (module, function) in steps.items():
        executor = f"exec-{component}"
        if executor not in spec["deploymentSpec"]["executors"]:
            continue  # a component the pipeline does not use
        reads = [variables_read(path) for path in closure(module, function)]
        required, optional = set().union(*(r for r, _ in reads)), set().union(*(o for _, o in reads))
        gap = required - provided(spec, kube, executor) - SET_BY_THE_PLATFORM
        if gap:
            missing[component] = sorted(gap)
        nobody = optional - everywhere - SET_BY_THE_PLATFORM - set(ABSENT_IS_FINE)
        if nobody:
            unset[component] = sorted(nobody)
    assert missing == {}, "read without a fallback but not set on the task"
    assert unset == {}, "read by the code, set on no task, and not known to be optional"


@pytest.fixture(scope="module")
def rendered_objects(tmp_path_factory) -> list[dict]:
    """Everything a user applies in the profile namespace: an overlay's profile, training, serving."""
    tree = tmp_path_factory.mktemp("render") / "manifests"
    shutil.copytree(REPO / "manifests", tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    objects = []
    for name in ("overlays/production/profile", "training", "serving"):
        out = subprocess.run([kubectl(), "kustomize", str(tree / name)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        objects += [d for d in yaml.safe_load_all(out.stdout) if d]
    return objects


def _keys(obj: dict) -> set[str]:
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {})


def test_every_secret_config_map_and_volume_the_pipeline_names_is_created_by_the_manifests(compiled, rendered_objects):
    _, kube = compiled
    have = {(o["kind"], o["metadata"]["name"]): o for o in rendered_objects}
    problems = []
    for executor, config in kube.items():
        for entry in config.get("secretAsEnv", []):
            secret = have.get(("Secret", entry["secretName"]))
            if secret is None:
                problems.append(f"{executor}: Secret {entry['secretName']} is not in the manifests")
                continue
            wanted = {k["secretKey"] for k in entry["keyToEnv"]}
            absent = wanted - _keys(secret) - {"AWS_ENDPOINT_URL_S3"}  # the S3 endpoint: absent means AWS
            if absent and not entry.get("optional"):
                problems.append(f"{executor}: Secret {entry['secretName']} lacks {sorted(absent)}")
        for entry in config.get("secretAsVolume", []):
            if ("Secret", entry["secretName"]) not in have:
                problems.append(f"{executor}: Secret {entry['secretName']} (volume) is not in the manifests")
        for entry in config.get("configMapAsEnv", []):
            config_map = have.get(("ConfigMap", entry["configMapName"]))
            if config_map is None or {k["configMapKey"] for k in entry["keyToEnv"]} - _keys(config_map):
                problems.append(f"{executor}: ConfigMap {entry['configMapName']} or its keys are not in the manifests")
        for entry in config.get("pvcMount", []):
            if ("PersistentVolumeClaim", entry["constant"]) not in have:
                problems.append(f"{executor}: PVC {entry['constant']} is not in the manifests")
    assert problems == []
