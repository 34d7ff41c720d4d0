"""One fine-tuning run, from a training file to the Model artifact: load the base, tokenize,
train (loop.py), write the artifact through `model.artifact.save_trained` (the one owner of its
layout). The finetune step calls `train`, in its own process or under torchrun on every rank.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from selfguided.components.data.hashing import file_sha256
from selfguided.components.model.artifact import BUNDLED_BASE_REF, ModelManifest, save_bundled_base, save_trained
from selfguided.components.model.prompting import ARMS, STRATEGIES
from selfguided.components.training.base_models import TINY, canonical_name, is_local, load_base, training_attn_implementation
from selfguided.components.training.checkpoints import run_fingerprint
from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.data import read_train_file, tokenize_records
from selfguided.components.training.loop import peak_memory_gb, prepare_model, train_loop, weights_dtype
from selfguided.components.training.memory_plan import detect_gpu_memory_gb, plan_for_run
from selfguided.components.training.parallel import full_state_dict, init_distributed, is_fsdp


def base_model_ref(base_model: str) -> str:
    """How the artifact points at its base: bundled (tiny), an absolute local path, or a hub id."""
    if base_model == TINY:
        return BUNDLED_BASE_REF
    if is_local(base_model):
        return str(Path(base_model).expanduser().resolve())
    return canonical_name(base_model)


def unsharded_copy(model, weights: dict[str, torch.Tensor]):
    """A plain model holding the gathered weights (no copy: built on the meta device, then the
    tensors are assigned), so that a full model trained under FSDP is saved by the same path, with
    the same key names, as one trained in one process (FSDP's generated subclass hides the model
    class from transformers' checkpoint-format conversion)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config)
    plain.load_state_dict(weights, assign=True)
    plain.generation_config = model.generation_config
    return plain


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
            subfolder named by its fingerprint (data, base, config, micro-batches per step) and a
            rerun of the same run resumes there, on any number of ranks. None: a folder inside output_dir, deleted once training ends.
        arm: the data arm (unscored / self_guided / control); default: the train file's name.
        strategy: how the split used the scores (condition / filter); recorded in the manifest,
            it decides how the model is prompted at inference.

    Returns the training metrics: train_loss, train_tokens, target_tokens, tokens_per_s, steps,
    epochs, seconds, peak_memory_gb, train_samples, truncated_samples, skipped_samples.
    Raises TrainingPreempted after SIGTERM (a checkpoint has been written), and
    memory_plan.DoesNotFit before loading anything when the GPUs cannot hold the run.
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
    # The memory plan, before the model loads: an impossible setup stops here, naming its numbers.
    plan = plan_for_run(base_model, config, gpus_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                        nodes=max(1, distributed.world_size // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))),
                        gpu_memory_gb=detect_gpu_memory_gb())
    parallelism = plan.setup.parallelism if plan else (config.parallelism if config.parallelism != "auto" else "ddp")
    if plan and distributed.is_main:
        print(plan.describe(), file=sys.stderr)
    attn = config.attn_implementation
    if attn == "auto":
        attn = training_attn_implementation(device, config.packing)

    records = read_train_file(train_file)
    # Under FSDP the weights stay in host memory until fully_shard moves each block's shard to the GPU,
    # so no GPU ever holds the whole model (5.8B full: 23.5 GB of fp32 weights) on the way.
    sharded = parallelism == "fsdp" and distributed.world_size > 1
    model, tokenizer = load_base(base_model, dtype=weights_dtype(config, device),
                                 device=torch.device("cpu") if sharded else device, attn_implementation=attn)
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
        parallelism=parallelism,
    )
    # Under FSDP every rank takes part in gathering the weights; rank 0 writes the artifact.
    weights = full_state_dict(model, trainable_only=config.method == "lora") if is_fsdp(model) else None

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
        if weights is not None and config.method == "full":
            model, weights = unsharded_copy(model, weights), None
        save_trained(output_dir, model, tokenizer, manifest, train_log=state.history, state_dict=weights,
                     save_dtype=config.save_dtype)
        if temporary_checkpoints:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    distributed.barrier()
    if distributed.world_size > 1:
        dist.destroy_process_group()
    return metrics

