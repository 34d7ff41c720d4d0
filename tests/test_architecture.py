"""The folder tree is the architecture (issues 17 and 27): the library order below is data, imports
point down it (lazy ones included), no modules import each other in a circle, steps stay apart,
modules stay the size of one concept, and commands import what they use."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"components": "selfguided.components", "pipelines": "selfguided.pipelines"}
MAX_LINES = 400

# The order, bottom first. A module may import its own unit and any unit of a lower layer; never a
# unit of its own layer (peers stay apart) nor one above. A unit is a package or module of the tree,
# named relative to `selfguided.`; every module belongs to exactly one.
#
# `data` (files and their formats), `images` (where steps run) and `cluster` (names the cluster and
# the code share) import nothing of ours. `llm` and `model` do not import each other, nor do `llm`
# and `training`: the order between them is a choice that keeps each layer one unit. `serving` (the
# KServe client) sits above `registry` because it serves what the registry names.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("components.data", "components.images", "components.cluster"),
    ("components.model",),
    ("components.llm",),
    ("components.training",),
    ("components.judging",),
    ("components.evaluation",),
    ("components.registry",),
    ("components.serving",),
    ("components.steps",),
    # pipelines/: settings and the KFP server first, then the pipeline, then what runs, compiles,
    # uploads or serves it, then the command line over all of them.
    ("pipelines.platform", "pipelines.workdir", "pipelines.kfp_backend"),
    ("pipelines.options",),  # the command-line vocabulary, shared by every command's parser
    ("pipelines.pipeline",),
    ("pipelines.compile", "pipelines.local", "pipelines.upload", "pipelines.serving", "pipelines.monitor_pipeline",
     "pipelines.flywheel_pipeline"),
    ("pipelines.cli",),
)

# A string that names one of our modules is a dependency too: `importlib.import_module`, a
# `module:function` entry in a command table, a `python -m module` command line.
_MODULE_STRING = re.compile(r"selfguided(?:\.\w+)+(?::\w+)?")


# --- the checker (it reads any tree laid out like this one, so a test can feed it a wrong one) ----


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the tree at `root` by its dotted name (a package by its __init__.py)."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            found[".".join([package, *[p for p in parts if p != "__init__"]])] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The most specific module of `known` that `name` (a module, or module.attribute) is in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name if name and name not in PACKAGES.values() else None


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that the file imports, at any depth: top-level, inside functions,
    under `if TYPE_CHECKING`, or named in a string."""
    return imports_in([ast.parse(path.read_text(encoding="utf-8"))], known)


