"""The training worker: the process every rank of a fine-tuning runs, under torchrun on one node (the
finetune step starts it when num_gpus > 1) or on the nodes of a TrainJob (trainjob.py), and the
process a one-GPU run can be started as by hand:

    python -m selfguided.components.training.worker --train-file split/unscored.jsonl --base-model tiny \\
        --output-dir out/ --config-json '{"max_steps": 10}'

`WorkerRun.args` writes its command line and `WorkerRun.from_args` reads it: one pair, so what a
launcher passes and what the worker understands cannot drift apart. A rank stopped by SIGTERM exits
with PREEMPTED_EXIT_CODE once its checkpoint is written, so a retried pod resumes there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass

from selfguided.components.model.prompting import STRATEGIES
from selfguided.components.training.config import FinetuneConfig

WORKER_MODULE = "selfguided.components.training.worker"
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


@dataclass(frozen=True)
class WorkerRun:
    """One training run as a worker's command line carries it; `args` writes it, `from_args` reads it."""

    train_file: str
    base_model: str
    output_dir: str
    config: FinetuneConfig
    arm: str | None = None
    """The data arm; None: the training file's name."""
    strategy: str = "condition"
    checkpoint_dir: str | None = None

    def args(self) -> list[str]:
        """`-m <this module> --train-file ...`: what follows `python` or `torchrun` to start the worker."""
        args = ["-m", WORKER_MODULE, "--train-file", str(self.train_file), "--base-model", self.base_model,
                "--output-dir", str(self.output_dir), "--strategy", self.strategy,
                "--config-json", json.dumps(self.config.to_dict(), sort_keys=True)]
        args += ["--arm", self.arm] if self.arm else []
        return args + (["--checkpoint-dir", str(self.checkpoint_dir)] if self.checkpoint_dir else [])

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> WorkerRun:
        """The run of a command line (what follows `-m <this module>`); argparse exits on a bad one."""
        parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}",
                                         description="Fine-tune a GPT-NeoX base model (LoRA or full).")
        parser.add_argument("--train-file", required=True)
        parser.add_argument("--base-model", required=True)
        parser.add_argument("--output-dir", required=True)
        parser.add_argument("--arm", default=None, help="default: the training file's name")
        parser.add_argument("--strategy", default="condition", choices=STRATEGIES)
        parser.add_argument("--config-json", default="", help="JSON object of FinetuneConfig overrides "
                                                              "(default: the base model's defaults)")
        parser.add_argument("--checkpoint-dir", default=None)
        args = parser.parse_args(argv)
        return cls(args.train_file, args.base_model, args.output_dir,
                   FinetuneConfig.from_json(args.config_json, args.base_model), arm=args.arm,
                   strategy=args.strategy, checkpoint_dir=args.checkpoint_dir)


def main(argv: list[str] | None = None) -> int:
    """Train as the command line says; rank 0 prints the training metrics as one JSON line."""
    from selfguided.components.training.job import train
    from selfguided.components.training.loop import TrainingPreempted

    run = WorkerRun.from_args(argv)
    try:
        metrics = train(run.train_file, run.base_model, run.output_dir, run.config, run.checkpoint_dir, arm=run.arm,
                        strategy=run.strategy)
    except TrainingPreempted as exc:
        print(exc, file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
