"""The memory plan: will this fine-tuning setup fit on these GPUs, before any GPU starts?

Per-GPU memory of one rank, in bytes, from the model's shape (architectures.py) and the
FinetuneConfig, by the usual accounting (ZeRO paper, Rajbhandari et al. 2020; activations after
Korthikanti et al. 2022, with a varlen/flash attention kernel that keeps no L x L scores):

    weights      full: fp32 master weights, 4 B/param. LoRA: the frozen base in the compute dtype
                 (bf16 on a GPU: 2 B/param), adapters in fp32.
    gradients    fp32, 4 B per trainable parameter.
    optimizer    AdamW: two fp32 moments, 8 B per trainable parameter.
    activations  per token and layer, ACT_BYTES_PER_HIDDEN x d_model bytes of saved tensors at
                 2-byte precision (x2 in fp32); with gradient checkpointing only each layer's input
                 is kept, plus one layer's full activations while it is recomputed.
    logits       the LM head on loss-carrying tokens, per token and vocabulary entry: the fp32
                 log-softmax kept for the loss, its gradient and the logits' gradient, 12 B in fp32
                 (measured on the CPU, benchmarks/memory_plan_check.py), 14 B in bf16 (the logits'
                 bf16 gradient on top).
    workspace    a fixed CUDA context + allocator reserve (RESERVE_GB) and fragmentation
                 (FRAGMENTATION x the rest).

Under DDP every rank holds all of weights, gradients and optimizer state. Under FSDP2
(`fully_shard` per block + root) each rank holds 1/world of them, plus the all-gathered compute
copy of two blocks (the one running and the one prefetched) and their unsharded gradients.

No torch here: `selfguided plan-training` and the pipeline compile read it without loading models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from selfguided.components.training.architectures import (
    GPT_NEOX_LINEAR_MODULES,
    POLYGLOT_KO_CONFIGS,
    TINY,
    TINY_CONFIG,
    canonical_name,
)
from selfguided.components.training.config import FinetuneConfig

GB = 1e9  # GPU memory is sold in decimal GB (an "80 GB" H100 has 80e9 + a little bytes)
ACT_BYTES_PER_HIDDEN = 34  # saved activation bytes per token, layer and unit of d_model at 2-byte precision
LOGIT_BYTES = 12  # per target token and vocab entry in fp32: log-softmax + its gradient + the logits' gradient
RESERVE_GB = 2.0  # CUDA context, NCCL buffers, cuBLAS workspace
FRAGMENTATION = 0.10  # allocator slack on top of what tensors hold
TINY_VOCAB = 4096  # the tiny tokenizer's vocabulary, padded (base_models.build_tiny)
PARALLELISMS = ("ddp", "fsdp")


@dataclass(frozen=True)
class Shape:
    """What memory depends on in a GPT-NeoX model."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int

    @property
    def block_params(self) -> int:
        """Weights and biases of one block: qkv, dense, the two MLP matrices, two LayerNorms."""
        h, f = self.hidden, self.intermediate
        return (h * 3 * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h) + 4 * h

    @property
    def params(self) -> int:
        """Every parameter: blocks, input embedding, output head (untied), final LayerNorm."""
        return self.layers * self.block_params + 2 * self.vocab * self.hidden + 2 * self.hidden

    def lora_params(self, rank: int, targets: tuple[str, ...] = GPT_NEOX_LINEAR_MODULES) -> int:
        """LoRA A (r x in) and B (out x r) on each targeted linear layer of every block."""
        h, f = self.hidden, self.intermediate
        sizes = {"query_key_value": (h, 3 * h), "dense": (h, h), "dense_h_to_4h": (h, f), "dense_4h_to_h": (f, h)}
        return self.layers * sum(rank * (sizes[t][0] + sizes[t][1]) for t in targets if t in sizes)


def model_shape(name: str, vocab_size: int | None = None) -> Shape:
    """The shape of `tiny` or a Polyglot-ko size (hub id or short name), or of a custom config dict."""
    canonical = canonical_name(name)
    if canonical == TINY:
        config = dict(TINY_CONFIG, vocab_size=vocab_size or TINY_VOCAB)
    elif canonical in POLYGLOT_KO_CONFIGS:
        config = POLYGLOT_KO_CONFIGS[canonical]
    else:
        raise ValueError(f"no built-in shape for {name!r} (known: {TINY}, {', '.join(POLYGLOT_KO_CONFIGS)}); "
                         "the memory plan needs d_model, layers, d_ff and vocabulary")
    return Shape(canonical, config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"],
                 vocab_size or config["vocab_size"])


