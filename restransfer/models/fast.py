"""Inference fast paths for :class:`~restransfer.models.Detector`.

:meth:`Detector.optimize_for_inference` applies these after folding frozen BatchNorms into the
convolutions. Each one keeps fp32 results equal up to float noise:

* **Fused convolutions** (:class:`FusedConv2d`): on CPU, convolution + bias + residual add + ReLU run
  as one oneDNN primitive (``torch.ops.mkldnn._convolution_pointwise``, the kernel that
  ``torch.compile`` emits for the same pattern), so the activation never takes a separate pass over
  memory. ResNet blocks, ``(Conv2d, ReLU)`` pairs of the RPN/mask heads and the two-FC box head
  (oneDNN linear + ReLU) are rewritten. Elsewhere (CUDA, autograd, other dtypes) the same modules run
  the plain PyTorch ops.
* **Parallel RoIAlign** (:class:`~restransfer.models.roi_align.ParallelMultiScaleRoIAlign`, which
  :func:`~restransfer.models.build_model` already uses for training): torchvision's CPU kernel is
  single-threaded; the RoIs are split over the intra-op threads.
* **channels_last** activations, which oneDNN and cuDNN convolve without reordering; RoIAlign wants
  NCHW, so the pooled feature maps are made contiguous once per image batch, not once per pooler.
* **Mask pasting** into one preallocated ``(N, 1, H, W)`` tensor instead of N full-image tensors that
  torchvision stacks afterwards (:class:`FastDetectionTransform`). The Predictor and evaluation go
  further (:func:`deferred_mask_paste`, :func:`detection_masks`): they take the low-resolution mask
  probabilities and paste binary masks one box at a time, as bool arrays or straight to COCO RLE
  (:func:`paste_masks_binary`), so no full-image float mask exists.
* **Low precision** (:func:`set_inference_precision`, opt-in): the convolution trunk, the RPN 3x3
  convolution, the box head and the mask branch run in bfloat16 (CPUs with AVX-512-BF16/AMX, GPUs) or
  float16 (GPUs); everything that produces a score, a box offset or a proposal, and all box
  arithmetic, stays in float32, because bfloat16 has only 8 significant bits (pixel coordinates near
  1000 would move by 4 px). This is finer than wrapping the model in ``torch.autocast``, under which
  torchvision decodes proposals in bfloat16; the fused kernels honour an enclosing CPU autocast all
  the same (they cast like ``F.conv2d`` would).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import resize_boxes

from ..backbone.resnet import BasicBlock, Bottleneck
from ..devices import PRECISIONS, check_precision_support, native_bf16, precision_dtype  # noqa: F401 (re-exported)
from ..rle import encode_masks, encode_patch
from .roi_align import ParallelMultiScaleRoIAlign
from .transform import DetectionTransform

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "onednn_fusion_available",
    "FusedConv2d",
    "FusedResidualBlock",
    "FusedTwoMLPHead",
    "ParallelMultiScaleRoIAlign",
    "FastDetectionTransform",
    "paste_masks",
    "paste_masks_binary",
    "detection_masks",
    "deferred_mask_paste",
    "MASK_FORMATS",
    "check_mask_format",
    "prepare_roi_features",
    "fuse_modules",
    "use_fast_postprocess",
    "set_inference_precision",
    "precision_dtype",
    "check_precision_support",
    "native_bf16",
    "inference_kwargs",
]

_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
_onednn_ok: Optional[bool] = None


def inference_kwargs(cfg) -> Dict[str, Any]:
    """Keyword arguments of :meth:`Detector.optimize_for_inference` from ``cfg.test``.

    ``test.optimize: false`` turns off BN folding, fusion and channels_last (the model then runs the
    same code as torchvision's); ``test.precision`` applies either way.
    """
    t = cfg.test
    opt = bool(t.optimize)
    return dict(fold_bn=opt, fuse=opt, channels_last=opt, precision=str(t.precision))


# ----------------------------------------------------------------------------------- fused layers


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
                out = torch.ops.mkldnn._convolution_pointwise(x.to(dtype), w.to(dtype), None, [1, 1], [1, 1],
                                                              [1, 1], 1, "none", [], "")
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            _dtype_ok[dtype] = bool(torch.allclose(out.float(), F.conv2d(x, w, None, 1, 1), rtol=tol, atol=tol))
        except RuntimeError as e:
            logger.info("fused oneDNN convolutions do not run in %s here (%s); using plain PyTorch ops", dtype,
                        str(e).splitlines()[0])
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
                out = torch.ops.mkldnn._convolution_pointwise(x, r, w, b, [1, 1], [1, 1], [1, 1], 1, "add", None,
                                                              "relu", [], "")
                ref = F.relu(F.conv2d(x.float(), w.float(), b.float(), 1, 1) + r.float())
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            _residual_ok[key] = bool(torch.allclose(out.float(), ref, rtol=tol, atol=tol))
        except RuntimeError:
            _residual_ok[key] = False
    return _residual_ok[key]


def _plain_inputs(*tensors: Tensor) -> bool:
    """True when the oneDNN path applies: CPU tensors of one oneDNN dtype, no autograd to record."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
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
        x, w, b = self._autocast_weights(x)
        if residual is not None and residual.dtype != x.dtype:
            residual = residual.to(x.dtype)
        tensors = (x, w) + ((b,) if b is not None else ()) + ((residual,) if residual is not None else ())
        if _plain_inputs(*tensors):
            unary = "relu" if self.relu else "none"
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(x, w, b, self.padding, self.stride, self.dilation,
                                                              self.groups, unary, [], "")
            if _residual_fusion_works(x.dtype, x.is_contiguous(memory_format=torch.channels_last)):
                return torch.ops.mkldnn._convolution_pointwise(x, residual, w, b, self.padding, self.stride,
                                                              self.dilation, self.groups, "add", None,
                                                              unary if self.relu else None, [], "")
            y = torch.ops.mkldnn._convolution_pointwise(x, w, b, self.padding, self.stride, self.dilation,
                                                       self.groups, "none", [], "")
            y.add_(residual)  # y is fresh: in place costs no allocation
            return F.relu_(y) if self.relu else y
        y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y = y + residual
        return F.relu_(y) if self.relu else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
                f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, relu={self.relu}")


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
        block.downsample is None or isinstance(block.downsample[1], nn.Identity))


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


