"""The training loop, visible top to bottom (nanoGPT style): model preparation (LoRA or full,
gradient checkpointing), gradient accumulation, DDP under torchrun, bf16 autocast, clipping, the
LR schedule, tqdm, checkpoints on an interval and on SIGTERM. DDP or FSDP2 on several ranks
(parallel.py): the loop is the same, only the wrapper differs.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from selfguided.components.training.base_models import SDPA_VARLEN
from selfguided.components.training.checkpoints import Checkpoints, RunState
from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.data import IGNORE_INDEX, Sample, collate_packed, collate_padded, plan_run
from selfguided.components.training.parallel import Distributed, gradient_sync, is_fsdp, unwrap, wrap_model


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
    from peft import LoraConfig, get_peft_model

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
    parallelism: str | None = None,
    progress: bool = True,
) -> tuple[Any, RunState]:
    """Train `model` (already prepared by prepare_model) on `samples`; returns (model, state).

    On several ranks the model is wrapped by `parallelism` (ddp or fsdp; default: the config's,
    ddp for 'auto'), before the optimizer is built (FSDP2 replaces the parameters by their shards).
    The returned model is the one to save: unwrapped from DDP, still sharded under FSDP
    (parallel.full_state_dict gathers it). With a checkpoint_dir, resumes from its newest complete checkpoint (which must carry the same
    fingerprint), writes one every `save_every_steps` steps, one at the end, and one on SIGTERM
    before raising TrainingPreempted.
    """
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    distributed = distributed or Distributed()
    torch.manual_seed(config.seed)
    steps = plan_run(samples, config, distributed.world_size)
    precision = resolve_precision(config, device)
    parallelism = parallelism or (config.parallelism if config.parallelism != "auto" else "ddp")
    wrapped = wrap_model(model, parallelism, distributed, device, precision)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
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
        state = checkpoints.load(latest, wrapped, optimizer, scheduler)
    # cu_seq_lens for the varlen backends, so they need not rebuild them from position_ids per layer
    attn = model.config._attn_implementation
    varlen = attn.startswith("flash_attention") or attn == SDPA_VARLEN
    # bf16 compute: autocast over fp32 weights, except under FSDP2, whose MixedPrecisionPolicy
    # already gathers bf16 weights and reduces gradients in fp32.
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" and not is_fsdp(wrapped)
        else contextlib.nullcontext()
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
            # reduction, with a zero-weighted copy of the first micro-batch.
            weights = [1.0] * len(mine) if mine else [0.0]
            mine = mine or step.micro_batches[:1]
            local_loss = torch.zeros((), device=device)  # stays on the device: one sync per step, not per micro-batch
            for i, (member_ids, weight) in enumerate(zip(mine, weights)):
                members = [samples[j] for j in member_ids]
                batch = collate_packed(members, varlen) if config.packing else collate_padded(members, pad_token_id)
                last = i == len(mine) - 1
                with gradient_sync(wrapped, enabled=last):
                    with autocast:
                        summed = loss_sum(wrapped, batch, device)
                    # DDP and FSDP average gradients over ranks; scaling by world_size makes the result
                    # the gradient of (summed loss over the whole step) / (targets in the whole step).
                    (summed * (weight * distributed.world_size / step.num_targets)).backward()
                local_loss += weight * summed.detach()
            if config.max_grad_norm > 0:
                grad_norm = _scalar(torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm))
            else:
                grad_norm = _scalar(torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None]))
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
                checkpoints.save(state, wrapped, optimizer, scheduler)
            if stop:
                bar.close()
                where = f"checkpoint saved in {checkpoint_dir}" if checkpoints else "no checkpoint_dir, progress lost"
                raise TrainingPreempted(
                    f"SIGTERM: stopped after step {state.step}/{len(steps)}; {where}. Rerun to resume.")
    bar.close()
    return unwrap(wrapped), state


def _scalar(tensor) -> float:
    """A float from a plain tensor or a DTensor (FSDP2 gradient norms are sharded: gather first)."""
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).item()

