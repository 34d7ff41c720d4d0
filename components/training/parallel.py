"""How a model is spread over the ranks of a torchrun job: the process group (`Distributed`).

World size 1 outside torchrun: every helper is then a no-op, so the loop reads the same either way.
"""

from __future__ import annotations

import os
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


def init_distributed(device_type: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, Gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))