# ------------------------------------------------------------------------------- post-processing


MASK_FORMATS = ("bool", "rle")


def check_mask_format(format: str) -> str:
    """``format`` if it is one of :data:`MASK_FORMATS`, else a ValueError naming the valid ones."""
    if format not in MASK_FORMATS:
        raise ValueError(f"mask format must be one of {', '.join(map(repr, MASK_FORMATS))}, got {format!r}")
    return format


def _box_patches(masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int], padding: int,
                 threshold: Optional[float] = None) -> Iterator[Tuple[int, int, int, Tensor]]:
    """For each detection whose pasted mask meets the image: ``(index, top, left, patch)``, where ``patch``
    is the part inside the image of its mask resized to the integer box exactly as torchvision's
    ``paste_masks_in_image`` computes it (1-pixel padding, box expansion, bilinear resize), as float
    probabilities or, with ``threshold``, as bool ``patch > threshold``. Float memory is one box at a time.
    """
    im_h, im_w = int(image_shape[0]), int(image_shape[1])
    padded, scale = expand_masks(masks, padding=padding)
    # one host transfer for all boxes instead of several scalar reads per box
    for i, (x0, y0, x1, y1) in enumerate(expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, im_w), max(y0, 0), min(y1 + 1, im_h)
        if xb <= xa or yb <= ya:
            continue
        resized = F.interpolate(padded[i:i + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        patch = resized[ya - y0:yb - y0, xa - x0:xb - x0]
        del resized
        if threshold is not None:
            patch = patch > threshold  # the box-sized float result is freed here
        yield i, ya, xa, patch
        del patch


def paste_masks(masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int], padding: int = 1) -> Tensor:
    """Paste per-box mask probabilities into full images, exactly as torchvision's
    ``paste_masks_in_image`` (1-pixel padding, box expansion, bilinear resize to the integer box size),
    but into one preallocated output.

    Args:
        masks: (N, 1, M, M) probabilities.
        boxes: (N, 4) float xyxy in pixels of the output image.
        image_shape: (H, W) of the output image.

    Returns:
        (N, 1, H, W) probabilities, zero outside each box. This is 4 bytes per pixel and detection: for
        binary masks use :func:`paste_masks_binary`, which never holds them.
    """
    out = masks.new_zeros((masks.shape[0], 1, int(image_shape[0]), int(image_shape[1])))
    for i, top, left, patch in _box_patches(masks, boxes, image_shape, padding):
        out[i, 0, top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    return out


def paste_masks_binary(masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int], threshold: float = 0.5,
                       format: str = "bool", padding: int = 1) -> Union[np.ndarray, List[Dict[str, Any]]]:
    """``paste_masks(masks, boxes, image_shape) > threshold``, without the float images.

    Each detection's mask is resized and thresholded inside its box only, then written into the
    output, so memory is the output plus one box of floats.

    Args:
        masks: (N, 1, M, M) probabilities (any device).
        boxes: (N, 4) float xyxy in pixels of the output image.
        image_shape: (H, W) of the output image.
        threshold: a pixel is on when its probability is > ``threshold``.
        format: ``"bool"``: a numpy bool (N, H, W) array; ``"rle"``: N COCO RLE dicts
            ``{"size": [H, W], "counts": str}`` (pycocotools' compressed format, json-ready), encoded from
            the box alone, so memory no longer grows with H x W x N.
    """
    check_mask_format(format)
    im_h, im_w = int(image_shape[0]), int(image_shape[1])
    n = int(masks.shape[0])
    if format == "bool":
        dense = np.zeros((n, im_h, im_w), dtype=bool)
        for i, top, left, patch in _box_patches(masks, boxes, image_shape, padding, threshold):
            dense[i, top:top + patch.shape[0], left:left + patch.shape[1]] = patch.cpu().numpy()
        return dense
    empty = encode_patch(np.zeros((0, 0), dtype=bool), 0, 0, (im_h, im_w))["counts"]
    rles = [{"size": [im_h, im_w], "counts": empty} for _ in range(n)]  # for boxes that miss the image
    for i, top, left, patch in _box_patches(masks, boxes, image_shape, padding, threshold):
        rles[i] = encode_patch(patch.cpu().numpy(), top, left, (im_h, im_w))
    return rles


def detection_masks(output: Dict[str, Tensor], image_shape: Tuple[int, int], threshold: float = 0.5,
                    format: str = "bool", keep: Optional[Tensor] = None) -> Union[np.ndarray, List[Dict[str, Any]]]:
    """Binary masks of one image's detector output, in ``format`` (see :func:`paste_masks_binary`).

    ``output`` holds either ``"mask_probs"`` (N, 1, M, M) with ``"boxes"`` in image pixels, as a model
    returns them inside :func:`deferred_mask_paste` (pasted here, one box at a time), or torchvision's
    full-image ``"masks"`` (N, 1, H, W) probabilities (thresholded here). ``keep`` selects detections
    (a bool mask or indices over N).
    """
    check_mask_format(format)
    if "mask_probs" in output:
        probs, boxes = output["mask_probs"], output["boxes"]
        if keep is not None:
            probs, boxes = probs[keep], boxes[keep]
        return paste_masks_binary(probs, boxes, image_shape, threshold, format)
    masks = output["masks"]
    if keep is not None:
        masks = masks[keep]
    if format == "rle":
        return encode_masks(masks, threshold)
    return (masks[:, 0] > threshold).cpu().numpy()


class FastDetectionTransform(DetectionTransform):
    """:class:`DetectionTransform` whose inference post-processing pastes masks with :func:`paste_masks`.
    Same outputs; installed on a model by :func:`use_fast_postprocess`.

    Inside :func:`deferred_mask_paste` it pastes nothing: each output keeps the (N, 1, M, M) mask
    probabilities as ``"mask_probs"`` (and no ``"masks"``), for :func:`detection_masks`.
    """

    defer_mask_paste = False

    def postprocess(self, result: List[Dict[str, Tensor]], image_shapes: List[Tuple[int, int]],
                    original_image_sizes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        if self.training:
            return result
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            if "masks" in pred:
                if self.defer_mask_paste:
                    pred["mask_probs"] = pred.pop("masks")
                else:
                    pred["masks"] = paste_masks(pred["masks"], pred["boxes"], o_im_s)
        return result


def use_fast_postprocess(model: nn.Module) -> None:
    """Switch ``model.transform`` (a :class:`DetectionTransform`) to :class:`FastDetectionTransform`.

    The class is swapped in place (the pattern ``torch.nn.utils.parametrize`` uses): the subclass adds
    no state, so the module keeps its sizes and statistics.
    """
    if type(model.transform) is DetectionTransform:
        model.transform.__class__ = FastDetectionTransform


@contextlib.contextmanager
def deferred_mask_paste(model: nn.Module) -> Iterator[bool]:
    """Within this context, ``model(images)`` returns low-resolution ``"mask_probs"`` instead of pasted
    full-image ``"masks"``; :func:`detection_masks` then pastes binary masks one box at a time.

    Yields whether the model defers (its transform is a :class:`DetectionTransform`); a model with another
    transform keeps returning ``"masks"``, which :func:`detection_masks` accepts too. The model is
    restored on exit, so calls outside the context keep torchvision's output contract.
    """
    transform = getattr(model, "transform", None)
    if type(transform) not in (DetectionTransform, FastDetectionTransform):
        yield False
        return
    cls, had_flag = type(transform), "defer_mask_paste" in vars(transform)
    flag = vars(transform).get("defer_mask_paste")
    transform.__class__ = FastDetectionTransform
    transform.defer_mask_paste = True
    try:
        yield True
    finally:
        transform.__class__ = cls
        if had_flag:
            transform.defer_mask_paste = flag
        else:
            del transform.defer_mask_paste


# -------------------------------------------------------------------------------- RoI features


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


def _roi_features(dtype: torch.dtype):
    """Pre-hook for ``RoIHeads``: float32, NCHW-contiguous feature maps, converted once for both the
    box and the mask pooler (RoIAlign copies channels_last maps and needs float32 like its boxes)."""
    def hook(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        feats = type(args[0])((k, v.to(dtype=dtype, memory_format=torch.contiguous_format))
                              for k, v in args[0].items())
        return (feats,) + tuple(args[1:])
    return hook


def prepare_roi_features(model: nn.Module) -> None:
    """Install the :func:`_roi_features` pre-hook on ``model.roi_heads`` (once)."""
    if not getattr(model.roi_heads, "_restransfer_roi_hook", False):
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
