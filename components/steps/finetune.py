"""Supervised fine-tuning of a GPT-NeoX base (Polyglot-ko or `tiny`) on prompt/response records.

Read top to bottom:

1. `FinetuneConfig`: every knob, with per-size defaults (`FinetuneConfig.for_model`).
2. Data: JSONL rows `{"id", "category", "prompt", "response"}` become token ids with labels on the
   response (+ EOS) only.
3. Batching: samples are packed without padding into micro-batches of at most
   `micro_batch_tokens` tokens; position_ids restart at every sample and a varlen attention
   backend (FlashAttention-2 on a GPU, `sdpa_varlen` elsewhere, see modeling.py) keeps samples
   apart. The padded layout stays as the benchmark baseline (`packing=False`).
4. `train_loop`: a visible loop (nanoGPT style): gradient accumulation, DDP under torchrun, bf16
   autocast, clipping, LR schedule, tqdm, checkpoints on an interval and on SIGTERM.
5. Checkpoints: directories written under a temporary name and renamed when complete; a rerun
   resumes from the newest one (trainable weights, optimizer, scheduler, RNG states, step). The
   data order is a pure function of (seed, epoch), so a resumed run sees exactly the batches an
   uninterrupted run would and ends with the same weights.
6. `train`: the whole step (load, tokenize, train, write the Model artifact through
   `trained_model.save_trained`, which owns the layout), a CLI for torchrun, and the thin KFP
   component.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
import argparse
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm
from transformers import DataCollatorWithFlattening, get_scheduler

from selfguided.components.data import DataError, file_sha256, iter_jsonl
from selfguided.components.training.base_models import (
    GPT_NEOX_LINEAR_MODULES,
    SDPA_VARLEN,
    TINY,
    canonical_name,
    is_local,
    load_base,
    training_attn_implementation,
)
from selfguided.components.model.prompting import ARMS, STRATEGIES
from selfguided.components.model.artifact import (
    BUNDLED_BASE_REF,
    ModelManifest,
    read_manifest,
    save_bundled_base,
    save_trained,
)
from selfguided.components.images import GPU_IMAGE

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt tokens, sample boundaries)
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


# ----------------------------------------------------------------------------------------------
# 1. Configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class FinetuneConfig:
    """Everything that decides how a model is fine-tuned. Defaults suit Polyglot-ko 1.3B on one
    80 GB GPU; `FinetuneConfig.for_model(name)` adjusts them per model size."""

    method: str = field(
        default="lora", metadata={"help": "'lora' (adapters on a frozen base) or 'full' (all weights)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator: the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: tuple[str, ...] = field(
        default=GPT_NEOX_LINEAR_MODULES,
        metadata={"help": "Modules that get adapters: all four linear layers of a GPT-NeoX block."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of AdamW."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay."})
    lr_scheduler: str = field(
        default="cosine", metadata={"help": "transformers scheduler name: cosine, linear, constant_with_warmup."})
    warmup_ratio: float = field(
        default=0.03, metadata={"help": "Share of the optimizer steps spent warming up linearly."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: no clipping)."})
    num_epochs: int = field(default=3, metadata={"help": "Passes over the training data."})
    max_steps: int = field(
        default=0,
        metadata={"help": "When > 0: train exactly this many optimizer steps (cycling epochs), not num_epochs."})
    max_seq_len: int = field(
        default=2048,
        metadata={"help": "Longest sample in tokens; longer responses are cut (counted as truncated_samples)."})
    micro_batch_tokens: int = field(
        default=16384,
        metadata={"help": "Tokens per micro-batch (per GPU and forward pass). Packed: the budget of concatenated "
                          "samples. Padded: rows = micro_batch_tokens // max_seq_len, padded to the longest row."})
    grad_accum_steps: int = field(
        default=2, metadata={"help": "Micro-batches per GPU accumulated into one optimizer step."})
    packing: bool = field(
        default=True, metadata={"help": "Pack samples without padding (True), or pad rows (the baseline)."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in backward: ~30% slower, far less memory. Off when memory allows."})
    precision: str = field(
        default="auto", metadata={"help": "'auto' (bf16 autocast on GPU, fp32 on CPU), 'bf16' or 'fp32'."})
    attn_implementation: str = field(
        default="auto",
        metadata={"help": "Training attention: 'auto' (flash_attention_2 on a GPU when installed, else "
                          "sdpa_varlen for packed rows, sdpa for padded ones), or a transformers name: "
                          "'flash_attention_2', 'sdpa_varlen', 'sdpa', 'flex_attention', 'eager'."})
    seed: int = field(
        default=42, metadata={"help": "Seeds LoRA init, dropout and the data order of every epoch."})
    save_every_steps: int = field(
        default=50, metadata={"help": "Checkpoint every N optimizer steps (0: only on SIGTERM and at the end)."})
    keep_checkpoints: int = field(
        default=1,
        metadata={"help": "Complete checkpoints kept per run; older ones are deleted. Writes are atomic: 1 is safe."})

    # Fields that change how a run is checkpointed, not what it computes; a resumed run may differ in them.
    RESUMABLE_FIELDS = ("save_every_steps", "keep_checkpoints")

    def __post_init__(self):
        self.lora_target_modules = tuple(self.lora_target_modules)
        choices = {"method": ("lora", "full"), "precision": ("auto", "bf16", "fp32")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"FinetuneConfig.{name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        positive = ("learning_rate", "num_epochs", "max_seq_len", "micro_batch_tokens", "grad_accum_steps",
                    "keep_checkpoints")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"FinetuneConfig.{name}={getattr(self, name)!r}: must be > 0")
        if self.micro_batch_tokens < self.max_seq_len:
            raise ValueError(
                f"FinetuneConfig.micro_batch_tokens={self.micro_batch_tokens} < max_seq_len={self.max_seq_len}: "
                "a micro-batch must hold the longest sample"
            )

    @classmethod
    def for_model(cls, name: str, **overrides: Any) -> "FinetuneConfig":
        """Defaults for a base model. Activation memory grows with d_model x layers per token, so the
        bigger models take fewer tokens per micro-batch and accumulate more of them, keeping
        ~32k tokens per optimizer step. `tiny` trains in seconds on a CPU."""
        per_model = {
            TINY: dict(lora_r=8, lora_alpha=16, learning_rate=3e-3, num_epochs=3, max_seq_len=1024,
                       micro_batch_tokens=4096, grad_accum_steps=1, save_every_steps=5),
            "EleutherAI/polyglot-ko-1.3b": dict(micro_batch_tokens=16384, grad_accum_steps=2),
            "EleutherAI/polyglot-ko-3.8b": dict(micro_batch_tokens=8192, grad_accum_steps=4, learning_rate=1.5e-4),
            "EleutherAI/polyglot-ko-5.8b": dict(micro_batch_tokens=8192, grad_accum_steps=4, learning_rate=1e-4),
        }
        return cls(**{**per_model.get(canonical_name(name), {}), **overrides})

    @classmethod
    def from_json(cls, config_json: str, base_model: str) -> "FinetuneConfig":
        """Per-model defaults overridden by a JSON object of field values ("" or "{}": defaults)."""
        if not config_json.strip():
            return cls.for_model(base_model)
        try:
            overrides = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"config_json is not valid JSON ({exc.msg} at column {exc.colno}): {config_json!r}") from None
        if not isinstance(overrides, dict):
            raise ValueError(f"config_json must be a JSON object of FinetuneConfig fields, got {config_json!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"config_json has unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls.for_model(base_model, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lora_target_modules": list(self.lora_target_modules)}


# ----------------------------------------------------------------------------------------------
# 2. Data: records -> token ids with response-only labels
# ----------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One tokenized record: `labels` is -100 on prompt tokens, the token id on response tokens."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_targets(self) -> int:
        """Tokens that carry loss: each response token is predicted from the token before it."""
        return sum(label != IGNORE_INDEX for label in self.labels)


def read_train_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows `{"id", "category", "prompt", "response"}`; errors name the file, line and field."""
    rows = []
    for number, _, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number}: expected a JSON object with prompt and response")
        for key in ("prompt", "response"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise DataError(f"{path}:{number}: field {key!r} must be a non-empty string")
        rows.append(obj)
    return rows


def tokenize_records(records: list[dict[str, Any]], tokenizer, max_seq_len: int) -> tuple[list[Sample], dict[str, int]]:
    """Tokenize prompt and response separately (as at inference, where the model continues the
    prompt), append EOS to the response, and mask the prompt out of the loss.

    A sample longer than max_seq_len keeps its prompt and loses the end of its response; a prompt
    that leaves fewer than 16 response tokens is skipped. Both are counted, never silent.
    """
    samples, counts = [], {"truncated_samples": 0, "skipped_samples": 0}
    prompts = tokenizer([r["prompt"] for r in records], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r["response"] for r in records], add_special_tokens=False)["input_ids"]
    for prompt, response in zip(prompts, responses):
        response = response + [tokenizer.eos_token_id]
        if len(prompt) + 16 > max_seq_len:
            counts["skipped_samples"] += 1
            continue
        if len(prompt) + len(response) > max_seq_len:
            response = response[: max_seq_len - len(prompt)]
            counts["truncated_samples"] += 1
        samples.append(Sample(prompt + response, [IGNORE_INDEX] * len(prompt) + response))
    if not samples:
        raise DataError(f"no trainable samples: all {len(records)} prompts are longer than max_seq_len={max_seq_len}")
    return samples, counts


