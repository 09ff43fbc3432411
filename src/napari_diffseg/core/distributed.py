"""torch.distributed glue: co-training under ``torchrun`` (DDP), gloo on CPU, NCCL on CUDA."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import choose_device

__all__ = ["DistInfo", "cleanup", "setup_from_env"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_from_env(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by ``torchrun`` (WORLD_SIZE > 1); else a single process.

    Each rank gets ``cuda:LOCAL_RANK`` when CUDA is used, otherwise the CPU with the gloo backend.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, choose_device(device))
    base = choose_device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
