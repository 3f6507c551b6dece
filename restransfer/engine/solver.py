"""Optimizer and learning-rate schedule from ``cfg.solver``: SGD with momentum, weight decay (optionally
different for norm and bias parameters), linear warmup, then step or cosine decay, in iterations. The batch
layout (:func:`~restransfer.data.samplers.batch_layout`) lives with the samplers and is re-exported here."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from ..data.samplers import BatchLayout, batch_layout  # noqa: F401 (re-exported: training sizes its steps by it)
from ..errors import ConfigError

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "BatchLayout", "batch_layout"]

_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.SGD:
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
        raise ConfigError(
            "the model has no trainable parameters (is everything frozen? check model.backbone.freeze_at)"
        )
    return torch.optim.SGD(param_groups, lr=s.base_lr, momentum=s.momentum)


def lr_factor(
    iteration: int,
    *,
    max_iter: int,
    schedule: str = "step",
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based)."""
    if schedule == "step":
        factor = gamma ** sum(1 for s in steps if iteration >= s)
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iter) / max(1, max_iter)))
    else:
        raise ConfigError(f"solver.lr_schedule: {schedule!r} is not one of step, cosine")
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    s = cfg.solver
    steps = [int(x) for x in s.steps]
    kwargs = dict(
        max_iter=s.max_iter,
        schedule=s.lr_schedule,
        steps=steps,
        gamma=s.gamma,
        warmup_iters=s.warmup_iters,
        warmup_factor=s.warmup_factor,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, **kwargs))