# ----------------------------------------------------------------------------------------------
# 3. Batching: a deterministic plan of optimizer steps, packed or padded micro-batches
# ----------------------------------------------------------------------------------------------


def plan_epoch(lengths: list[int], config: FinetuneConfig, epoch: int, world_size: int) -> list[list[list[int]]]:
    """The optimizer steps of one epoch: each step is a list of micro-batches (lists of sample
    indices), `grad_accum_steps * world_size` of them (the last step may have fewer). Rank r
    trains micro-batches r, r + world_size, ... of every step.

    The order is a seeded permutation per epoch, so the plan is the same in every process and in
    every rerun: this is what makes resuming exact without storing a data loader.
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    micro_batches: list[list[int]] = []
    if config.packing:
        current, used = [], 0
        for index in order:  # greedy, in random order: a micro-batch ends when the next sample does not fit
            if current and used + lengths[index] > config.micro_batch_tokens:
                micro_batches.append(current)
                current, used = [], 0
            current.append(index)
            used += lengths[index]
        micro_batches.append(current)
    else:
        rows = max(1, config.micro_batch_tokens // config.max_seq_len)
        micro_batches = [order[i : i + rows] for i in range(0, len(order), rows)]
    per_step = config.grad_accum_steps * world_size
    return [micro_batches[i : i + per_step] for i in range(0, len(micro_batches), per_step)]


@dataclass
class Step:
    """One optimizer step of the plan."""

    epoch: int
    micro_batches: list[list[int]]
    num_targets: int  # loss-carrying tokens over all micro-batches and ranks: the loss denominator
    num_tokens: int  # real (non-pad) tokens over all micro-batches and ranks
    epoch_fraction: float  # 1 / (steps in this epoch), to report fractional epochs


def plan_run(samples: list[Sample], config: FinetuneConfig, world_size: int) -> list[Step]:
    """All optimizer steps of the run: num_epochs epochs, or exactly max_steps steps when set."""
    lengths = [len(s.input_ids) for s in samples]
    steps: list[Step] = []
    epoch = 0
    while (config.max_steps and len(steps) < config.max_steps) or (not config.max_steps and epoch < config.num_epochs):
        epoch_steps = plan_epoch(lengths, config, epoch, world_size)
        for micro_batches in epoch_steps:
            members = [i for mb in micro_batches for i in mb]
            steps.append(Step(
                epoch=epoch,
                micro_batches=micro_batches,
                num_targets=sum(samples[i].num_targets for i in members),
                num_tokens=sum(lengths[i] for i in members),
                epoch_fraction=1.0 / len(epoch_steps),
            ))
        epoch += 1
    return steps[: config.max_steps] if config.max_steps else steps


def shift_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets: position t is trained to predict labels[t + 1]."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)


def collate_packed(samples: list[Sample], varlen_kwargs: bool = False) -> dict[str, Any]:
    """One row [1, total_tokens] with position_ids restarting at 0 for every sample.

    DataCollatorWithFlattening puts -100 on the first label of every sample, so after the shift
    the last token of a sample is never trained to predict the first token of the next one. With
    `varlen_kwargs` it also returns the sample boundaries (cu_seq_lens) for varlen attention.
    """
    collator = DataCollatorWithFlattening(return_flash_attn_kwargs=varlen_kwargs)
    batch = collator([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    batch["targets"] = shift_targets(batch.pop("labels"))
    return batch


def collate_padded(samples: list[Sample], pad_token_id: int) -> dict[str, Any]:
    """The baseline layout: rows right-padded to the longest, with an attention mask."""
    width = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        input_ids[row, :n] = torch.tensor(sample.input_ids)
        labels[row, :n] = torch.tensor(sample.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": shift_targets(labels)}


def loss_sum(model, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Summed cross-entropy over the loss-carrying tokens of a micro-batch.

    The LM head runs only where there is a target (`logits_to_keep` with a boolean mask): on
    instruction data half the tokens are prompt, and the 30k-wide head is a big matmul.
    """
    batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    targets = batch.pop("targets")
    keep = targets != IGNORE_INDEX
    # use_cache=False matters beyond memory: transformers derives the packed block-diagonal mask
    # from position_ids only when no KV cache is passed.
    logits = model(**batch, logits_to_keep=keep, use_cache=False).logits
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


