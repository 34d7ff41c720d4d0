"""Run the very same pipeline on this machine with `kfp.local` (SubprocessRunner, no venv).

Embedded defaults: MLflow on a SQLite file under the work folder (a set MLFLOW_TRACKING_URI
wins), the bundled sample data, base model `tiny`, the three arms, and the offline judge unless an
OpenAI-compatible endpoint is configured. kfp.local's verbose task logs go to a log file; the
terminal gets one line per step and the steps' own progress lines.
"""

import builtins
import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfguided.components.model.prompting import ARMS
from selfguided.pipelines.workdir import DEFAULT_WORKDIR, default_tracking_uri

# Small enough that the whole local pipeline finishes in minutes on a 2-core laptop. `tiny` is
# randomly initialised: LoRA on frozen random weights learns next to nothing (its answers stay
# empty), so the local demo fine-tunes it fully, long enough to write Korean the judge can grade.
LOCAL_FINETUNE_CONFIG = '{"method": "full", "learning_rate": 0.003, "num_epochs": 30, "micro_batch_tokens": 2048}'
LOCAL_DEFAULTS: dict[str, Any] = {
    "base_models": ["tiny"],
    "finetune_config": LOCAL_FINETUNE_CONFIG,
    "max_new_tokens": 128,
    # Nothing to deploy to on a laptop: `selfguided serve` serves the champion instead.
    "serving_name": "",
    # The bundled seed has 14 records per category: a quarter of the trained-on ones makes 3-4 test
    # questions per seen category, beside the 14 of each held-out one.
    "eval_fraction": 0.25,
    "llm_concurrency": 8,
}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_EXCEPTION = re.compile(r"^\s*((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)): (.+)$")


class LocalRunFailed(RuntimeError):
    """A step of the local run failed: which one, the cause from its log, and the log's path."""

    def __init__(self, step: str, cause: str, log_path: Path):
        self.step, self.cause, self.log_path = step, cause, log_path
        super().__init__(f"step {step!r} failed: {cause}\nfull log: {log_path}")


@dataclass
class LocalRunResult:
    """What `run_local` hands back: the register step's output, as the pipeline returned it."""

    register: dict[str, Any]
    tracking_uri: str
    log_path: Path
    seconds: float
    teachers: list[str] = field(default_factory=list)

    @property
    def decision(self) -> str:
        return self.register["decision"]

    @property
    def run_name(self) -> str:
        return self.register["pipeline_run"]

    @property
    def registered_model_name(self) -> str:
        return self.register["registered_model_name"]

    @property
    def aliases(self) -> dict[str, str]:
        found = {"challenger": self.register["challenger"], "champion": self.register["champion_after"]}
        return {alias: version for alias, version in found.items() if version}


class _ProgressFilter(io.TextIOBase):
    """Everything to the log file; task start/finish and `[selfguided]` lines to the terminal."""

    def __init__(self, log, terminal, verbose: bool):
        self.log, self.terminal, self.verbose = log, terminal, verbose
        self.started: dict[str, float] = {}
        self.failed: list[str] = []
        self.last_exception = ""  # "DataError: ...", the cause of a failure, not its traceback
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        plain = _ANSI.sub("", line)
        if self.verbose:
            self.terminal.write(line + "\n")
        elif m := _STARTED.search(plain):
            self.started[m.group(1)] = time.monotonic()
            self.terminal.write(f"  > {m.group(1)}\n")
        elif m := _FINISHED.search(plain):
            took = time.monotonic() - self.started.get(m.group(1), time.monotonic())
            mark = "ok" if m.group(2) == "SUCCESS" else m.group(2)
            if m.group(2) != "SUCCESS":
                self.failed.append(m.group(1))
            self.terminal.write(f"  < {m.group(1)}: {mark} ({took:.0f} s)\n")
            if m.group(2) != "SUCCESS" and self.last_exception:
                self.terminal.write(f"    {self.last_exception}\n")
        elif "[selfguided]" in plain:
            self.terminal.write("    " + plain.split("[selfguided]", 1)[1].strip() + "\n")
        elif m := _EXCEPTION.match(plain):
            self.last_exception = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
        self.terminal.flush()


def default_teachers() -> list[str]:
    """The teacher row's API model when an endpoint is configured (SELFGUIDED_TEACHER_MODEL, else
    gpt-4o-mini, the paper's ChatGPT row), else none: without an endpoint there is no teacher."""
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        return [os.environ.get("SELFGUIDED_TEACHER_MODEL", "gpt-4o-mini")]
    return []


def default_llm_model() -> str:
    """An LLM judge when an endpoint is configured, else the offline stand-in."""
    from selfguided.components.judging.offline import OFFLINE_JUDGE_NAME

    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        return os.environ.get("SELFGUIDED_JUDGE_MODEL", "gpt-4o")
    return OFFLINE_JUDGE_NAME


@contextlib.contextmanager
def _share_cpu_cores(parallel_tasks: int):
    """Give each of the loop's concurrent steps its share of the cores (inherited by the step's
    subprocess). Two PyTorch processes each using every core spin against each other and train
    several times slower than one core each would. A set OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, parallel_tasks)))
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


def visible_gpus() -> int:
    """CUDA devices this process can use (0 on a laptop or CI)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_local(
    workdir: str | Path = DEFAULT_WORKDIR, *, verbose: bool = False, tracking_uri: str | None = None,
    **parameters: Any,
) -> LocalRunResult:
    """Run the pipeline locally; `parameters` override the pipeline's arguments."""
    from kfp import local

    from selfguided.pipelines.pipeline import self_guided_pipeline

    workdir = Path(workdir).resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or default_tracking_uri(workdir)
    llm_model = default_llm_model()
    arguments: dict[str, Any] = {
        **LOCAL_DEFAULTS,
        "score_model": llm_model,
        "judge_model": llm_model,
        "reference_models": default_teachers(),
        "llm_cache": str(workdir / "llm-cache"),
        "checkpoint_dir": str(workdir / "checkpoints"),
        "mlflow_tracking_uri": tracking_uri,
        # one GPU per task where this machine has one, else the CPU: finetune refuses a GPU count it
        # cannot see (training/parallel.require_gpus) rather than train on the CPU by accident
        "num_gpus": min(1, visible_gpus()),
        **parameters,
    }
    parallel_tasks = len(arguments["base_models"]) * (len(arguments.get("arms", ARMS)) + 1)  # + the untuned base
    log_path = workdir / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "pipeline-root"),
               raise_on_error=True)
    started = time.monotonic()
    terminal, original_print = sys.stdout, builtins.print
    with log_path.open("w", encoding="utf-8") as log, warnings.catch_warnings():
        # kfp.local warns, per task, that cluster-only settings (images, GPUs, display names)
        # have no effect here: true and expected, since the same pipeline serves both worlds.
        warnings.filterwarnings("ignore", module=r"kfp\.local\..*")
        progress = _ProgressFilter(log, terminal, verbose)
        try:
            with contextlib.redirect_stdout(progress), _share_cpu_cores(parallel_tasks):
                task = self_guided_pipeline(**arguments)
        except Exception as exc:
            step = progress.failed[-1] if progress.failed else "pipeline"
            raise LocalRunFailed(step, progress.last_exception or f"{type(exc).__name__}: {exc}", log_path) from exc
        finally:
            progress.write("\n")
            builtins.print = original_print  # kfp.local indents prints while a task runs; a failure can leave it so
    return LocalRunResult(register=json.loads(task.output), tracking_uri=tracking_uri, log_path=log_path,
                          seconds=time.monotonic() - started, teachers=list(arguments["reference_models"]))