@dataclass(frozen=True)
class Setup:
    """Where and how a run trains."""

    method: str = "lora"  # lora | full
    parallelism: str = "ddp"  # ddp | fsdp
    gpus_per_node: int = 1
    nodes: int = 1
    gpu_memory_gb: float = 80.0
    micro_batch_tokens: int = 16384
    gradient_checkpointing: bool = False
    lora_r: int = 16
    lora_targets: tuple[str, ...] = GPT_NEOX_LINEAR_MODULES
    compute_bytes: int = 2  # 2: bf16 (GPU); 4: fp32 (CPU)
    target_share: float = 1.0  # share of tokens that carry loss (the LM head runs only there)

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True)
class Estimate:
    """Per-GPU bytes of one rank, by part."""

    shape: Shape
    setup: Setup
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    workspace: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.workspace

    @property
    def fits(self) -> bool:
        return self.total <= self.setup.gpu_memory_gb * GB

    def describe(self) -> str:
        s = self.setup
        parts = ", ".join(f"{name} {getattr(self, name) / GB:.1f}" for name in
                          ("weights", "gradients", "optimizer", "activations", "logits", "workspace"))
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{self.shape.name} {s.method} {s.parallelism} on {s.nodes} node(s) x {s.gpus_per_node} GPU(s) "
                f"of {s.gpu_memory_gb:g} GB, {s.micro_batch_tokens} tokens/micro-batch, checkpointing "
                f"{'on' if s.gradient_checkpointing else 'off'}: {self.total / GB:.1f} GB per GPU ({parts}) "
                f"-> {verdict}")


def estimate(shape: Shape, setup: Setup) -> Estimate:
    """Per-GPU memory of one rank (see the module docstring for the accounting)."""
    if setup.method not in ("lora", "full") or setup.parallelism not in PARALLELISMS:
        raise ValueError(f"method {setup.method!r} / parallelism {setup.parallelism!r}: expected lora|full, ddp|fsdp")
    n = shape.params
    trainable = n if setup.method == "full" else shape.lora_params(setup.lora_r, setup.lora_targets)
    weight_bytes = 4 * n if setup.method == "full" else setup.compute_bytes * n + 4 * trainable
    grad_bytes, optim_bytes = 4 * trainable, 8 * trainable
    shard = setup.world_size if setup.parallelism == "fsdp" else 1
    weights, gradients, optimizer = weight_bytes / shard, grad_bytes / shard, optim_bytes / shard
    if shard > 1:  # the all-gathered compute copy of two blocks, and the full gradients of one
        weights += 2 * shape.block_params * setup.compute_bytes
        if setup.method == "full":
            gradients += shape.block_params * 4
    tokens, scale = setup.micro_batch_tokens, setup.compute_bytes / 2
    per_layer = ACT_BYTES_PER_HIDDEN * shape.hidden * tokens * scale
    if setup.gradient_checkpointing:
        activations = shape.layers * shape.hidden * tokens * setup.compute_bytes + per_layer
    else:
        activations = shape.layers * per_layer
    logits = (LOGIT_BYTES + (2 if setup.compute_bytes == 2 else 0)) * shape.vocab * tokens * setup.target_share
    tensors = weights + gradients + optimizer + activations + logits
    workspace = FRAGMENTATION * tensors + (RESERVE_GB * GB if setup.compute_bytes == 2 else 0)
    return Estimate(shape, setup, weights, gradients, optimizer, activations, logits, workspace)


