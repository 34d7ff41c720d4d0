"""How a model is spread over the ranks of a torchrun job: the process group (`Distributed`), DDP or
FSDP2 (`wrap_model`), gradient accumulation without a reduction per micro-batch (`gradient_sync`),
and the gathered full weights for the Model artifact (`full_state_dict`).

World size 1 outside torchrun: every helper is then a no-op, so the loop reads the same either way.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


class GpusMissing(RuntimeError):
    """The pod was asked to train on GPUs it does not have."""


def require_gpus(asked: int) -> int:
    """Refuse to train on the CPU when `asked` GPUs were asked for and fewer are visible: on a cluster
    that is a pod that got no `nvidia.com/gpu` limit (or a node without the device plugin), where
    training would otherwise run quietly on a few CPU cores for hours. Returns the visible count."""
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if asked > seen:
        pod = os.environ.get("HOSTNAME", "this process")
        raise GpusMissing(
            f"pod {pod} was asked to train on {asked} GPU(s) but sees {seen}: refusing to train on the CPU. "
            f"Check the pod's GPU limit (kubectl get pod {pod} -o jsonpath='{{.spec.containers[*].resources}}'), "
            f"that the node runs the NVIDIA device plugin, and CUDA_VISIBLE_DEVICES "
            f"({os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); num_gpus=0 trains on the CPU on purpose")
    return seen


def init_distributed(device_type: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, Gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))



def transformer_blocks(model) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (peft-wrapped or not): the modules whose class
    the model names in `_no_split_modules` (GPTNeoXLayer for GPT-NeoX)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(inner).__name__} names no transformer block class (_no_split_modules); "
                         "FSDP needs one to shard per block")
    return blocks


def wrap_model(model, parallelism: str, distributed: Distributed, device: torch.device, precision: str):
    """The model as the loop drives it: itself on one rank; DDP, or FSDP2 sharded per block and at
    the root, on several.

    FSDP2 keeps each rank's shard of the fp32 (or, for a frozen LoRA base, bf16) parameters, gathers
    a block's full weights just before it runs and frees them after; gradients are reduce-scattered.
    With bf16 the gathered copy is bf16 and the reduction fp32 (MixedPrecisionPolicy); on CPUs (gloo)
    everything stays fp32. Frozen parameters (the LoRA base) are sharded the same way and get no
    gradient, so LoRA under FSDP trains the adapters on a base split over the ranks.
    """
    if distributed.world_size == 1:
        return model
    if parallelism == "ddp":
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if parallelism != "fsdp":
        raise ValueError(f"parallelism {parallelism!r}: expected ddp or fsdp once resolved")
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if precision == "bf16" else MixedPrecisionPolicy())
    for block in transformer_blocks(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_fsdp(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gradient_sync(model, enabled: bool):
    """Skip the gradient reduction on all but the last micro-batch of a step (accumulate locally)."""
    if enabled or distributed_world_size() == 1:
        yield
    elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def distributed_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def unwrap(model):
    """The module whose parameter names are the model's own (DDP adds a `module.` prefix)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def full_state_dict(model, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Every rank calls this (a collective under FSDP); rank 0 gets the whole, unsharded weights on
    the CPU (others get what DCP gives them), ready for save_pretrained(state_dict=...)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(unwrap(model), options=options)
