"""The training worker's command line (components/training/worker.py): what the launchers write is
what the worker reads, whichever launcher wrote it."""

import subprocess
import sys

import pytest

from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.worker import WORKER_MODULE, WorkerRun


@pytest.mark.parametrize("arm, checkpoint_dir", [("self_guided", "/mnt/ckpt"), (None, None)])
def test_the_command_line_reads_back_as_the_run_it_was_written_from(arm, checkpoint_dir):
    config = FinetuneConfig.for_model("tiny", max_steps=3, method="full", lora_target_modules=["query_key_value"])
    run = WorkerRun("/data/self_guided.jsonl", "tiny", "/out/model", config, arm=arm, strategy="filter",
                    checkpoint_dir=checkpoint_dir)
    args = run.args()
    assert args[:2] == ["-m", WORKER_MODULE]
    assert WorkerRun.from_args(args[2:]) == run


def test_defaults_the_launchers_leave_out():
    run = WorkerRun.from_args(["--train-file", "t.jsonl", "--base-model", "tiny", "--output-dir", "o"])
    assert run.config == FinetuneConfig.for_model("tiny")
    assert (run.arm, run.strategy, run.checkpoint_dir) == (None, "condition", None)


def test_the_module_runs_as_torchrun_starts_it():
    """`python -m <WORKER_MODULE>` is a runnable entry point (its --help, without training)."""
    result = subprocess.run([sys.executable, "-m", WORKER_MODULE, "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--train-file" in result.stdout and "--config-json" in result.stdout