# ----------------------------------------------------------------------------------------------
# 4. Model preparation and the training loop
# ----------------------------------------------------------------------------------------------


def resolve_precision(config: FinetuneConfig, device: torch.device) -> str:
    if config.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return config.precision


def weights_dtype(config: FinetuneConfig, device: torch.device) -> torch.dtype:
    """LoRA keeps the frozen base in bf16 (adapters stay fp32); full fine-tuning keeps fp32 master
    weights for AdamW and computes in bf16 under autocast."""
    if config.method == "lora" and resolve_precision(config, device) == "bf16":
        return torch.bfloat16
    return torch.float32


def prepare_model(model, config: FinetuneConfig):
    """Gradient checkpointing and LoRA (or all weights trainable for full fine-tuning)."""
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "full":
        return model.requires_grad_(True)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        bias="none",
    )
    return get_peft_model(model, lora)


@dataclass
class Distributed:
    """Process-group facts; world_size 1 outside torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def sum(self, value: float, device: torch.device) -> float:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.item()


def init_distributed(device_type: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, Gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


class TrainingPreempted(RuntimeError):
    """Raised after SIGTERM once the checkpoint is written; rerunning the same command resumes."""


class SigtermFlag:
    """Turns SIGTERM into a flag the loop checks after each optimizer step (a handler must not
    write a checkpoint itself: it could fire in the middle of a backward pass)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


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


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by PyTorch, or the process's peak resident memory on CPU (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def train_loop(
    model,
    samples: list[Sample],
    config: FinetuneConfig,
    *,
    device: torch.device,
    pad_token_id: int,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str = "",
    distributed: Distributed | None = None,
    progress: bool = True,
) -> tuple[Any, RunState]:
    """Train `model` (already prepared by prepare_model) on `samples`; returns (model, state).

    With a checkpoint_dir, resumes from its newest complete checkpoint (which must carry the same
    fingerprint), writes one every `save_every_steps` steps, one at the end, and one on SIGTERM
    before raising TrainingPreempted.
    """
    distributed = distributed or Distributed()
    torch.manual_seed(config.seed)
    steps = plan_run(samples, config, distributed.world_size)
    precision = resolve_precision(config, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay, fused=device.type == "cuda"
    )
    scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=round(config.warmup_ratio * len(steps)),
        num_training_steps=len(steps),
    )
    state = RunState()
    checkpoints = None
    if checkpoint_dir:
        checkpoints = Checkpoints(checkpoint_dir, fingerprint, distributed, config.keep_checkpoints)
    if checkpoints is not None and (latest := checkpoints.latest()) is not None:
        state = checkpoints.load(latest, model, optimizer, scheduler)
    ddp_model = model
    if distributed.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    # cu_seq_lens for the varlen backends, so they need not rebuild them from position_ids per layer
    attn = model.config._attn_implementation
    varlen = attn.startswith("flash_attention") or attn == SDPA_VARLEN
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )
    model.train()
    bar = tqdm(total=len(steps), initial=state.step, desc="finetune", unit="step",
               disable=not (progress and distributed.is_main))
    with SigtermFlag() as sigterm:
        for step_index in range(state.step, len(steps)):
            started = time.perf_counter()
            step = steps[step_index]
            mine = step.micro_batches[distributed.rank :: distributed.world_size]
            # A rank without a micro-batch in the last, short step still joins the gradient
            # all-reduce, with a zero-weighted copy of the first micro-batch.
            weights = [1.0] * len(mine) if mine else [0.0]
            mine = mine or step.micro_batches[:1]
            local_loss = torch.zeros((), device=device)  # stays on the device: one sync per step, not per micro-batch
            for i, (member_ids, weight) in enumerate(zip(mine, weights)):
                members = [samples[j] for j in member_ids]
                batch = collate_packed(members, varlen) if config.packing else collate_padded(members, pad_token_id)
                last = i == len(mine) - 1
                sync = contextlib.nullcontext() if last or distributed.world_size == 1 else ddp_model.no_sync()
                with sync:
                    with autocast:
                        summed = loss_sum(ddp_model, batch, device)
                    # DDP averages gradients over ranks; scaling by world_size makes the result the
                    # gradient of (summed loss over the whole step) / (targets in the whole step).
                    (summed * (weight * distributed.world_size / step.num_targets)).backward()
                local_loss += weight * summed.detach()
            if config.max_grad_norm > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm).item()
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None]).item()
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            step_loss = distributed.sum(local_loss.item(), device) / step.num_targets
            state.step = step_index + 1
            state.loss_sum += step_loss * step.num_targets
            state.target_tokens += step.num_targets
            state.tokens += step.num_tokens
            state.seconds += time.perf_counter() - started
            state.epochs += step.epoch_fraction
            state.history.append(
                {"step": state.step, "epoch": step.epoch, "loss": step_loss, "lr": lr, "grad_norm": grad_norm})
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{state.tokens / state.seconds:,.0f}")

            stop = distributed.sum(float(sigterm.raised), device) > 0
            interval = config.save_every_steps and state.step % config.save_every_steps == 0
            if checkpoints is not None and (stop or interval or state.step == len(steps)):
                checkpoints.save(state, model, optimizer, scheduler)
            if stop:
                bar.close()
                where = f"checkpoint saved in {checkpoint_dir}" if checkpoints else "no checkpoint_dir, progress lost"
                raise TrainingPreempted(
                    f"SIGTERM: stopped after step {state.step}/{len(steps)}; {where}. Rerun to resume.")
    bar.close()
    return model, state