def imports_in(trees: list[ast.AST], known: dict[str, Path]) -> set[str]:
    """The modules of `known` that these syntax trees (a file, or some of its functions) import."""
    found: set[str | None] = set()
    for node in (inner for tree in trees for inner in ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(_resolve(f"{node.module}.{alias.name}", known) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(_resolve(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.fullmatch(node.value):
            found.add(_resolve(node.value.partition(":")[0], known))
    return {name for name in found if name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports_of(path, known) - {name} for name, path in known.items() if name not in PACKAGES.values()}


def unit_of(module: str) -> str | None:
    relative = module.removeprefix("selfguided.")
    return next((unit for layer in LAYERS for unit in layer
                 if relative == unit or relative.startswith(unit + ".")), None)


def layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def order_violations(graph: dict[str, set[str]]) -> list[str]:
    """One line per import that does not point down the order: upward, or sideways to a peer."""
    problems = []
    for module, imported in sorted(graph.items()):
        unit = unit_of(module)
        for target in sorted(imported):
            other = unit_of(target)
            if unit is None or other is None or unit == other:
                continue
            if layer_of(other) >= layer_of(unit):
                where = "above it" if layer_of(other) > layer_of(unit) else "its peer in the same layer"
                problems.append(f"{module} imports {target}: {other} is {where} ({unit} is layer {layer_of(unit)}, "
                                f"{other} layer {layer_of(other)})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a circle (strongly connected components of
    more than one module), each sorted; Tarjan's algorithm without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return sorted(found)


# --- the tree ---------------------------------------------------------------------------------------


def test_every_module_has_a_place_in_the_order():
    assert not [m for m in import_graph() if unit_of(m) is None]
    units = [unit for layer in LAYERS for unit in layer]
    assert len(units) == len(set(units))


def test_the_package_roots_hold_no_code():
    """`selfguided.components` and `selfguided.pipelines` are namespaces (and the sample data's
    home): importing a subpackage runs them, so they must import nothing."""
    known = modules()
    assert not {name: sorted(imports_of(known[name], known)) for name in PACKAGES.values() if imports_of(known[name], known)}


def test_imports_point_down_the_order():
    assert order_violations(import_graph()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(import_graph()) == []


def test_a_step_imports_no_other_step():
    steps = {n: i for n, i in import_graph().items() if unit_of(n) == "components.steps"}
    assert not {name: sorted(i for i in imported if unit_of(i) == "components.steps") for name, imported in steps.items()
                if any(unit_of(i) == "components.steps" for i in imported)}


def test_no_module_above_the_size_of_one_concept():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert not {name: n for name, n in sizes.items() if n > MAX_LINES}


# --- the checker fails on a wrong tree ----------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for folder in ("components", "pipelines"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
    return tmp_path


def test_the_checker_reports_a_lazy_upward_import(tmp_path):
    root = _tree(tmp_path, {
        "components/model/__init__.py": "",
        "components/model/artifact.py": "def load():\n    from selfguided.components.registry.runs import read\n",
        "components/registry/__init__.py": "",
        "components/registry/runs.py": "from selfguided.components.model.artifact import load\n",
    })
    assert order_violations(import_graph(root)) == [
        "selfguided.components.model.artifact imports selfguided.components.registry.runs: components.registry is "
        "above it (components.model is layer 1, components.registry layer 6)"]
    assert cycles(import_graph(root)) == [["selfguided.components.model.artifact", "selfguided.components.registry.runs"]]


def test_the_checker_reports_a_cycle_inside_a_package_and_a_peer_import(tmp_path):
    root = _tree(tmp_path, {
        "components/llm/__init__.py": "",
        "components/llm/client.py": "from selfguided.components.llm import batch\n",
        "components/llm/batch.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from selfguided.components.llm.client import LLMClient\n"),
        "components/llm/cache.py": "import selfguided.components.llm.request\n",
        "components/llm/request.py": "TOOL = 'selfguided.components.llm.cache:open_cache'\n",
        "components/data/__init__.py": "",
        "components/data/jsonl.py": "from selfguided.components.images import CPU_IMAGE\n",
        "components/images.py": "",
    })
    graph = import_graph(root)
    assert cycles(graph) == [["selfguided.components.llm.batch", "selfguided.components.llm.client"],
                             ["selfguided.components.llm.cache", "selfguided.components.llm.request"]]
    assert order_violations(graph) == [
        "selfguided.components.data.jsonl imports selfguided.components.images: components.images is its peer in "
        "the same layer (components.data is layer 0, components.images layer 0)"]


def test_the_checker_finds_no_fault_in_imports_that_point_down(tmp_path):
    root = _tree(tmp_path, {
        "components/steps/__init__.py": "",
        "components/steps/judge.py": "def run():\n    from selfguided.components.judging import jury\n",
        "components/judging/__init__.py": "",
        "components/judging/jury.py": "from selfguided.components.llm.client import LLMClient\n",
        "components/llm/__init__.py": "",
        "components/llm/client.py": "import json\n",
    })
    graph = import_graph(root)
    assert graph["selfguided.components.steps.judge"] == {"selfguided.components.judging.jury"}
    assert order_violations(graph) == [] and cycles(graph) == []


# --- commands ---------------------------------------------------------------------------------------


def _light_commands() -> list:
    from selfguided.pipelines.cli.main import COMMANDS

    return [None] + [name for name in COMMANDS if name not in PIPELINE_COMMANDS]


# Their options are the pipeline's parameters: building them imports the pipeline, by design.
PIPELINE_COMMANDS = ("run", "submit")


@pytest.mark.parametrize("command", _light_commands())
def test_a_command_imports_no_heavy_library_to_parse_its_options(command):
    """`selfguided --help` and `selfguided COMMAND --help` build their parser without torch,
    transformers, mlflow, peft, openai or the KFP components (whose decorators cost seconds)."""
    code = ("import sys\nfrom selfguided.pipelines.cli.main import build_parser\n"
            f"build_parser({command!r})\n"
            "heavy = ('torch', 'transformers', 'mlflow', 'peft', 'openai', 'boto3', 'scipy', 'matplotlib',"
            " 'selfguided.components.steps')\n"
            "print(sorted({m.split('.')[0] if not m.startswith('selfguided') else m for m in sys.modules "
            "if m.startswith(heavy)}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
