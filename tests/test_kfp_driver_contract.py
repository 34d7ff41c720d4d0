"""Contract with the KFP driver: every platform field of the compiled pipeline that is resolved at
run time is fed by a parameter of the type the driver reads.

What the driver does, read from kubeflow/pipelines at tag 2.15.0 (the oldest KFP this project
supports; unchanged at 2.16.1 and 2.17.0):

- backend/src/v2/driver/driver.go, initPodSpecPatch: the accelerator type and count, the CPU and
  memory requests and limits (getPodResource) and the container image go through
  resolvePodSpecInputRuntimeParameter (backend/src/v2/driver/resolve.go), which returns
  `val.GetStringValue()` of the executor input's parameter. A number or a bool has an empty string
  value; for the accelerator the driver then skips the limit (`if acceleratorType != "" &&
  acceleratorCount != ""`), so the pod runs with no GPU; for CPU/memory ParseQuantity("") fails.
  Only a STRING parameter works.
- backend/src/v2/driver/k8s.go, extendPodSpecPatch: a node selector's `nodeSelectorJson` goes
  through resolveK8sJsonParameter, which marshals `GetStructValue()`: only a STRUCT (a dict) works;
  a toleration's `tolerationJson` is read as `GetStructValue()` (one toleration) or
  `GetListValue()` (a list): STRUCT or LIST; secret, config map and PVC names
  (`secretNameParameter`, `configMapNameParameter`, `pvcNameParameter`) through
  resolveInputParameterStr and `GetStringValue()`: STRING.

kfp.local resolves parameters in Python, so no local run can see a wrong type here: this test reads
the compiled IR, which is what the driver receives.
"""

import re

import pytest
import yaml

PLACEHOLDER = re.compile(r"^\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}$")
# container fields the driver resolves with resolvePodSpecInputRuntimeParameter
STRING_RESOURCE_FIELDS = ("resourceCpuLimit", "resourceCpuRequest", "resourceMemoryLimit", "resourceMemoryRequest")
# kubernetes platform fields -> the IR parameter types the driver accepts for them
JSON_FIELDS = {"nodeSelectorJson": {"STRUCT"}, "tolerationJson": {"STRUCT", "LIST"}}
NAME_FIELDS = ("secretNameParameter", "configMapNameParameter", "pvcNameParameter")


def _walk(value):
    """Every (key, value) pair at any depth of a YAML document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _tasks_by_executor(spec: dict) -> dict[str, list[tuple[str, str, dict]]]:
    """executor label -> [(enclosing component, task name, task spec)] for every task that runs it."""
    executor_of = {name: c.get("executorLabel") for name, c in spec["components"].items()}
    dags = dict(spec["components"])
    dags["<root>"] = spec["root"]
    found: dict[str, list] = {}
    for parent, component in dags.items():
        for task_name, task in component.get("dag", {}).get("tasks", {}).items():
            executor = executor_of.get(task["componentRef"]["name"])
            if executor:
                found.setdefault(executor, []).append((parent, task_name, task))
    return found


def _source_type(spec: dict, parent: str, source: dict) -> str:
    """The IR type of what feeds a task input or a platform field: a producer task's output, the
    enclosing component's input (a pipeline parameter or a loop item), or a constant."""
    dags = dict(spec["components"])
    dags["<root>"] = spec["root"]
    if "taskOutputParameter" in source:
        producer = source["taskOutputParameter"]["producerTask"]
        key = source["taskOutputParameter"]["outputParameterKey"]
        component = dags[parent]["dag"]["tasks"][producer]["componentRef"]["name"]
        return spec["components"][component]["outputDefinitions"]["parameters"][key]["parameterType"]
    if "componentInputParameter" in source:
        if source.get("parameterExpressionSelector"):
            return "SELECTED"  # a field of a loop item: its type is not in the IR
        name = source["componentInputParameter"]
        return dags[parent]["inputDefinitions"]["parameters"][name]["parameterType"]
    if "runtimeValue" in source:
        constant = source["runtimeValue"]["constant"]
        return {str: "STRING", bool: "BOOLEAN", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", dict: "STRUCT",
                list: "LIST"}[type(constant)]
    raise AssertionError(f"unknown parameter source {source}")


