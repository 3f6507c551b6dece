"""Fused inference layers: convolution + bias + residual add + ReLU as one kernel.

On CPU, :class:`FusedConv2d` runs the whole pattern as one oneDNN primitive
(``torch.ops.mkldnn._convolution_pointwise``, the kernel that ``torch.compile`` emits for the same
pattern), so the activation never takes a separate pass over memory. :func:`fuse_modules` rewrites
ResNet blocks whose BatchNorms were folded, ``(Conv2d, ReLU)`` pairs of the RPN/mask heads and the
two-FC box head (oneDNN linear + ReLU); torchvision's single-threaded ``MultiScaleRoIAlign`` becomes
:class:`~restransfer.models.roi_align.ParallelMultiScaleRoIAlign`. Elsewhere (CUDA, autograd, dtypes
or CPUs the kernels refuse) the same modules run the plain PyTorch ops, so fp32 results equal the
unfused model's up to float noise. The kernels are internal to PyTorch, so they are probed once per
process (and per dtype) instead of assumed.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from ..backbone.resnet import BasicBlock, Bottleneck
from .roi_align import ParallelMultiScaleRoIAlign

logger = logging.getLogger(__name__)

__all__ = ["onednn_fusion_available", "FusedConv2d", "FusedResidualBlock", "FusedTwoMLPHead", "fuse_modules"]

_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
_onednn_ok: Optional[bool] = None


def _onednn_ops_work() -> bool:
    """Run both fused-convolution kernels on a tiny input and compare with the plain ops.

    The oneDNN pointwise kernels are internal to PyTorch (they back ``torch.compile`` on CPU), so
    their presence and meaning are checked once per process instead of assumed.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    ops = getattr(torch.ops, "mkldnn", None)
    if ops is None or not hasattr(ops, "_convolution_pointwise") or not hasattr(ops, "_linear_pointwise"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 8, 7, 9, generator=g)
        w = torch.randn(16, 8, 3, 3, generator=g)
        b = torch.randn(16, generator=g)
        r = torch.randn(1, 16, 7, 9, generator=g)
        with torch.no_grad():
            ref = F.relu(F.conv2d(x, w, b, 1, 1) + r)
            out = ops._convolution_pointwise(x, r, w, b, [1, 1], [1, 1], [1, 1], 1, "add", None, "relu", [], "")
            ref2 = F.conv2d(x, w, b, 1, 1)
            out2 = ops._convolution_pointwise(x, w, b, [1, 1], [1, 1], [1, 1], 1, "none", [], "")
            xl, wl, bl = torch.randn(5, 12, generator=g), torch.randn(6, 12, generator=g), torch.randn(6, generator=g)
            ref3 = F.relu(F.linear(xl, wl, bl))
            out3 = ops._linear_pointwise(xl, wl, bl, "relu", [], "")
        return all(torch.allclose(o, e, rtol=1e-4, atol=1e-4) for o, e in ((out, ref), (out2, ref2), (out3, ref3)))
    except (RuntimeError, TypeError) as e:  # a build without these kernels or with another signature
        logger.info("oneDNN fused kernels unavailable (%s); using plain PyTorch ops", e)
        return False


def onednn_fusion_available() -> bool:
    """Whether this PyTorch build runs fused oneDNN convolution/linear kernels correctly (cached)."""
    global _onednn_ok
    if _onednn_ok is None:
        _onednn_ok = _onednn_ops_work()
    return _onednn_ok


def _cpu_autocast_dtype() -> Optional[torch.dtype]:
    """The CPU autocast dtype when autocast is on in this thread, else ``None``."""
    try:
        enabled = torch.is_autocast_enabled("cpu")
        return torch.get_autocast_dtype("cpu") if enabled else None
    except TypeError:  # PyTorch < 2.4
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


_residual_ok: Dict[Tuple[torch.dtype, bool], bool] = {}
_dtype_ok: Dict[torch.dtype, bool] = {}


