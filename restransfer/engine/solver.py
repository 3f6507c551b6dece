"""Optimizer and learning-rate schedule from ``cfg.solver``: SGD with momentum, weight decay (optionally
different for norm and bias parameters), linear warmup, then step or cosine decay, in iterations."""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import nn

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "BatchLayout", "batch_layout"]

_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.SGD:
    """SGD over the trainable parameters, in groups by weight decay (norm layers, biases, the rest)."""
    s = cfg.solver
    wd_bias = s.weight_decay if s.weight_decay_bias is None else s.weight_decay_bias
    groups: Dict[float, List[nn.Parameter]] = {}
    seen = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORMS):
                wd = s.weight_decay_norm
            elif name == "bias":
                wd = wd_bias
            else:
                wd = s.weight_decay
            groups.setdefault(float(wd), []).append(p)
    param_groups = [{"params": ps, "weight_decay": wd} for wd, ps in sorted(groups.items())]
    if not param_groups:
        raise ValueError("the model has no trainable parameters (is everything frozen? check model.backbone.freeze_at)")
    return torch.optim.SGD(param_groups, lr=s.base_lr, momentum=s.momentum)


def lr_factor(iteration: int, *, max_iter: int, schedule: str = "step", steps: Sequence[int] = (), gamma: float = 0.1,
              warmup_iters: int = 0, warmup_factor: float = 0.001) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based)."""
    if schedule == "step":
        factor = gamma ** sum(1 for s in steps if iteration >= s)
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iter) / max(1, max_iter)))
    else:
        raise ValueError(f"solver.lr_schedule: {schedule!r} is not one of step, cosine")
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    s = cfg.solver
    steps = [int(x) for x in s.steps]
    kwargs = dict(max_iter=s.max_iter, schedule=s.lr_schedule, steps=steps, gamma=s.gamma,
                  warmup_iters=s.warmup_iters, warmup_factor=s.warmup_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, **kwargs))


class BatchLayout(NamedTuple):
    """How one optimizer step of ``total`` images is computed: ``processes`` x ``per_device`` images per
    forward/backward x ``accumulation`` micro-steps."""

    total: int
    processes: int
    per_device: int
    accumulation: int

    def describe(self) -> str:
        return (f"{self.total} images per step = {self.processes} process{'es' if self.processes > 1 else ''} x "
                f"{self.per_device} image{'s' if self.per_device > 1 else ''} x {self.accumulation} accumulation "
                f"step{'s' if self.accumulation > 1 else ''}")


def batch_layout(ims_per_batch: int, ims_per_device: Optional[int], world_size: int) -> BatchLayout:
    """Split ``solver.ims_per_batch`` images per optimizer step over ``world_size`` processes of
    ``solver.ims_per_device`` images (at most ``ims_per_batch / world_size``, the default) and gradient
    accumulation.

    Raises:
        ValueError: the numbers do not divide; the message names the three and a valid choice.
    """
    # ims_per_device is what one process may compute at once: with more processes than the config's
    # reference had, each computes its share of the step (ims_per_batch / processes) instead
    per_device = ims_per_batch // world_size
    if ims_per_device is not None:
        per_device = min(ims_per_device, per_device)
    if per_device < 1 or ims_per_batch % (world_size * per_device):
        divisors = [d for d in range(1, ims_per_batch + 1) if ims_per_batch % (world_size * d) == 0]
        if divisors:
            hint = f"set solver.ims_per_device to one of {', '.join(map(str, divisors))}"
        else:
            valid = [n for n in range(1, ims_per_batch + 1) if ims_per_batch % n == 0]
            hint = (f"run on a number of processes that divides it ({', '.join(map(str, valid))}) or set "
                    f"solver.ims_per_batch to a multiple of {world_size}")
        raise ValueError(f"solver.ims_per_batch={ims_per_batch} images per step cannot be split into {world_size} "
                         f"process(es) x solver.ims_per_device="
                         f"{ims_per_device if ims_per_device is not None else 'auto'} images x whole accumulation "
                         f"steps; {hint}")
    return BatchLayout(ims_per_batch, world_size, per_device, ims_per_batch // (world_size * per_device))