def driver_violations(path) -> list[str]:
    """What the KFP 2.15+ driver would not resolve in the compiled pipeline at `path`."""
    documents = list(yaml.safe_load_all(open(path, encoding="utf-8")))
    spec = documents[0]
    kube = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(documents) > 1 else {}
    tasks = _tasks_by_executor(spec)
    problems = []
    for executor, body in spec["deploymentSpec"]["executors"].items():
        container = body.get("container", {})
        resources = container.get("resources", {})
        fields = {field: resources.get(field) for field in STRING_RESOURCE_FIELDS}
        fields["accelerator.resourceCount"] = resources.get("accelerator", {}).get("resourceCount")
        fields["accelerator.resourceType"] = resources.get("accelerator", {}).get("resourceType")
        fields["image"] = container.get("image")
        for field, value in fields.items():
            match = PLACEHOLDER.match(value) if isinstance(value, str) else None
            if not match:
                continue
            for parent, task_name, task in tasks.get(executor, []):
                source = task["inputs"]["parameters"][match.group(1)]
                kind = _source_type(spec, parent, source)
                if kind != "STRING":
                    problems.append(f"{task_name}: {field} is fed by a {kind} parameter; the driver reads only "
                                    f"a STRING's value here (resolvePodSpecInputRuntimeParameter)")
        for field, source in _walk(kube.get(executor, {})):
            if field in JSON_FIELDS or field in NAME_FIELDS:
                allowed = JSON_FIELDS.get(field, {"STRING"})
                for parent, task_name, _ in tasks.get(executor, []):
                    kind = _source_type(spec, parent, source)
                    if kind not in allowed:
                        problems.append(f"{task_name}: {field} is fed by a {kind} parameter; the driver reads "
                                        f"{' or '.join(sorted(allowed))}")
    return problems


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from kfp import compiler

    from selfguided.pipelines.pipeline import self_guided_pipeline

    out = tmp_path_factory.mktemp("ir")
    paths = {}
    for nodes in (1, 2):
        paths[nodes] = out / f"nodes{nodes}.yaml"
        compiler.Compiler().compile(self_guided_pipeline, str(paths[nodes]),
                                    pipeline_parameters={"num_nodes": nodes, "num_gpus": 8})
    return paths


def test_every_runtime_platform_field_is_fed_by_the_type_the_driver_reads(compiled):
    for path in compiled.values():
        assert driver_violations(path) == []


def test_the_finetune_gpu_limit_comes_from_a_string_output(compiled):
    spec = yaml.safe_load(open(compiled[1], encoding="utf-8").read().split("\n---\n")[0])
    count = spec["deploymentSpec"]["executors"]["exec-finetune"]["container"]["resources"]["accelerator"]["resourceCount"]
    assert PLACEHOLDER.match(count), "the finetune GPU count is decided at run time (finetune_placement)"
    outputs = spec["components"]["comp-finetune-placement"]["outputDefinitions"]["parameters"]
    assert outputs["gpu_limit"]["parameterType"] == "STRING"


def test_the_contract_catches_an_int_gpu_count_a_str_one_passes(tmp_path):
    """The defect this contract exists for: an int task output as the accelerator limit compiles, runs
    under kfp.local, and on a cluster gives a pod without a GPU."""
    from typing import NamedTuple

    from kfp import compiler, dsl, kubernetes

    @dsl.component
    def place() -> NamedTuple("Outputs", [("n", int), ("s", str), ("sel", dict), ("tol", list), ("bad_sel", str)]):
        from collections import namedtuple

        return namedtuple("Outputs", ["n", "s", "sel", "tol", "bad_sel"])(1, "1", {}, [], "{}")

    @dsl.component
    def train():
        pass

    def pipeline_with(count_key: str, selector_key: str):
        @dsl.pipeline(name="contract")
        def pipe():
            p = place()
            t = train().set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(p.outputs[count_key])
            kubernetes.add_node_selector_json(t, p.outputs[selector_key])
            kubernetes.add_toleration_json(t, p.outputs["tol"])
        return pipe

    for name, count, selector, expected in (("good", "s", "sel", []),
                                            ("int-count", "n", "sel", ["accelerator.resourceCount", "NUMBER_INTEGER"]),
                                            ("str-selector", "s", "bad_sel", ["nodeSelectorJson", "STRING"])):
        path = tmp_path / f"{name}.yaml"
        compiler.Compiler().compile(pipeline_with(count, selector), str(path))
        found = driver_violations(path)
        if not expected:
            assert found == [], name
        else:
            assert len(found) == 1 and all(word in found[0] for word in expected), (name, found)