# ----------------------------------------------------------------------------------------------
# 5. Checkpoints: atomic directories, newest complete one wins
# ----------------------------------------------------------------------------------------------


class Checkpoints:
    """`checkpoint_dir/step-000120/` holds trainable.pt, optimizer.pt, scheduler.pt, rng-rank<r>.pt
    and meta.json (written last). A checkpoint is built in `.tmp-step-000120/` and renamed when
    complete, so a process killed at any moment leaves either the whole directory or none of it;
    leftover temporary directories are deleted on the next start."""

    PATTERN = re.compile(r"^step-(\d{6,})$")

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
        if self.distributed.is_main:
            trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
            _save_synced(trainable, tmp / "trainable.pt")
            _save_synced(optimizer.state_dict(), tmp / "optimizer.pt")
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
        meta = json.loads((path / "meta.json").read_text())
        if meta["fingerprint"] != self.fingerprint:
            raise RuntimeError(
                f"{path}: checkpoint of a different run (other data, base model, config or GPU count); "
                "point checkpoint_dir at an empty folder or delete it to start over"
            )
        trainable = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
        missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in trainable]
        if missing:
            raise RuntimeError(f"{path}/trainable.pt lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad:
                    param.copy_(trainable[name])
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng = torch.load(path / f"rng-rank{self.distributed.rank}.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        fields_ = {f.name for f in fields(RunState)}
        return RunState(**{k: v for k, v in meta.items() if k in fields_})


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


# ----------------------------------------------------------------------------------------------
# 6. The step: train -> Model artifact (trained_model.py owns its layout); CLI; KFP component
# ----------------------------------------------------------------------------------------------


def base_model_ref(base_model: str) -> str:
    """How the artifact points at its base: bundled (tiny), an absolute local path, or a hub id."""
    if base_model == TINY:
        return BUNDLED_BASE_REF
    if is_local(base_model):
        return str(Path(base_model).expanduser().resolve())
    return canonical_name(base_model)


def run_fingerprint(train_file: str | Path, base_model: str, config: FinetuneConfig, world_size: int) -> str:
    """What a checkpoint must match to be resumed: data, base, computing config and GPU count."""
    computing = {k: v for k, v in config.to_dict().items() if k not in FinetuneConfig.RESUMABLE_FIELDS}
    payload = json.dumps(
        {"data": file_sha256(train_file), "base": base_model, "config": computing, "world_size": world_size},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def train(
    train_file: str | Path,
    base_model: str,
    output_dir: str | Path,
    config: FinetuneConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    *,
    arm: str | None = None,
    strategy: str = "condition",
) -> dict[str, float]:
    """Fine-tune `base_model` on `train_file` and write the Model artifact to `output_dir`.

    Args:
        train_file: JSONL of `{"id", "category", "prompt", "response"}`; the prompt is the fully
            formatted prompt ending in the response header, the response the target text.
        base_model: `tiny`, a hub id (EleutherAI/polyglot-ko-1.3b) or a local save_pretrained path.
        output_dir: gets selfguided.json, adapter/ (LoRA) or model/ (full), tokenizer/, base/
            (only for `tiny`, which no hub serves) and train_log.jsonl (one line per step).
        config: defaults to FinetuneConfig.for_model(base_model).
        checkpoint_dir: persistent folder (a PVC), may be shared: each run checkpoints into the
            subfolder named by its fingerprint (data, base, config, GPU count) and a rerun of the
            same run resumes there. None: a folder inside output_dir, deleted once training ends.
        arm: the data arm (unscored / self_guided / control); default: the train file's name.
        strategy: how the split used the scores (condition / filter); recorded in the manifest,
            it decides how the model is prompted at inference.

    Returns the training metrics: train_loss, train_tokens, target_tokens, tokens_per_s, steps,
    epochs, seconds, peak_memory_gb, train_samples, truncated_samples, skipped_samples.
    Raises TrainingPreempted after SIGTERM (a checkpoint has been written).
    """
    config = config or FinetuneConfig.for_model(base_model)
    arm = arm or Path(train_file).stem
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r} (known: {', '.join(ARMS)}); pass arm= or name the file <arm>.jsonl")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    output_dir = Path(output_dir)
    device = pick_device()
    distributed = init_distributed(device.type)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    attn = config.attn_implementation
    if attn == "auto":
        attn = training_attn_implementation(device, config.packing)

    records = read_train_file(train_file)
    model, tokenizer = load_base(
        base_model, dtype=weights_dtype(config, device), device=device, attn_implementation=attn)
    # The hub commit the weights came from, so that a registered version is reproducible.
    base_revision = getattr(model.config, "_commit_hash", None) if base_model_ref(base_model) != BUNDLED_BASE_REF else None
    if distributed.is_main and base_model_ref(base_model) == BUNDLED_BASE_REF:
        save_bundled_base(output_dir, model, tokenizer)
    samples, counts = tokenize_records(records, tokenizer, config.max_seq_len)
    if distributed.is_main and (counts["truncated_samples"] or counts["skipped_samples"]):
        print(f"{train_file}: {counts['truncated_samples']} responses cut and {counts['skipped_samples']} samples "
              f"skipped at max_seq_len={config.max_seq_len}", file=sys.stderr)

    torch.manual_seed(config.seed)  # LoRA's A matrices are initialised from the global RNG
    model = prepare_model(model, config)
    fingerprint = run_fingerprint(train_file, base_model, config, distributed.world_size)
    temporary_checkpoints = checkpoint_dir is None
    # A shared checkpoint_dir (one PVC folder for every model, arm and pipeline run) gets one
    # subfolder per run identity, so parallel tasks never meet and a retry finds its own.
    checkpoint_dir = output_dir / "checkpoints" if temporary_checkpoints else Path(checkpoint_dir) / fingerprint[:16]
    model, state = train_loop(
        model, samples, config,
        device=device,
        pad_token_id=tokenizer.pad_token_id,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        distributed=distributed,
    )

    metrics = {
        "train_loss": state.loss_sum / max(state.target_tokens, 1),
        "train_tokens": state.tokens,
        "target_tokens": state.target_tokens,
        "tokens_per_s": state.tokens / max(state.seconds, 1e-9),
        "steps": state.step,
        "epochs": round(state.epochs, 4),
        "seconds": state.seconds,
        "peak_memory_gb": peak_memory_gb(device),
        "train_samples": len(samples),
        **counts,
    }
    if distributed.is_main:
        manifest = ModelManifest(
            base_model=base_model,
            base_model_ref=base_model_ref(base_model),
            base_revision=base_revision,
            arm=arm,
            strategy=strategy,
            method=config.method,
            config=config.to_dict(),
            train_metrics=metrics,
            train_data_sha256=file_sha256(train_file),
        )
        save_trained(output_dir, model, tokenizer, manifest, train_log=state.history)
        if temporary_checkpoints:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    distributed.barrier()
    if distributed.world_size > 1:
        dist.destroy_process_group()
    return metrics


def finetune_step(train_dir: str | Path, base_model: str, arm: str, strategy: str, config_json: str, num_gpus: int,
                  checkpoint_dir: str, output_dir: str | Path) -> dict[str, float]:
    """What the KFP component does: train `<train_dir>/<arm>.jsonl`, in this process on one
    device, or under `torchrun --nproc_per_node=num_gpus` (DDP) when num_gpus > 1."""
    train_file = Path(train_dir) / f"{arm}.jsonl"
    if not train_file.exists():
        raise DataError(f"{train_file}: no training file for arm {arm!r} (the split step writes "
                        f"{', '.join(a + '.jsonl' for a in ARMS)})")
    config = FinetuneConfig.from_json(config_json, base_model)
    if num_gpus <= 1:
        return train(train_file, base_model, output_dir, config, checkpoint_dir or None, arm=arm, strategy=strategy)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_gpus}",
        "-m", "selfguided.components.steps.finetune",
        "--train-file", str(train_file), "--base-model", base_model, "--output-dir", str(output_dir),
        "--arm", arm, "--strategy", strategy, "--config-json", json.dumps(config.to_dict()),
    ] + (["--checkpoint-dir", checkpoint_dir] if checkpoint_dir else [])
    process = subprocess.Popen(command)
    # Kubernetes signals this process only; torchrun passes SIGTERM on to its workers.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signal.SIGTERM))
    try:
        returncode = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if returncode != 0:
        raise RuntimeError(f"torchrun exited with code {returncode}: {' '.join(command)}")
    return read_manifest(output_dir).train_metrics


