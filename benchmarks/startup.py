"""Start-up cost: the CLI's help and a pipeline step's process start, this tree vs an earlier revision.

Every command and every step of a pipeline run starts a Python process; before the restructure
(issue 17) each one imported the whole package: torch, transformers, mlflow, and every
`@dsl.component` module, whose decorator walks `sys.modules` (thousands of entries by then) for
each component's source. Measured side by side in one run, on the same machine:

- `selfguided --help` and `selfguided score --help`;
- a step's process start: what a KFP step does before its own work: `_KFP_RUNTIME=true`, import
  kfp's executor and the step's module (the component body imports it first thing). Reported
  per step and the maximum.

The earlier revision (`--before`, default: the commit before the restructure) is read with
`git archive` into a temporary folder laid out as the installed package (`selfguided/components`,
`selfguided/pipelines`) and put first on PYTHONPATH, so both run with this venv's libraries.

    python benchmarks/startup.py                 # 3 repeats, median
    python benchmarks/startup.py --repeats 1 --steps register --cli help   # the smoke setting of make test

The last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "fbbcd11"  # main before issue 17's restructure
# step -> (its module now, its module at BEFORE)
STEPS = {
    "score": ("selfguided.components.steps.score", "selfguided.components.score"),
    "split": ("selfguided.components.steps.split", "selfguided.components.split"),
    "finetune": ("selfguided.components.steps.finetune", "selfguided.components.finetune"),
    "generate": ("selfguided.components.steps.generate", "selfguided.components.generate"),
    "judge": ("selfguided.components.steps.judge", "selfguided.components.judge"),
    "compare": ("selfguided.components.steps.compare", "selfguided.components.compare_step"),
    "register": ("selfguided.components.steps.register", "selfguided.components.register"),
}
CLI_NOW = "from selfguided.pipelines.cli.main import main; main()"
CLI_BEFORE = "from selfguided.pipelines.cli import main; main()"


def checkout(revision: str, into: Path) -> Path:
    """`revision`'s components/ and pipelines/ as an importable `selfguided` package under `into`."""
    archive = into / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", revision, "components", "pipelines"], stdout=out,
                       check=True)
    src = into / "src"
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    package = into / "path" / "selfguided"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    shutil.move(str(src / "components"), package / "components")
    shutil.move(str(src / "pipelines"), package / "pipelines")
    return into / "path"


def timed(argv: list[str], env: dict[str, str], repeats: int) -> float:
    """Median wall seconds of `argv` (it must succeed)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                timeout=600)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    return statistics.median(times)


CLI_COMMANDS = {"help": ["--help"], "score_help": ["score", "--help"]}


def measure(env: dict[str, str], cli: str, modules: dict[str, str], repeats: int,
            commands: tuple[str, ...] | list[str] = tuple(CLI_COMMANDS)) -> dict[str, float]:
    python = sys.executable
    figures = {name: timed([python, "-c", cli, *CLI_COMMANDS[name]], env, repeats) for name in commands}
    step_env = {**env, "_KFP_RUNTIME": "true"}
    for step, module in modules.items():
        figures[f"step_{step}"] = timed([python, "-c", f"import kfp.dsl.executor_main, {module}"], step_env, repeats)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=BEFORE, help="earlier revision to compare with (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command; the median is reported")
    parser.add_argument("--steps", default=",".join(STEPS), help="steps to time (default: all)")
    parser.add_argument("--cli", default=",".join(CLI_COMMANDS),
                        help="CLI commands to time (default: all; each costs the earlier revision's full import)")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {', '.join(unknown)} (known: {', '.join(STEPS)})")
    commands = [c for c in args.cli.split(",") if c]
    unknown = sorted(set(commands) - set(CLI_COMMANDS))
    if unknown:
        parser.error(f"unknown CLI commands {', '.join(unknown)} (known: {', '.join(CLI_COMMANDS)})")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    now = measure(env, CLI_NOW, {s: STEPS[s][0] for s in steps}, args.repeats, commands)
    with tempfile.TemporaryDirectory(prefix="selfguided-startup-") as scratch:
        path = checkout(args.before, Path(scratch))
        before = measure({**env, "PYTHONPATH": str(path)}, CLI_BEFORE, {s: STEPS[s][1] for s in steps},
                         args.repeats, commands)

    print(f"{'':24} {'before (' + args.before + ')':>18} {'now':>8} {'ratio':>7}")
    for key in now:
        print(f"{key:24} {before[key]:>16.2f} s {now[key]:>6.2f} s {before[key] / now[key]:>6.1f}x")
    step_keys = [k for k in now if k.startswith("step_")]
    worst_now = max(now[k] for k in step_keys)
    worst_before = max(before[k] for k in step_keys)
    print("RESULT " + " ".join(
        [f"before={args.before}", f"repeats={args.repeats}"]
        + [f"{k}_s={now[k]:.2f} {k}_before_s={before[k]:.2f}" for k in now]
        + [f"step_max_s={worst_now:.2f} step_max_before_s={worst_before:.2f}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
