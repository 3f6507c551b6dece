"""Which process of the run this is, and moving picklable objects between the run's processes.

A process group exists only in a process that has imported ``torch.distributed`` and joined it
(:func:`restransfer.distributed.init_distributed`). These functions therefore look for ``torch.distributed``
among the imported modules instead of importing it: in a process without a group (evaluating a results file,
parsing a command line) they answer "one process, rank 0" without importing torch, and in a run's processes
they ask the group. :mod:`restransfer.distributed` re-exports them beside joining and leaving the group.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional

__all__ = ["get_rank", "get_world_size", "is_main_process", "barrier", "all_gather_object", "gather_object"]


def _group() -> Optional[Any]:
    """``torch.distributed`` when this process has joined a process group, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def get_world_size() -> int:
    dist = _group()
    return dist.get_world_size() if dist is not None else 1


def get_rank() -> int:
    dist = _group()
    return dist.get_rank() if dist is not None else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    dist = _group()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """Gather a picklable object from every process (the list is ordered by rank).

    Only our own processes exchange these objects, over the process group of this run."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> List[Any]:
    """Every process's ``obj`` on process ``dst`` (a list ordered by rank); ``[]`` on the others. Unlike
    :func:`all_gather_object`, only one process receives everything (predictions of a large test set)."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return [obj]
    rank = dist.get_rank()
    out: Optional[List[Any]] = [None] * dist.get_world_size() if rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out if rank == dst else []