def smallest_fitting(shape: Shape, setup: Setup, max_nodes: int = 8) -> Estimate | None:
    """The cheapest setup that fits, keeping method, GPU size and tokens per optimizer step.

    Order tried: fewer GPUs first; at each GPU count DDP before FSDP, checkpointing off before on;
    GPUs fill a node (up to `setup.gpus_per_node`, at least 8) before a second node is added.
    """
    per_node = max(setup.gpus_per_node, 8)
    counts = [g for g in (1, 2, 4, 8) if g <= per_node] + [per_node * k for k in range(2, max_nodes + 1)]
    for gpus in counts:
        nodes, gpus_per_node = (1, gpus) if gpus <= per_node else (gpus // per_node, per_node)
        for parallelism in PARALLELISMS:
            for checkpointing in (False, True):
                candidate = estimate(shape, replace(setup, parallelism=parallelism, gpus_per_node=gpus_per_node,
                                                    nodes=nodes, gradient_checkpointing=checkpointing))
                if candidate.fits:
                    return candidate
    return None


class DoesNotFit(RuntimeError):
    """The requested setup cannot hold the model; the message names the numbers and what would fit."""


def check_fits(shape: Shape, setup: Setup) -> Estimate:
    """The estimate of `setup`, or DoesNotFit naming its figures and the smallest setup that fits."""
    planned = estimate(shape, setup)
    if planned.fits:
        return planned
    better = smallest_fitting(shape, setup)
    hint = f"smallest setup that fits: {better.describe()}" if better else "nothing up to 8 nodes fits"
    raise DoesNotFit(f"memory plan: {planned.describe()}; {hint}")


def plan_report(shape: Shape, setup: Setup) -> str:
    """What `selfguided plan-training` prints: the requested setup under DDP and FSDP, and the
    smallest setup that fits."""
    lines = [f"{shape.name}: {shape.params / 1e9:.2f}B parameters"
             + (f", {shape.lora_params(setup.lora_r, setup.lora_targets) / 1e6:.1f}M LoRA (r={setup.lora_r})"
                if setup.method == "lora" else ""),
             f"requested: {setup.nodes} node(s) x {setup.gpus_per_node} GPU(s) of {setup.gpu_memory_gb:g} GB"]
    for parallelism in PARALLELISMS:
        for checkpointing in (False, True):
            lines.append("  " + estimate(shape, replace(setup, parallelism=parallelism,
                                                        gradient_checkpointing=checkpointing)).describe())
    better = smallest_fitting(shape, setup)
    lines.append(f"smallest setup that fits: {better.describe()}" if better else
                 "smallest setup that fits: none up to 8 nodes")
    return "\n".join(lines)


def shape_of(base_model: str) -> Shape | None:
    """The shape of a base as the finetune step names it: `tiny`, a Polyglot-ko size, or a local
    save_pretrained folder (its config.json); None for other hub ids (no plan, training goes ahead)."""
    import json
    from pathlib import Path

    config_file = Path(base_model).expanduser() / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        try:
            return Shape(base_model, config["hidden_size"], config["num_hidden_layers"],
                         config["intermediate_size"], config["vocab_size"])
        except KeyError:
            return None
    try:
        return model_shape(base_model)
    except ValueError:
        return None


def detect_gpu_memory_gb() -> float | None:
    """Memory of this process's GPU, None without one (then there is nothing to plan against)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory / GB


def plan_for_run(base_model: str, config: FinetuneConfig, gpus_per_node: int, nodes: int = 1,
                 gpu_memory_gb: float | None = None) -> Estimate | None:
    """The plan of a finetune run, checked: DoesNotFit (with the numbers and what would fit) when it
    cannot fit; None when there is no GPU or the base's shape is unknown. `parallelism: auto`
    resolves here: DDP when it fits, else FSDP; the returned estimate's setup says which."""
    shape = shape_of(base_model)
    if shape is None or gpu_memory_gb is None:
        return None
    setup = Setup(method=config.method, gpus_per_node=gpus_per_node, nodes=nodes, gpu_memory_gb=gpu_memory_gb,
                  micro_batch_tokens=config.micro_batch_tokens, gradient_checkpointing=config.gradient_checkpointing,
                  lora_r=config.lora_r, lora_targets=tuple(config.lora_target_modules),
                  compute_bytes=4 if config.precision == "fp32" else 2,
                  parallelism="ddp" if config.parallelism == "auto" else config.parallelism)
    if config.parallelism == "auto" and setup.world_size > 1 and not estimate(shape, setup).fits:
        setup = replace(setup, parallelism="fsdp")
    return check_fits(shape, setup)