def _fusion_works_in(dtype: torch.dtype) -> bool:
    """Whether the fused convolution kernel runs in ``dtype`` on this CPU (probed once per dtype): oneDNN's
    bf16 convolutions need AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT, and raise on other CPUs, where the plain
    ops (which PyTorch runs without oneDNN there) take over."""
    if dtype not in _dtype_ok:
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(1, 4, 5, 6, generator=g), torch.randn(8, 4, 3, 3, generator=g)
        try:
            with torch.no_grad():
                out = torch.ops.mkldnn._convolution_pointwise(
                    x.to(dtype), w.to(dtype), None, [1, 1], [1, 1], [1, 1], 1, "none", [], ""
                )
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            _dtype_ok[dtype] = bool(torch.allclose(out.float(), F.conv2d(x, w, None, 1, 1), rtol=tol, atol=tol))
        except RuntimeError as e:
            logger.info(
                "fused oneDNN convolutions do not run in %s here (%s); using plain PyTorch ops",
                dtype,
                str(e).splitlines()[0],
            )
            _dtype_ok[dtype] = False
    return _dtype_ok[dtype]


def _residual_fusion_works(dtype: torch.dtype, channels_last: bool) -> bool:
    """Whether the conv + add + ReLU kernel handles this dtype and layout (probed once each).

    Some combinations are routed to an ATen fallback that lacks them (bf16 in NCHW raises an
    internal assert in PyTorch 2.14); the caller then adds and rectifies in place instead.
    """
    key = (dtype, channels_last)
    if key not in _residual_ok:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 5, 6, generator=g).to(dtype).contiguous(memory_format=fmt)
        w = torch.randn(8, 4, 3, 3, generator=g).to(dtype).contiguous(memory_format=fmt)
        b = torch.randn(8, generator=g).to(dtype)
        r = torch.randn(1, 8, 5, 6, generator=g).to(dtype).contiguous(memory_format=fmt)
        try:
            with torch.no_grad():
                out = torch.ops.mkldnn._convolution_pointwise(
                    x, r, w, b, [1, 1], [1, 1], [1, 1], 1, "add", None, "relu", [], ""
                )
                ref = F.relu(F.conv2d(x.float(), w.float(), b.float(), 1, 1) + r.float())
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            _residual_ok[key] = bool(torch.allclose(out.float(), ref, rtol=tol, atol=tol))
        except RuntimeError:
            _residual_ok[key] = False
    return _residual_ok[key]


