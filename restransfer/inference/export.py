"""Exporting a detector to TorchScript (traced) or ONNX.

Both formats take one float RGB image ``(3, H, W)`` in [0, 1] and return ``boxes`` (N, 4) xyxy in
input pixels, ``scores`` (N,), ``labels`` (N,) int64 in 1..K and, for Mask R-CNN, ``masks``
(N, 1, H, W) probabilities; N (after NMS) is dynamic. The exported network is the fp32 NCHW model with
its frozen BatchNorms folded into the convolutions; the CPU fused kernels, bf16 and RoIAlign threads
of :meth:`~restransfer.models.Detector.optimize_for_inference` are eager-mode only, so exported files run anywhere but without
those speed-ups.

Input size. By default the export is for one fixed size (H, W):

* **TorchScript** comes from tracing (``torch.jit.trace``) an example image of that size, wrapped in
  a small scripted guard that raises ``RuntimeError: expected an image of size HxW`` for any other
  size. Scripting (``torch.jit.script``) is not offered: the detector is not scriptable (the first
  failure is the ResNet blocks' ``Optional[nn.Sequential]`` annotation), and PyTorch 2.14 warns that
  ``torch.jit.script`` is deprecated.
* **ONNX** (TorchScript-based exporter, ``dynamo=False``: the path torchvision's detectors support)
  gets static input dimensions; ONNX Runtime rejects other sizes with ``INVALID_ARGUMENT: Got invalid
  dimensions for input: image``.

``dynamic=True`` drops the guard (TorchScript) or marks H and W dynamic (ONNX). torchvision computes
the resize scale, the padded shape and the anchor grids with traced tensor operations, so such files
give the eager model's detections at other sizes too. Checked on ResNet-18 Mask R-CNN (FPN) and
Faster R-CNN (C4), both formats: sizes from 20x30 to 400x600 in both regimes of the resize (short-side
target, long-side cap); and Mask R-CNN files traced on an image with detections run on one without,
and the reverse. The tests keep two other sizes per format. What stays fixed at export time:

* one image per call (the batch dimension is not part of the graph);
* ``input.min_size_test``/``max_size_test``, the score threshold and the detection count cap;
* the RoIAlign level scales, inferred from the example image (powers of two for the ResNet strides,
  so they hold for any size);
* Python-level input checks (3 channels, float dtype) are not in the graph: a wrong input fails
  deeper inside, or, for an unnormalized 0..255 image, silently gives poor detections.

Outside the tested range, compare an exported file with the eager model (``tools/export.py
--verify``).
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch
from torch import Tensor, nn

from ..data.shapes import synthetic_batch
from ..evaluation.agreement import detection_agreement
from ..fileio import atomic_write_bytes

__all__ = ["ExportWrapper", "export_torchscript", "export_onnx", "export_outputs", "prepare_for_export",
           "verify_export"]


class ExportWrapper(nn.Module):
    """One image in, a tuple of tensors out: ``(3, H, W)`` float RGB in [0, 1] ->
    ``(boxes, scores, labels[, masks])`` for the first (only) image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.with_masks = bool(model.roi_heads.has_mask())
        # exporters restore the wrapper's own mode afterwards, and that mode propagates to the model
        self.eval()

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        out = self.model([image])[0]
        if self.with_masks:
            return out["boxes"], out["scores"], out["labels"], out["masks"]
        return out["boxes"], out["scores"], out["labels"]


