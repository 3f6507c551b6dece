"""Feature layers in low precision, and the dtype and layout RoIAlign gets, by forward hooks.

:func:`set_inference_precision` (opt-in) runs the convolution trunk, the RPN 3x3 convolution, the box
head and the mask branch in bfloat16 (CPUs with AVX-512-BF16/AMX, GPUs) or float16 (GPUs); everything
that produces a score, a box offset or a proposal, and all box arithmetic, stays in float32, because
bfloat16 has only 8 significant bits (pixel coordinates near 1000 would move by 4 px). This is finer
than wrapping the model in ``torch.autocast``, under which torchvision decodes proposals in bfloat16;
the fused kernels (:mod:`restransfer.models.fused`) honour an enclosing CPU autocast all the same.

:func:`prepare_roi_features` hands RoIAlign float32 NCHW maps, converted once per image batch rather
than once per pooler (RoIAlign copies channels_last maps and needs float32 like its boxes), right after the
RPN has used them, in place of the originals.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import Tensor, nn

from ..devices import check_precision_support, precision_dtype

__all__ = ["prepare_roi_features", "set_inference_precision"]


def _cast_inputs(dtype: torch.dtype):
    def hook(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        x = args[0]
        return (x.to(dtype),) + tuple(args[1:]) if x.is_floating_point() else args

    return hook


def _cast_outputs(dtype: torch.dtype):
    def hook(module: nn.Module, args: Tuple[Any, ...], out: Any) -> Any:
        if isinstance(out, Tensor):
            return out.to(dtype)
        return type(out)(o.to(dtype) for o in out)

    return hook


def _roi_map(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A feature map as RoIAlign takes it: ``dtype`` (float32), NCHW-contiguous (itself when it already is)."""
    return x.to(dtype=dtype, memory_format=torch.contiguous_format)


def _roi_features(dtype: torch.dtype):
    """Pre-hook for ``RoIHeads``: float32, NCHW-contiguous feature maps, converted once for both the
    box and the mask pooler (RoIAlign copies channels_last maps and needs float32 like its boxes)."""

    def hook(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        feats = type(args[0])((k, _roi_map(v, dtype)) for k, v in args[0].items())
        return (feats,) + tuple(args[1:])

    return hook


def _convert_after_rpn(dtype: torch.dtype):
    """Forward hook for the RPN: the feature maps it was given are replaced, in the very dict the detector
    passes on to its RoI heads, by their float32 NCHW forms, one map at a time, so that each original is
    freed as its copy is made instead of living beside it until the RoI heads are done (whose pre-hook then
    finds them converted)."""

    def hook(module: nn.Module, args: Tuple[Any, ...], out: Any) -> None:
        feats = args[1] if len(args) > 1 else None
        if isinstance(feats, dict):
            for k in list(feats):
                feats[k] = _roi_map(feats[k], dtype)

    return hook


def prepare_roi_features(model: nn.Module) -> None:
    """Install the :func:`_roi_features` pre-hook on ``model.roi_heads`` and the :func:`_convert_after_rpn`
    hook on ``model.rpn`` (once; inference-only models: the RPN's maps are converted after it has run)."""
    if not getattr(model.roi_heads, "_restransfer_roi_hook", False):
        model.rpn.register_forward_hook(_convert_after_rpn(torch.float32))
        model.roi_heads.register_forward_pre_hook(_roi_features(torch.float32))
        model.roi_heads._restransfer_roi_hook = True


@torch.no_grad()
def set_inference_precision(model: nn.Module, precision: str) -> None:
    """Run the feature layers of a detector in ``precision`` (``"bf16"`` or ``"fp16"``), in place.

    Low precision: the backbone (+ FPN), the RPN's 3x3 convolution, the box head (two FCs or C4's res5)
    and the mask head and predictor. float32: the RPN objectness and box-delta convolutions, the box
    predictor, RoIAlign and all box decoding, NMS and mask pasting. Casts happen at those boundaries
    (forward hooks), so the detector's inputs and outputs stay float32.
    """
    dtype = precision_dtype(precision)
    if dtype == torch.float32:
        return
    param = next(model.parameters())
    check_precision_support(dtype, param.device)
    rh = model.roi_heads
    model.backbone.to(dtype)
    model.backbone.register_forward_pre_hook(_cast_inputs(dtype))
    model.rpn.head.conv.to(dtype)
    model.rpn.head.conv.register_forward_hook(_cast_outputs(torch.float32))
    prepare_roi_features(model)  # RoIAlign in float32 on the low-precision maps
    rh.box_head.to(dtype)
    rh.box_head.register_forward_pre_hook(_cast_inputs(dtype))
    rh.box_head.register_forward_hook(_cast_outputs(torch.float32))
    if rh.has_mask():
        rh.mask_head.to(dtype)
        rh.mask_predictor.to(dtype)
        rh.mask_head.register_forward_pre_hook(_cast_inputs(dtype))
        rh.mask_predictor.register_forward_hook(_cast_outputs(torch.float32))
