"""Convolution + frozen BatchNorm in training, with the BatchNorm folded into the convolution.

A FrozenBatchNorm2d is a fixed per-channel affine map, so ``bn(conv(x)) = conv(x, w * scale) + shift``.
:func:`conv_norm` computes the right-hand side in training, which gives the same function and the
same gradients (they reach ``conv.weight`` through the product) up to float rounding, and:

* no separate elementwise passes for the BatchNorm (two over every activation in the forward pass,
  one in the backward pass), and under CPU autocast no promotion of the bf16 convolution output to
  float32 by the float32 statistics;
* no extra memory: the convolution saves its weight for the backward pass, and a folded copy per layer
  would keep the size of the whole network alive until then (170 MB for ResNet-101 in float32); the
  parameter and the scale are kept instead and folded again when the gradient is computed
  (:func:`_refolded`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norms import FrozenBatchNorm2d, frozen_bn_affine

__all__ = ["conv_norm"]


_REFOLD = object()


@contextmanager
def _refolded(folded: Tensor, refold: Callable[[], Tensor], source: Tensor) -> Iterator[None]:
    """Ops run inside this context save a recipe instead of ``folded`` (or a view of it) for their backward
    pass, which calls ``refold()`` to make it again; ``source`` must not change in between."""
    # autograd keeps both hooks until the backward pass: they must not refer to ``folded`` itself
    device, storage, version = folded.device, folded.untyped_storage().data_ptr(), source._version

    def pack(t: Tensor):
        if t.device == device and t.untyped_storage().data_ptr() == storage:
            return _REFOLD, t.shape, t.stride(), t.storage_offset()
        return t

    def unpack(saved: Any):
        if not (isinstance(saved, tuple) and saved[0] is _REFOLD):
            return saved
        if source._version != version:
            raise RuntimeError(
                "a convolution weight was modified in place between the forward and the backward "
                "pass; update parameters after backward() (as optimizer.step() does)"
            )
        with torch.no_grad():
            return refold().as_strided(*saved[1:])

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def conv_norm(conv: nn.Module, norm: nn.Module, x: Tensor, fold: bool = True) -> Tensor:
    """``norm(conv(x))``; with ``fold``, a FrozenBatchNorm2d after a plain zero-padded ``nn.Conv2d`` is folded
    into the convolution (see the module docstring). ``x``: (B, Cin, H, W) -> (B, Cout, H', W')."""
    if not (
        fold
        and isinstance(norm, FrozenBatchNorm2d)
        and type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    ):
        return norm(conv(x))
    scale, shift = frozen_bn_affine(norm)
    source = conv.weight
    scale = scale.to(source.dtype)
    bias = (shift if conv.bias is None else conv.bias * scale + shift).to(source.dtype)

    def refold() -> Tensor:
        return source * scale.view(-1, 1, 1, 1)

    weight = refold()
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    # under torch.compile the compiler chooses what the backward pass keeps (and its graph has no room for
    # saved-tensor hooks: they would break it at every convolution)
    if not (torch.is_grad_enabled() and weight.requires_grad) or torch.compiler.is_compiling():
        return F.conv2d(x, weight, bias, *args)
    with _refolded(weight, refold, source):
        return F.conv2d(x, weight, bias, *args)