class _SizeCheck(nn.Module):
    """Scripted guard around a traced module: refuses images of another size than the traced one."""

    def __init__(self, traced: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.traced = traced
        self.height = height
        self.width = width

    def forward(self, image: Tensor) -> List[Tensor]:
        if image.dim() != 3 or image.size(0) != 3:
            raise RuntimeError("expected one float RGB image of shape (3, H, W)")
        if image.size(1) != self.height or image.size(2) != self.width:
            raise RuntimeError("expected an image of size " + str(self.height) + "x" + str(self.width)
                               + " (the traced size); resize or pad it first")
        return list(self.traced(image))


def prepare_for_export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with BatchNorms folded and nothing device-specific: what both
    export formats trace. A model already optimized with fused kernels or low precision cannot be
    exported; build it again."""
    opts = getattr(model, "_optimized", False)
    if opts and (opts.get("fuse") or opts.get("precision") != "fp32"):
        raise ValueError(f"this model was optimized for inference with {opts}; export needs the plain fp32 model "
                         "(build it again with build_model and export that)")
    model = copy.deepcopy(model).cpu().eval()
    if not opts:
        model.optimize_for_inference(fuse=False, channels_last=False, precision="fp32")
    return model


def _example(size: Tuple[int, int]) -> Tensor:
    # a smooth image rather than zeros, so that the example run produces detections and every branch
    # (mask head, pasting) is traced
    h, w = size
    ys = torch.linspace(0, 1, h)[:, None]
    xs = torch.linspace(0, 1, w)[None, :]
    return torch.stack([ys * xs, (1 - ys) * xs, ys * (1 - xs)]).float()


def _trace(wrapper: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about every Python-level shape read; those are the fixed sizes described above
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(wrapper, (example,), check_trace=False, strict=False)


def export_torchscript(model: nn.Module, path: Union[str, os.PathLike], size: Tuple[int, int] = (800, 1067),
                       dynamic: bool = False) -> Path:
    """Trace ``model`` on an example image of ``size`` = (H, W) and save it with :func:`torch.jit.save`.

    Load with ``torch.jit.load(path)``; call it on a ``(3, H, W)`` float RGB image in [0, 1]; it returns
    ``[boxes, scores, labels(, masks)]``. Without ``dynamic`` it raises for any other size.
    """
    h, w = int(size[0]), int(size[1])
    traced = _trace(ExportWrapper(prepare_for_export(model)), _example((h, w)))
    module = traced if dynamic else torch.jit.script(_SizeCheck(traced, h, w))
    buf = io.BytesIO()  # serialized in memory, then written all or nothing (a full disk leaves no half file)
    torch.jit.save(module, buf)
    atomic_write_bytes(path, buf.getbuffer())
    return Path(path)


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], size: Tuple[int, int] = (800, 1067),
                opset: int = 17, dynamic: bool = False) -> Path:
    """Export ``model`` to ONNX with an ``image`` input of shape ``(3, H, W)`` (static unless ``dynamic``).

    Outputs are named ``boxes``, ``scores``, ``labels`` (and ``masks``); their first dimension (the
    number of detections) is dynamic. Needs the ``onnx`` package (``pip install restransfer[onnx]``).
    """
    try:
        import onnx  # noqa: F401  the exporter serializes through it
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install onnx (or restransfer[onnx])") from None
    wrapper = ExportWrapper(prepare_for_export(model))
    names = ["boxes", "scores", "labels"] + (["masks"] if wrapper.with_masks else [])
    axes = {n: {0: "detections"} for n in names}
    if dynamic:
        axes["image"] = {1: "height", 2: "width"}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (_example((int(size[0]), int(size[1]))),), buf, dynamo=False,
                          opset_version=opset, input_names=["image"], output_names=names, dynamic_axes=axes,
                          do_constant_folding=True)
    atomic_write_bytes(path, buf.getbuffer())
    return Path(path)


def export_outputs(exported: Union[str, os.PathLike], image: Tensor) -> List[Tensor]:
    """Run an exported file (``.onnx`` through onnxruntime, anything else through ``torch.jit.load``)
    on one ``(3, H, W)`` image; returns ``[boxes, scores, labels(, masks)]`` as CPU tensors."""
    exported = str(exported)
    if exported.endswith(".onnx"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("running an ONNX file needs onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # torchvision's mask-pasting loop makes ORT warn about shapes per mask
        session = ort.InferenceSession(exported, options, providers=["CPUExecutionProvider"])
        outs = session.run(None, {"image": image.detach().cpu().numpy()})
        return [torch.from_numpy(o) for o in outs]
    module = torch.jit.load(exported, map_location="cpu")
    with torch.no_grad():
        return [o.cpu() for o in module(image.cpu())]


def verify_export(model: nn.Module, exported: Union[str, os.PathLike], size: Tuple[int, int],
                  seed: int = 0) -> Dict[str, float]:
    """Compare an exported file with the eager ``model`` on a synthetic-shapes image of ``size``.

    Returns ``{"detections": eager count, "agreement": fraction matched one-to-one with the same label
    at IoU > 0.9, "max_box_difference_px": ..., "max_score_difference": ...}``.
    """
    image = synthetic_batch((int(size[0]), int(size[1])), 1, seed=seed)[0][0]
    reference = prepare_for_export(model)
    with torch.no_grad():
        ref = reference([image])[0]
    out = export_outputs(exported, image)
    got = {"boxes": out[0], "scores": out[1], "labels": out[2]}
    agreement, box_diff = detection_agreement(got, ref)
    n = min(len(got["scores"]), len(ref["scores"]))
    score_diff = float((got["scores"][:n] - ref["scores"][:n]).abs().max()) if n else 0.0
    return {"detections": float(len(ref["boxes"])), "agreement": agreement, "max_box_difference_px": box_diff,
            "max_score_difference": score_diff}