def main(argv: list[str] | None = None) -> int:
    """CLI (what torchrun launches): python -m selfguided.components.steps.finetune --train-file ..."""
    parser = argparse.ArgumentParser(description="Fine-tune a GPT-NeoX base model (LoRA or full).")
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--arm", default=None)
    parser.add_argument("--strategy", default="condition", choices=STRATEGIES)
    parser.add_argument("--config-json", default="", help="JSON object of FinetuneConfig overrides")
    parser.add_argument("--checkpoint-dir", default=None)
    args = parser.parse_args(argv)
    config = FinetuneConfig.from_json(args.config_json, args.base_model)
    try:
        metrics = train(args.train_file, args.base_model, args.output_dir, config, args.checkpoint_dir, arm=args.arm,
                        strategy=args.strategy)
    except TrainingPreempted as exc:
        print(exc, file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(metrics))
    return 0


@component(base_image=GPU_IMAGE, install_kfp_package=False)  # the image has kfp
def finetune(
    train_data: Input[Dataset],
    base_model: str,
    arm: str,
    strategy: str,
    config_json: str,
    num_gpus: int,
    checkpoint_dir: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Fine-tune a small Korean LM on one arm of the split data.

    Args:
        train_data: directory written by the split step, holding `<arm>.jsonl` per arm, rows
            `{"id", "category", "prompt", "response"}`.
        base_model: `tiny` (built locally, nothing downloaded), a hub id such as
            EleutherAI/polyglot-ko-1.3b, or a local path reachable from the pod.
        arm: which file to train on: `unscored`, `self_guided` or `control`.
        strategy: how the split used the scores (`condition` or `filter`); written into the model's
            manifest, where generate and serving read it to prompt the model as it was trained.
        config_json: "" for the per-size defaults, else a JSON object of FinetuneConfig overrides,
            e.g. '{"method": "full", "num_epochs": 2}'.
        num_gpus: GPUs of this pod; more than 1 runs torchrun (DDP) inside the step.
        checkpoint_dir: a persistent folder (PVC mount), shareable by all tasks: each run uses the
            subfolder named by its fingerprint, so a retried pod resumes from its last checkpoint;
            "" keeps checkpoints inside the output only (no resume across pods).
        model: the trained model directory (layout: components/trained_model.py).
        metrics: every training metric (train_loss, tokens_per_s, peak_memory_gb, ...).
    """
    from selfguided.components.steps.finetune import finetune_step

    results = finetune_step(train_data.path, base_model, arm, strategy, config_json, num_gpus, checkpoint_dir,
                            model.path)
    for name, value in results.items():
        metrics.log_metric(name, value)
    model.metadata.update({"base_model": base_model, "arm": arm, "strategy": strategy})


if __name__ == "__main__":
    sys.exit(main())
