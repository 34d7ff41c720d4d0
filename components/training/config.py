"""`FinetuneConfig`: every knob of a fine-tuning run, documented field by field (trl's SFTConfig style),
with per-size defaults (`FinetuneConfig.for_model`) and JSON overrides (`from_json`, what the
pipeline's `finetune_config` parameter carries). Plain data: no torch here."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from selfguided.components.training.architectures import GPT_NEOX_LINEAR_MODULES, TINY, canonical_name


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
    parallelism: str = field(
        default="auto",
        metadata={"help": "How several GPUs share the work: 'ddp' (each holds the whole model and optimizer state), "
                          "'fsdp' (FSDP2 fully_shard per transformer block + root: weights, gradients and "
                          "optimizer state sharded over all ranks, bf16 compute with fp32 gradient reduction on "
                          "GPUs), or 'auto': ddp when the memory plan says DDP fits the GPUs, else fsdp "
                          "(in practice: LoRA runs DDP, full fine-tuning of 3.8B and up runs FSDP)."})
    precision: str = field(
        default="auto", metadata={"help": "'auto' (bf16 autocast on GPU, fp32 on CPU), 'bf16' or 'fp32'."})
    save_dtype: str = field(
        default="bf16",
        metadata={"help": "Full fine-tuning: the dtype the weights are written in, 'bf16' (half the size: 5.8B is "
                          "~12 GB, in 2 GB safetensors shards that MLflow and S3 move one at a time) or 'fp32' "
                          "(only where asked: twice the size). LoRA adapters are small and written as trained."})
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

    # Fields that change how a run is laid out or checkpointed, not what it computes: a resumed run may
    # differ in them. grad_accum_steps is here because the run's identity is the number of micro-batches
    # per optimizer step (grad_accum_steps x ranks), whatever the number of ranks (checkpoints.py).
    RESUMABLE_FIELDS = ("save_every_steps", "keep_checkpoints", "parallelism", "grad_accum_steps", "save_dtype")

    def __post_init__(self):
        self.lora_target_modules = tuple(self.lora_target_modules)
        choices = {"method": ("lora", "full"), "precision": ("auto", "bf16", "fp32"),
                   "parallelism": ("auto", "ddp", "fsdp"), "save_dtype": ("bf16", "fp32")}
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
            "EleutherAI/polyglot-ko-12.8b": dict(micro_batch_tokens=4096, grad_accum_steps=8, learning_rate=1e-4,
                                                 gradient_checkpointing=True),
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

