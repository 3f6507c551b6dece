"""Normalization layers for the backbone, chosen by name.

``frozen_bn`` is torchvision's :class:`~torchvision.ops.FrozenBatchNorm2d`: a fixed per-channel affine
transform with no parameters and no statistics updates, in train mode too. It is the detection default
because detection batches (1-2 images per device) are too small for batch statistics.

Being affine, a frozen BatchNorm after a convolution can be applied through the convolution's weight
and bias: :func:`restransfer.backbone.folded.conv_norm` does so in training, :func:`fold_frozen_bn` once
and for all for inference.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["NORMS", "get_norm", "FrozenBatchNorm2d", "freeze_batchnorm", "frozen_bn_affine", "fold_frozen_bn"]

NORMS = ("frozen_bn", "bn", "syncbn", "gn")


def get_norm(norm: str, channels: int) -> nn.Module:
    """A normalization layer over ``channels`` channels; ``norm`` is one of :data:`NORMS`."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "syncbn":
        return nn.SyncBatchNorm(channels)
    if norm == "gn":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"norm={norm!r} is not supported; use one of {', '.join(NORMS)}")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (and SyncBatchNorm) inside ``module`` by a FrozenBatchNorm2d with the same
    affine parameters and statistics, so that a frozen stage stays frozen after ``.train()``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.running_mean is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def frozen_bn_affine(bn: FrozenBatchNorm2d) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)``, each (C,), with ``bn(x) = x * scale + shift`` per channel (torchvision's formula)."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fold_frozen_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> nn.Conv2d:
    """A convolution equal to ``bn(conv(x))`` for a frozen BatchNorm (inference speed-up)."""
    scale, shift = frozen_bn_affine(bn)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    fused = fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(bias * scale + shift)
    return fused
