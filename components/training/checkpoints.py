"""Checkpoints: atomic directories, the newest complete one wins, and a fingerprint says whose they are.

A checkpoint is built in `.tmp-step-N/` and renamed to `step-N/` when complete, so a process killed
at any moment leaves either the whole directory or none of it; leftover temporary directories are
deleted on the next start. The data order is a pure function of (seed, epoch) (data.plan_run), so
restoring the tensors, the RNG states and `RunState` resumes exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from selfguided.components.data.hashing import file_sha256
from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.parallel import Distributed, unwrap


@dataclass
class RunState:
    """What a checkpoint must restore besides tensors: progress, counters and the loss log."""

    step: int = 0
    loss_sum: float = 0.0
    target_tokens: int = 0
    tokens: int = 0
    seconds: float = 0.0
    epochs: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def run_fingerprint(train_file: str | Path, base_model: str, config: FinetuneConfig, world_size: int) -> str:
    """The identity of a run, what a checkpoint must match to be resumed: data, base, the computing
    config, and the micro-batches per optimizer step (grad_accum_steps x ranks).

    The number of ranks alone is not part of it: 2 ranks accumulating 1 micro-batch and 1 rank
    accumulating 2 train the same plan (data.plan_epoch), so a checkpoint written by one resumes on
    the other (DCP reshards); the world size is kept in meta.json to say so.
    """
    computing = {k: v for k, v in config.to_dict().items() if k not in FinetuneConfig.RESUMABLE_FIELDS}
    payload = json.dumps(
        {"data": file_sha256(train_file), "base": base_model, "config": computing,
         "micro_batches_per_step": config.grad_accum_steps * world_size},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class Checkpoints:
    """`checkpoint_dir/step-000120/` holds state/ (a torch.distributed.checkpoint of the trainable
    weights and the optimizer state, one file per rank plus .metadata), scheduler.pt,
    rng-rank<r>.pt and meta.json (written last). A checkpoint is built in `.tmp-step-000120/` and
    renamed when every rank has written its part, so a process killed at any moment leaves either
    the whole directory or none of it; leftover temporary directories are deleted on the next start.

    DCP stores each tensor with its global shape and the pieces each rank held, so a checkpoint of
    sharded (FSDP2) or replicated (DDP, one process) weights loads on any number of ranks."""

    PATTERN = re.compile(r"^step-(\d{6,})$")
    STATE_DIR = "state"

    def __init__(self, root: str | Path, fingerprint: str, distributed: Distributed, keep: int):
        self.root, self.fingerprint, self.distributed, self.keep = Path(root), fingerprint, distributed, keep
        if distributed.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-step-*"):
                shutil.rmtree(stale)
        distributed.barrier()

    def complete(self) -> list[Path]:
        found = [p for p in self.root.iterdir() if self.PATTERN.match(p.name) and (p / "meta.json").exists()]
        return sorted(found, key=lambda p: int(self.PATTERN.match(p.name).group(1)))

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1] if found else None

    def save(self, state: RunState, model, optimizer, scheduler) -> Path:
        import torch.distributed.checkpoint as dcp

        final = self.root / f"step-{state.step:06d}"
        if final.exists():  # resumed at the very end: this checkpoint is already there
            return final
        tmp = self.root / f".tmp-step-{state.step:06d}"
        if self.distributed.is_main:
            tmp.mkdir()
        self.distributed.barrier()
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        _save_synced(rng, tmp / f"rng-rank{self.distributed.rank}.pt")
        dcp.save(_training_state(model, optimizer), checkpoint_id=tmp / self.STATE_DIR)  # every rank, its shard
        if self.distributed.is_main:
            _save_synced(scheduler.state_dict(), tmp / "scheduler.pt")
            meta = {"fingerprint": self.fingerprint, "world_size": self.distributed.world_size, **asdict(state)}
            _write_synced((tmp / "meta.json"), json.dumps(meta, indent=1))
        self.distributed.barrier()
        if self.distributed.is_main:
            os.rename(tmp, final)
            _fsync_dir(self.root)
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old)
        self.distributed.barrier()
        return final

    def load(self, path: Path, model, optimizer, scheduler) -> RunState:
        """Restore a checkpoint into the (already wrapped) model and its optimizer, on every rank."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        meta = json.loads((path / "meta.json").read_text())
        if meta["fingerprint"] != self.fingerprint:
            raise RuntimeError(
                f"{path}: checkpoint of a different run (other data, base model, config or micro-batches per "
                "step); point checkpoint_dir at an empty folder or delete it to start over"
            )
        if meta["world_size"] != self.distributed.world_size and self.distributed.is_main:
            print(f"{path}: same run, written by {meta['world_size']} rank(s), resumed on "
                  f"{self.distributed.world_size} (DCP reshards)", file=sys.stderr)
        training_state = _training_state(model, optimizer)
        dcp.load(training_state, checkpoint_id=path / self.STATE_DIR)
        set_state_dict(unwrap(model), optimizer, model_state_dict=training_state["model"],
                       optim_state_dict=training_state["optim"], options=_state_options())
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng_file = path / f"rng-rank{self.distributed.rank}.pt"
        if rng_file.exists():  # a rank the writing run did not have keeps its seeded generator
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        fields_ = {f.name for f in fields(RunState)}
        return RunState(**{k: v for k, v in meta.items() if k in fields_})


def _state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # The frozen LoRA base is the base model's, not the run's: left out, and so not "missing" on load
    # (dcp.load already fails on a trainable tensor the checkpoint lacks).
    return StateDictOptions(ignore_frozen_params=True, strict=False)


def _training_state(model, optimizer) -> dict[str, Any]:
    """Trainable weights and optimizer state keyed by parameter name, sharded as the model is."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(unwrap(model), optimizer, options=_state_options())
    return {"model": model_state, "optim": optim_state}


def _save_synced(obj: Any, path: Path):
    with path.open("wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _write_synced(path: Path, text: str):
    with path.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

