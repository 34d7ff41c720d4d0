"""The folder tree is the architecture (issue 17): imports point down, steps stay apart, modules stay
small, and commands import what they use."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"components": "selfguided.components", "pipelines": "selfguided.pipelines"}
MAX_LINES = 700


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join([package, *[p for p in parts if p != "__init__"]])
            found[name] = path
    return found


def imported(path: Path) -> set[str]:
    """Every selfguided module `path` imports, at any depth of the file (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selfguided"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("selfguided"))
    return names


def test_a_step_imports_no_other_step():
    steps = {n: p for n, p in modules().items() if n.startswith("selfguided.components.steps.")}
    offenders = {name: sorted(i for i in imported(path) if i in steps and i != name)
                 for name, path in steps.items()}
    assert not {k: v for k, v in offenders.items() if v}


def test_libraries_import_neither_steps_nor_pipelines():
    libraries = {n: p for n, p in modules().items()
                 if n.startswith("selfguided.components.") and not n.startswith("selfguided.components.steps")}
    offenders = {name: sorted(i for i in imported(path)
                              if i.startswith(("selfguided.components.steps", "selfguided.pipelines")))
                 for name, path in libraries.items()}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_module_above_the_size_of_one_concept():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert not {name: n for name, n in sizes.items() if n > MAX_LINES}


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
