"""torch.distributed helpers. Processes are started by ``torchrun``, which sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; NCCL is used on GPUs and gloo on CPUs."""

from __future__ import annotations

import os
from typing import Any, List

import torch
import torch.distributed as dist

from .devices import resolve_device  # re-exported: the device policy lives in restransfer.devices

__all__ = [
    "init_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_gather_object",
    "gather_object",
    "resolve_device",
    "cleanup",
]


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: torch.device) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns whether distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """Gather a picklable object from every process (the list is ordered by rank).

    Only our own processes exchange these objects, over the process group of this run."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> List[Any]:
    """Every process's ``obj`` on process ``dst`` (a list ordered by rank); ``[]`` on the others. Unlike
    :func:`all_gather_object`, only one process receives everything (predictions of a large test set)."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out if get_rank() == dst else []


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
