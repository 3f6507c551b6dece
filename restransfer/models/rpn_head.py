"""torchvision's RPN head with a backward pass that follows where its gradient is.

In training the RPN's losses read only the sampled anchors (``rpn.batch_size_per_image``, 256 per image)
and the proposals are taken from detached scores, so the gradient of the head's outputs is zero at all
but a few hundred feature-map positions (159 of the 54,400 positions of P2 in an R101-FPN step on an
800 x 1067 image). The plain backward pass of the head's 3 x 3 convolution still runs dense over every
level, which on CPU costs about as much as its forward pass, the largest convolution of the network.

:class:`RPNHead` computes the same outputs as torchvision's (same modules, parameter names and state
dict, same ops in the forward pass) and, in training on CPU, a backward pass on those positions only:
their 3 x 3 input neighbourhoods are gathered (``K x 9C``), the convolution and ReLU are recomputed
there, and every gradient follows from a handful of ``K``-row matrix products. The gradients equal the
dense ones up to float rounding; where the gradient is not sparse (other losses), the backward pass
recomputes the head densely. It also keeps only the input of each level for backward, not the
``C x H x W`` ReLU output. Levels too small for this to pay (fewer than 9 positions per sampled anchor)
keep torchvision's backward pass.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.rpn import RPNHead as TorchvisionRPNHead

__all__ = ["RPNHead"]

# The sparse backward gathers K x 9C input values; past this many it recomputes the head densely.
_MAX_GATHERED = 1 << 23


def _dense_grads(
    x: Tensor, params: Tuple[Tensor, ...], grads: Tuple[Optional[Tensor], Optional[Tensor]], needs: Tuple[bool, ...]
) -> List[Optional[Tensor]]:
    """All gradients by recomputing the head with autograd (for gradients that are not sparse)."""
    inputs = [x.detach().requires_grad_(needs[0])] + [p.detach().requires_grad_(n) for p, n in zip(params, needs[1:])]
    with torch.enable_grad():
        outputs = _head(*inputs)
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None]
    wanted = [t for t in inputs if t.requires_grad]
    found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
    return [next(found) if t.requires_grad else None for t in inputs]


def _head(x: Tensor, w: Tensor, b: Tensor, wc: Tensor, bc: Tensor, wd: Tensor, bd: Tensor) -> Tuple[Tensor, Tensor]:
    t = F.relu_(F.conv2d(x, w, b, padding=1))
    return F.conv2d(t, wc, bc), F.conv2d(t, wd, bd)


def _sparse_grads(
    x: Tensor, params: Tuple[Tensor, ...], grads: Tuple[Optional[Tensor], Optional[Tensor]], positions: Tensor
) -> List[Optional[Tensor]]:
    """Gradients of the head when ``grads`` are zero outside ``positions`` (K, 3) = (image, y, x)."""
    w, b, wc, bc, wd, bd = (p.float() for p in params)
    n, c, h, wd_ = x.shape
    k = len(positions)
    img, y, col = positions.unbind(1)
    offsets = torch.arange(-1, 2, device=x.device)
    ys, xs = y[:, None] + offsets, col[:, None] + offsets  # (K, 3) rows and columns of each neighbourhood
    inside = (((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < wd_))[:, None, :])[..., None]  # zero padding
    ys, xs = ys.clamp(0, h - 1)[:, :, None], xs.clamp(0, wd_ - 1)[:, None, :]
    cols = x[img[:, None, None], :, ys, xs].float() * inside  # (K, 3, 3, C)
    cols = cols.permute(0, 3, 1, 2).reshape(k, c * 9)  # the weight's (C, 3, 3) order
    pre = torch.addmm(b, cols, w.reshape(len(w), -1).t())  # (K, C') before the ReLU
    t = pre.clamp(min=0)
    # each output's gradient at the positions, through its 1 x 1 convolution (an output without one adds nothing)
    g_out = [None if g is None else g[img, :, y, col].float() for g in grads]
    g_t = sum(g @ wo.reshape(len(wo), -1) for g, wo in zip(g_out, (wc, wd)) if g is not None)
    g_pre = g_t * (pre > 0)
    g_cols = (g_pre @ w.reshape(len(w), -1)).view(k, c, 3, 3).permute(0, 2, 3, 1) * inside  # (K, 3, 3, C)
    g_x = torch.zeros_like(x, dtype=torch.float32, memory_format=torch.contiguous_format)
    flat = g_x.view(n, c, h * wd_)
    where = ys * wd_ + xs  # (K, 3, 3) positions in each image's map
    for i in img.unique().tolist():  # rows of an image's (H*W, C) view: index_add_ is far faster than index_put_
        mine = img == i
        flat[i].t().index_add_(0, where[mine].reshape(-1), g_cols[mine].reshape(-1, c))
    out = [g_x, (g_pre.t() @ cols).view_as(w), g_pre.sum(0)]
    for g, wo in zip(g_out, (wc, wd)):  # an output without gradient leaves its layer without one, as usual
        out += [None, None] if g is None else [(g.t() @ t).view_as(wo), g.sum(0)]
    return [None if o is None else o.to(ref.dtype) for o, ref in zip(out, (x,) + params)]


class _SparseBackwardHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, *params: Tensor) -> Tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        ctx.autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
        ctx.save_for_backward(x, *params)
        return _head(x, *params)

    @staticmethod
    def backward(ctx: Any, g_cls: Optional[Tensor], g_box: Optional[Tensor]):
        x, *params = ctx.saved_tensors
        grads = (g_cls, g_box)
        nonzero = [(g != 0).any(1) for g in grads if g is not None]
        if not nonzero:
            return (None,) * (1 + len(params))
        positions = torch.stack(nonzero).any(0).nonzero()
        if len(positions) * 9 * x.shape[1] > _MAX_GATHERED:
            with torch.autocast("cpu", dtype=ctx.autocast[1], enabled=ctx.autocast[0]):
                result = _dense_grads(x, tuple(params), grads, ctx.needs_input_grad)
        else:
            result = _sparse_grads(x, tuple(params), grads, positions)
        return tuple(r if need else None for r, need in zip(result, ctx.needs_input_grad))


class RPNHead(TorchvisionRPNHead):
    """torchvision's ``RPNHead`` (same modules and outputs) whose backward pass in CPU training works on the
    positions where the gradient is not zero (see the module docstring).

    ``sampled_per_image``: the RPN's sampled anchors per image (``rpn.batch_size_per_image``). A level takes
    the sparse backward pass when its map has more than 9 positions per sampled anchor (each sampled
    position costs a 3 x 3 neighbourhood); smaller maps, where the dense pass costs no more, keep
    torchvision's. ``forward(x)``: list of (N, C, H, W) feature maps -> (objectness logits (N, A, H, W) per
    level, box deltas (N, 4A, H, W) per level).
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1, sampled_per_image: int = 256) -> None:
        super().__init__(in_channels, num_anchors, conv_depth)
        self.sampled_per_image = sampled_per_image

    def _standard(self) -> bool:
        """One 3 x 3 convolution (stride 1, padding 1, with bias) + ReLU, as torchvision builds it."""
        if len(self.conv) != 1 or len(self.conv[0]) != 2 or type(self.conv[0][1]) is not nn.ReLU:
            return False
        conv = self.conv[0][0]
        return (
            type(conv) is nn.Conv2d
            and conv.bias is not None
            and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1)
            and conv.padding == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and all(m.bias is not None for m in (self.cls_logits, self.bbox_pred))
        )

    def forward(self, x: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        if (
            torch.jit.is_scripting()
            or torch.jit.is_tracing()
            or not torch.is_grad_enabled()
            or not x
            or x[0].device.type != "cpu"
            or not self._standard()
        ):
            return super().forward(x)
        params = [p for m in (self.conv[0][0], self.cls_logits, self.bbox_pred) for p in (m.weight, m.bias)]
        if not any(t.requires_grad for t in params + list(x)):
            return super().forward(x)
        logits, deltas = [], []
        for feature in x:
            if feature.shape[-2] * feature.shape[-1] > 9 * self.sampled_per_image:
                cls, box = _SparseBackwardHead.apply(feature, *params)
            else:
                t = self.conv(feature)
                cls, box = self.cls_logits(t), self.bbox_pred(t)
            logits.append(cls)
            deltas.append(box)
        return logits, deltas