def _plain_inputs(*tensors: Tensor) -> bool:
    """True when the oneDNN path applies: CPU tensors of one oneDNN dtype, no autograd to record, no
    compiler tracing (it fuses the plain ops itself; the kernel probes would break its graph)."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    t0 = tensors[0]
    if t0.device.type != "cpu" or t0.dtype not in _ONEDNN_DTYPES:
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t.dtype != t0.dtype or t.device != t0.device or (grad and t.requires_grad):
            return False
    return onednn_fusion_available() and _fusion_works_in(t0.dtype)


class FusedConv2d(nn.Module):
    """``relu(conv(x) + bias [+ residual])`` as one kernel on CPU; the same math with plain ops elsewhere.

    Args:
        conv: the convolution (zero padding, numeric padding); its weight and bias are taken over.
        relu: apply ReLU at the end.

    ``forward(x, residual=None)``: ``x`` (B, Cin, H, W) -> (B, Cout, H', W'); ``residual`` has the
    output's shape.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool = False) -> None:
        super().__init__()
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FusedConv2d takes a plain zero-padded nn.Conv2d, got {conv}")
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride = list(conv.stride)
        self.padding = list(conv.padding)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.relu = relu
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size

    def _autocast_weights(self, x: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Under CPU autocast, the input and (cached) weights in the autocast dtype, as ``F.conv2d`` would
        get them; the fused kernel is invisible to autocast otherwise and would stay fp32."""
        w, b = self.weight, self.bias
        dtype = _cpu_autocast_dtype() if x.device.type == "cpu" else None
        if dtype is None or w.dtype == dtype or not w.is_floating_point():
            return x, w, b
        key = (dtype, w.device, w._version, None if b is None else b._version)
        if getattr(self, "_cast_key", None) != key:
            self._cast = (w.to(dtype), None if b is None else b.to(dtype))
            self._cast_key = key
        return x.to(dtype), self._cast[0], self._cast[1]

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        if torch.compiler.is_compiling():
            # under torch.compile the plain ops, which the compiler fuses itself (and autocasts when asked)
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            if residual is not None:
                y = y + residual
            return F.relu(y) if self.relu else y
        x, w, b = self._autocast_weights(x)
        if residual is not None and residual.dtype != x.dtype:
            residual = residual.to(x.dtype)
        tensors = (x, w) + ((b,) if b is not None else ()) + ((residual,) if residual is not None else ())
        if _plain_inputs(*tensors):
            unary = "relu" if self.relu else "none"
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, w, b, self.padding, self.stride, self.dilation, self.groups, unary, [], ""
                )
            if _residual_fusion_works(x.dtype, x.is_contiguous(memory_format=torch.channels_last)):
                return torch.ops.mkldnn._convolution_pointwise(
                    x,
                    residual,
                    w,
                    b,
                    self.padding,
                    self.stride,
                    self.dilation,
                    self.groups,
                    "add",
                    None,
                    unary if self.relu else None,
                    [],
                    "",
                )
            y = torch.ops.mkldnn._convolution_pointwise(
                x, w, b, self.padding, self.stride, self.dilation, self.groups, "none", [], ""
            )
            y.add_(residual)  # y is fresh: in place costs no allocation
            return F.relu_(y) if self.relu else y
        y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y = y + residual
        return F.relu_(y) if self.relu else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
            f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, relu={self.relu}"
        )


class FusedResidualBlock(nn.Module):
    """A ResNet basic or bottleneck block whose BatchNorms were folded: every convolution carries its
    ReLU, and the last one also the shortcut addition. Input/output as the block's."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        names = [conv for conv, _ in block.conv_bn_pairs]
        self.convs = nn.ModuleList(FusedConv2d(getattr(block, n), relu=True) for n in names[:-1])
        self.last = FusedConv2d(getattr(block, names[-1]), relu=True)
        self.downsample = FusedConv2d(block.downsample[0]) if block.downsample is not None else None
        self.residual = bool(block.residual)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for conv in self.convs:
            out = conv(out)
        if not self.residual:
            return self.last(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.last(out, shortcut)


class FusedTwoMLPHead(nn.Module):
    """torchvision's ``TwoMLPHead`` (flatten, fc6 + ReLU, fc7 + ReLU) with oneDNN linear + ReLU kernels on
    CPU (MKL's fp32 GEMM is slow on AMD CPUs; oneDNN's is not). ``(R, C, S, S)`` -> ``(R, representation)``."""

    def __init__(self, head: TwoMLPHead) -> None:
        super().__init__()
        self.fc6, self.fc7 = head.fc6, head.fc7

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        for fc in (self.fc6, self.fc7):
            if _plain_inputs(x, fc.weight, fc.bias):
                x = torch.ops.mkldnn._linear_pointwise(x, fc.weight, fc.bias, "relu", [], "")
            else:
                x = F.relu(fc(x))
        return x


def _folded(block: nn.Module) -> bool:
    return all(isinstance(getattr(block, bn), nn.Identity) for _, bn in block.conv_bn_pairs) and (
        block.downsample is None or isinstance(block.downsample[1], nn.Identity)
    )


def _fusable_conv(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)


@torch.no_grad()
def fuse_modules(model: nn.Module) -> int:
    """Rewrite, in place, the layers of ``model`` that have a fused form; returns how many were rewritten.

    * ResNet blocks whose BatchNorms are folded -> :class:`FusedResidualBlock` (GroupNorm or trainable
      BN blocks are left alone);
    * ``(Conv2d, ReLU)`` neighbours inside any ``nn.Sequential`` (RPN head, FPN mask head) ->
      ``(FusedConv2d(relu=True), Identity)``;
    * torchvision's ``TwoMLPHead`` -> :class:`FusedTwoMLPHead`;
    * ``MultiScaleRoIAlign`` -> :class:`ParallelMultiScaleRoIAlign`.

    Inference only: the fused kernels have no backward.
    """
    count = 0
    for name, m in list(model.named_modules()):
        if isinstance(m, (BasicBlock, Bottleneck)) and _folded(m):
            _set_child(model, name, FusedResidualBlock(m))
            count += 1
        elif type(m) is TwoMLPHead:
            _set_child(model, name, FusedTwoMLPHead(m))
            count += 1
        elif type(m) is MultiScaleRoIAlign:
            _set_child(model, name, ParallelMultiScaleRoIAlign.from_module(m))
            count += 1
        elif isinstance(m, nn.Sequential):
            children = list(m.children())
            for i in range(len(children) - 1):
                if _fusable_conv(children[i]) and type(children[i + 1]) is nn.ReLU:
                    m[i] = FusedConv2d(children[i], relu=True)
                    m[i + 1] = nn.Identity()
                    count += 1
    return count
