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


def ui_base(tracking_uri: str) -> tuple[str, str]:
    """(the MLflow UI's address, how to start it when nothing serves it yet)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/"), ""
    return "http://127.0.0.1:5000", f"mlflow ui --backend-store-uri {tracking_uri} --port 5000"


def row_outputs(result: LocalRunResult, workdir: str | Path) -> list[dict[str, str]]:
    """Every evaluation row of the run, by name: its MLflow run, its judgments there, and its local
    answers and judgments folders under pipeline-root/ (whose loop folders are numbered, not named)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=result.tracking_uri)
    parent = client.get_run(result.register["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id], max_results=1000,
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    root = Path(workdir).resolve() / "pipeline-root" / result.run_name
    local: dict[str, dict[str, str]] = {}
    for summary in sorted(root.glob("*/judge*/summary")):  # a loop iteration's judge step
        try:
            row = json.loads(summary.read_text(encoding="utf-8"))["row"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        answers = next(iter(sorted(summary.parent.parent.glob("*/answers"))), None)
        local[row] = {"answers": str(answers or ""), "judgments_file": str(summary.parent / "judgments")}
    for entry in _evidence(root / "judge-rows" / "evidence"):  # the teachers, answered and judged together
        local.setdefault(entry[0], {"answers": str(root / "answer-teachers" / "answers"), "judgments_file": entry[1]})
    rows = []
    for child in sorted(children, key=lambda r: r.data.tags.get("row", "")):
        name = child.data.tags.get("row", child.info.run_name or child.info.run_id)
        judged = any(a.path == "judgments.jsonl" for a in client.list_artifacts(child.info.run_id))
        rows.append({"row": name, "row_kind": child.data.tags.get("row_kind", ""), "mlflow_run_id": child.info.run_id,
                     "judgments": f"runs:/{child.info.run_id}/judgments.jsonl" if judged else "",
                     **(local.get(name, {"answers": "", "judgments_file": ""}) if judged else
                        {"answers": "", "judgments_file": ""})})
    return rows


def _evidence(folder: Path) -> list[tuple[str, str]]:
    """(row, judgments file) of a folder of judged rows (evaluation/rows.write_evidence)."""
    try:
        index = json.loads((folder / "rows.json").read_text(encoding="utf-8"))
        return [(json.loads((folder / e["summary"]).read_text(encoding="utf-8"))["row"], str(folder / e["judgments"]))
                for e in index]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def next_steps(result: LocalRunResult, workdir: str | Path) -> str:
    """What to do after `selfguided run`, ready to paste: the MLflow parent run and its page, and
    the commands that read it; each row's answers and judgments, named, also written to
    pipeline-root/<run>/rows.json."""
    from mlflow import MlflowClient

    parent_id = result.register["parent_run_id"]
    experiment_id = MlflowClient(tracking_uri=result.tracking_uri).get_run(parent_id).info.experiment_id
    base, start = ui_base(result.tracking_uri)
    # the commands read the same store by default when run from here; else they are told it
    store = "" if result.tracking_uri == default_tracking_uri() else f" --tracking-uri {result.tracking_uri}"
    rows = row_outputs(result, workdir)
    map_file = Path(workdir).resolve() / "pipeline-root" / result.run_name / "rows.json"
    map_file.parent.mkdir(parents=True, exist_ok=True)
    map_file.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    lines = [
        "Next steps (paste any of these):",
        f"  MLflow parent run {parent_id} (pipeline run {result.run_name})",
        *([f"  {start}"] if start else []),
        f"  {base}/#/experiments/{experiment_id}/runs/{parent_id}",
        f"  selfguided plan-eval --from-run {parent_id}{store}   # questions a 0.5-point difference needs",
        f"  selfguided review --sample 10{store}   # a blind sample of judged answers for editors",
        f"  selfguided models{store}   # versions, aliases and the gate's reasons",
        f"  selfguided serve{store}   # the champion, OpenAI-compatible, on http://127.0.0.1:8000/v1",
        f"Each row's answers and judgments (also in {map_file}):",
    ]
    width = max((len(r["row"]) for r in rows), default=0)
    for r in rows:
        if not r["judgments"]:  # e.g. the champion row of a first run
            lines.append(f"  {r['row']:<{width}}  no answers (MLflow run {r['mlflow_run_id']})")
            continue
        lines.append(f"  {r['row']:<{width}}  judgments {r['judgments']}")
        if r["answers"]:
            lines.append(f"  {'':<{width}}  answers   {r['answers']}")
    return "\n".join(lines)
