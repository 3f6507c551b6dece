"""torch.distributed helpers. Processes are started by ``torchrun``, which sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; NCCL is used on GPUs and gloo on CPUs. Joining and leaving the
process group are here; the rank queries and object gathering (re-exported) are in
:mod:`restransfer.process_group`, which imports no torch."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .devices import resolve_device  # re-exported: the device policy lives in restransfer.devices
from .process_group import all_gather_object, barrier, gather_object, get_rank, get_world_size, is_main_process

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


def init_distributed(device: torch.device) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns whether distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
