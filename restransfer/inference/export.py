"""Exporting a detector to ONNX or TorchScript, and checking an exported file against the PyTorch model.

Both formats take one float RGB image ``(3, H, W)`` in [0, 1] and return ``boxes`` (N, 4) xyxy in
input pixels, ``scores`` (N,), ``labels`` (N,) int64 in 1..K and, for Mask R-CNN, ``masks``
(N, 1, H, W) probabilities; N (after NMS) is dynamic. The exported network is the fp32 NCHW model with
its frozen BatchNorms folded into the convolutions; the CPU fused kernels, bf16 and RoIAlign threads of
:meth:`~restransfer.models.Detector.optimize_for_inference` are eager-mode only, so exported files run
anywhere but without those speed-ups.

Image size. By default (``dynamic=True``) H and W are free: the model's own transform resizes the
image (short side to ``input.min_size_test``, long side capped at ``input.max_size_test``) and maps the
boxes back, and torchvision computes that scale, the padded shape and the anchor grids with tensor
operations while the graph is recorded, so the file gives the PyTorch model's detections at any size.
``size`` is then only the example image the graph is recorded on. With ``dynamic=False`` the file is
for that one size: the TorchScript module raises ``RuntimeError: expected an image of size HxW`` for
another size, ONNX Runtime rejects one with ``INVALID_ARGUMENT: Got invalid dimensions for input: image``.

Which exporter (ONNX). ``exporter="auto"`` first tries the exporter PyTorch recommends,
``torch.export`` (``torch.export.export(..., strict=False)`` with dynamic height and width, then
``torch.onnx.export(exported_program, dynamo=True)``), and falls back to the TorchScript-based
exporter (``torch.onnx.export(..., dynamo=False)`` with ``dynamic_axes``, the path torchvision tests
its detectors on) when ``torch.export`` cannot capture the model; :class:`ExportResult` says which one
wrote the file and why it fell back. With PyTorch 2.14 and torchvision 0.29 ``torch.export`` cannot
capture torchvision's Faster/Mask R-CNN inference, whose control flow depends on the data:

* non-strict (the first try): ``GuardOnDataDependentSymNode: Could not guard on data-dependent
  expression Eq(4*u1, 0)`` at ``torchvision/ops/boxes.py:103`` (``_batched_nms_coordinate_trick``:
  ``if boxes.numel() == 0``), called from ``RegionProposalNetwork.filter_proposals``
  (``rpn.py:289``): how many proposals survive the score threshold and the small-box filter is only
  known at run time; ``RoIHeads.postprocess_detections`` has the same NMS;
* strict (dynamo): ``Could not guard on data-dependent expression 4*u1 > 4000`` at
  ``torchvision/ops/boxes.py:86`` (``batched_nms`` choosing its algorithm by the number of boxes);
* with those guards fixed to the example image's values (``torch.export.draft_export``, which gives a
  graph valid for that image only) it stops at Mask R-CNN's mask pasting, a Python loop over the
  detections (``paste_masks_in_image``, ``roi_heads.py:496``: ``propagate_real_tensors: we cannot
  infer a Fake kernel (meta kernel) for operator aten::squeeze.dims``), and for Faster R-CNN at the
  multi-scale RoIAlign's per-level assignment (``We found a fake tensor in the exported program
  constant's list ... model.roi_heads.box_roi_pool``).

The TorchScript-based exporter records the same code as a trace in which those loops and branches
are ONNX ``Loop``/``If`` nodes (torchvision's ``_get_tracing_state()`` paths), so it handles them.
``exporter="torch.export"`` raises :class:`ExportError` with the failure instead of falling back;
``exporter="torchscript"`` skips the attempt (a few seconds).

TorchScript (``.pt``) comes from ``torch.jit.trace``; ``torch.jit.script`` cannot compile the detector
(the first failure is the ResNet blocks' ``Optional[nn.Sequential]`` annotation). PyTorch marks
TorchScript, ``torch.jit.trace/script/save/load`` and the TorchScript-based ONNX exporter deprecated;
this module keeps exactly those notices out of its callers' output (``warnings`` filters by message
around its own calls) and lets every other warning through.

What stays fixed at export time, both formats:

* one image per call: the batch is not a dimension of the graph (torchvision's transform, RPN and RoI
  heads loop over the list of images in Python, which the trace unrolls for the example's one image,
  and every image has its own number of detections);
* ``input.min_size_test``/``max_size_test``, the score threshold and the detection count cap;
* the RoIAlign level scales, inferred from the example image (powers of two for the ResNet strides,
  so they hold for any size);
* Python-level input checks (3 channels, float dtype) are not in the graph: a wrong input fails
  deeper inside, or, for an unnormalized 0..255 image, silently gives poor detections.

:func:`verify_export_sizes` runs a file (ONNX Runtime, or ``torch.jit.load``) next to the PyTorch model
on synthetic-shapes images of several sizes (``VERIFY_SIZES`` by default) and counts the detections
that agree: same label, IoU > 0.99, score within 1e-3 (``restransfer export ... --verify``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..data.shapes import synthetic_batch
from ..errors import InputError, MissingDependency
from ..evaluation.agreement import match_detections
from ..fileio import atomic_write_bytes

__all__ = [
    "ExportWrapper",
    "ExportResult",
    "ExportError",
    "ExportMismatchError",
    "EXPORTERS",
    "VERIFY_SIZES",
    "export_model",
    "export_torchscript",
    "export_onnx",
    "export_outputs",
    "prepare_for_export",
    "verify_export",
    "verify_export_sizes",
    "describe_verification",
    "require_agreement",
]

EXPORTERS = ("auto", "torch.export", "torchscript")
# landscape, square, and a larger image that the demo model's transform scales down (short side to 128 px,
# long side capped at 128 px): three different graphs of shapes through one exported file
VERIFY_SIZES: Tuple[Tuple[int, int], ...] = ((96, 128), (128, 128), (160, 224))
IOU_THRESHOLD = 0.99
SCORE_TOLERANCE = 1e-3

# PyTorch's deprecation notices for the TorchScript stack: torch.jit.trace/script/save/load (torchvision's
# tracing helpers call torch.jit.script too), the TorchScript-based ONNX exporter and a helper it calls
# itself, and torchvision's NMS shape function under torch.export. Matched by category and message start.
_DEPRECATION_NOTICES = (
    (FutureWarning, r"`torch\.jit\.\w+` is (deprecated|not supported in Python 3\.14)"),
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed\. Please remove usage of this function"),
    (FutureWarning, r"`create_unbacked_symint` is deprecated"),
)


@contextlib.contextmanager
def _without_deprecation_notices() -> Iterator[None]:
    with warnings.catch_warnings():
        for category, message in _DEPRECATION_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=category)
        # the tracer warns about every Python-level shape read; those are the fixed values listed above
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


class ExportError(InputError, RuntimeError):
    """The chosen exporter cannot export this model; the message says what failed and what to use."""


class ExportMismatchError(InputError, RuntimeError):
    """An exported file's detections differ from the PyTorch model's; the message names the sizes."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote: ``path``, ``format`` (``"onnx"``/``"torchscript"``), ``exporter``
    (``"torch.export"``, ``"torchscript"`` for the TorchScript-based ONNX exporter, ``"torch.jit.trace"``),
    ``dynamic`` (any image size) and ``fallback``: why ``torch.export`` was not used (``None`` when it was,
    or was not tried)."""

    path: Path
    format: str
    exporter: str
    dynamic: bool
    fallback: Optional[str] = None

    def describe(self) -> str:
        size = "any image height and width" if self.dynamic else "one image size"
        how = {
            "torch.export": "torch.export-based exporter",
            "torchscript": "TorchScript-based exporter",
            "torch.jit.trace": "torch.jit.trace",
        }[self.exporter]
        text = f"wrote {self.path} ({'ONNX' if self.format == 'onnx' else 'TorchScript'}, {how}, {size})"
        if self.fallback:
            text += f"\nnote: {self.fallback}; the TorchScript-based exporter wrote the file instead"
        return text


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
            raise RuntimeError(
                "expected an image of size "
                + str(self.height)
                + "x"
                + str(self.width)
                + " (the traced size); resize or pad it first"
            )
        return list(self.traced(image))


def prepare_for_export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with BatchNorms folded and nothing device-specific: what both
    export formats trace. A model already optimized with fused kernels or low precision cannot be
    exported; build it again."""
    opts = getattr(model, "_optimized", False)
    if opts and (opts.get("fuse") or opts.get("precision") != "fp32"):
        raise ValueError(
            f"this model was optimized for inference with {opts}; export needs the plain fp32 model "
            "(build it again with build_model and export that)"
        )
    model = copy.deepcopy(model).cpu().eval()
    if not opts:
        model.optimize_for_inference(fuse=False, channels_last=False, precision="fp32")
    return model


def _example(size: Tuple[int, int]) -> Tensor:
    # a smooth image rather than zeros, so that the example run produces detections and every branch
    # (mask head, pasting) is recorded
    h, w = size
    ys = torch.linspace(0, 1, h)[:, None]
    xs = torch.linspace(0, 1, w)[None, :]
    return torch.stack([ys * xs, (1 - ys) * xs, ys * (1 - xs)]).float()


def _output_names(wrapper: ExportWrapper) -> List[str]:
    return ["boxes", "scores", "labels"] + (["masks"] if wrapper.with_masks else [])


def _short_path(filename: str) -> str:
    for marker in ("site-packages" + os.sep, "restransfer" + os.sep):
        if marker in filename:
            return (marker if marker.startswith("restransfer") else "") + filename.split(marker, 1)[1]
    return filename


def _describe_capture_failure(error: BaseException) -> str:
    """The failure's type and first line, and where it happened: the innermost frame outside PyTorch
    itself (the op that failed) and the innermost one in a model's code (the detector part that called it)."""
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    inner, frames = error, []
    while True:  # a wrapped error (raise ... from e): its cause holds the model's frames
        ours = [f for f in traceback.extract_tb(inner.__traceback__) if not f.filename.startswith(torch_dir)]
        frames = ours or frames
        if inner.__cause__ is None:
            break
        inner = inner.__cause__
    # the first line, without the symbolic-shape details torch appends to it
    first = re.sub(r"\s*\(unhinted: .*$", "", (str(inner).strip().splitlines() or [""])[0])
    text = f"{type(inner).__name__}: {first}"
    if frames:
        op = frames[-1]
        text += f" at {_short_path(op.filename)}:{op.lineno} in {op.name}"
        callers = [f for f in frames[:-1] if "models" + os.sep in f.filename]
        if callers and callers[-1].filename != op.filename:
            c = callers[-1]
            text += f", called from {_short_path(c.filename)}:{c.lineno} in {c.name}"
    return text


@contextlib.contextmanager
def _stderr_without_partial_graph() -> Iterator[None]:
    """torch.export prints the whole graph it recorded before a failure to stderr (a thousand lines for
    a detector); the failure is described in one line instead. Everything else written to stderr
    meanwhile (warnings, log records) is passed on afterwards."""
    captured = io.StringIO()
    graph = None
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except Exception as e:
        graph = getattr(e, "partial_fx_graph", None)
        raise
    finally:
        text = captured.getvalue()
        if graph is not None:
            text = text.replace(f"{graph}\n", "")  # printed once per nested export wrapper
        if text:
            sys.stderr.write(text)


def _onnx_with_torch_export(wrapper: ExportWrapper, example: Tensor, dynamic: bool, opset: int) -> bytes:
    names = _output_names(wrapper)
    shapes = None
    if dynamic:
        # named dimensions with bounds: torch.export raises instead of silently fixing a size it cannot
        # keep symbolic
        shapes = ({1: torch.export.Dim("height", min=16, max=8192), 2: torch.export.Dim("width", min=16, max=8192)},)
    with torch.no_grad(), _without_deprecation_notices():
        with _stderr_without_partial_graph():
            program = torch.export.export(wrapper, (example,), dynamic_shapes=shapes, strict=False)
        onnx_program = torch.onnx.export(
            program,
            (example,),
            dynamo=True,
            opset_version=max(opset, 18),
            input_names=["image"],
            output_names=names,
            verbose=False,
        )
    return onnx_program.model_proto.SerializeToString()


def _onnx_with_torchscript_exporter(wrapper: ExportWrapper, example: Tensor, dynamic: bool, opset: int) -> bytes:
    names = _output_names(wrapper)
    axes = {n: {0: "detections"} for n in names}
    if dynamic:
        axes["image"] = {1: "height", 2: "width"}
    buf = io.BytesIO()
    with torch.no_grad(), _without_deprecation_notices():
        torch.onnx.export(
            wrapper,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=names,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    return buf.getvalue()


def _export_onnx(
    model: nn.Module, path: Union[str, os.PathLike], size: Tuple[int, int], opset: int, dynamic: bool, exporter: str
) -> ExportResult:
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    try:
        import onnx  # noqa: F401  both exporters serialize through it
    except ImportError:
        raise MissingDependency("ONNX export needs the onnx package: pip install onnx (or restransfer[onnx])") from None
    wrapper = ExportWrapper(prepare_for_export(model))
    example = _example((int(size[0]), int(size[1])))
    fallback = None
    if exporter != "torchscript":
        try:
            data = _onnx_with_torch_export(wrapper, example, dynamic, opset)
        except Exception as e:  # whatever torch.export cannot do with this model: say what, then fall back
            what = f"torch.export could not export the detector: {_describe_capture_failure(e)}"
            if exporter == "torch.export":
                raise ExportError(
                    f"{what}. Export it with the TorchScript-based exporter (exporter 'torchscript', "
                    "or 'auto' to try torch.export first)"
                ) from e
            fallback = what
        else:
            atomic_write_bytes(path, data)
            return ExportResult(Path(path), "onnx", "torch.export", dynamic)
    atomic_write_bytes(path, _onnx_with_torchscript_exporter(wrapper, example, dynamic, opset))
    return ExportResult(Path(path), "onnx", "torchscript", dynamic, fallback)


def _export_torchscript(
    model: nn.Module, path: Union[str, os.PathLike], size: Tuple[int, int], dynamic: bool
) -> ExportResult:
    h, w = int(size[0]), int(size[1])
    with torch.no_grad(), _without_deprecation_notices():
        traced = torch.jit.trace(
            ExportWrapper(prepare_for_export(model)), (_example((h, w)),), check_trace=False, strict=False
        )
        module = traced if dynamic else torch.jit.script(_SizeCheck(traced, h, w))
        buf = io.BytesIO()  # serialized in memory, then written all or nothing (a full disk leaves no half file)
        torch.jit.save(module, buf)
    atomic_write_bytes(path, buf.getbuffer())
    return ExportResult(Path(path), "torchscript", "torch.jit.trace", dynamic)


def export_model(
    model: nn.Module,
    path: Union[str, os.PathLike],
    format: str,
    size: Tuple[int, int] = (800, 1067),
    dynamic: bool = True,
    opset: int = 17,
    exporter: str = "auto",
) -> ExportResult:
    """Export ``model`` as ``format`` (``"onnx"`` or ``"torchscript"``) to ``path``; see the module
    docstring for ``size``, ``dynamic`` and ``exporter`` (ONNX only). Returns what was written and how."""
    if format == "onnx":
        return _export_onnx(model, path, size, opset, dynamic, exporter)
    if format == "torchscript":
        return _export_torchscript(model, path, size, dynamic)
    raise ValueError(f"format must be 'onnx' or 'torchscript', got {format!r}")


def export_torchscript(
    model: nn.Module, path: Union[str, os.PathLike], size: Tuple[int, int] = (800, 1067), dynamic: bool = True
) -> Path:
    """Trace ``model`` on an example image of ``size`` = (H, W) and save it with :func:`torch.jit.save`.

    Load with ``torch.jit.load(path)``; call it on a ``(3, H, W)`` float RGB image in [0, 1]; it returns
    ``[boxes, scores, labels(, masks)]``. With ``dynamic=False`` it raises for any other size.
    """
    return _export_torchscript(model, path, size, dynamic).path


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    size: Tuple[int, int] = (800, 1067),
    opset: int = 17,
    dynamic: bool = True,
    exporter: str = "auto",
) -> Path:
    """Export ``model`` to ONNX with an ``image`` input of shape ``(3, H, W)`` (H and W fixed to ``size``
    with ``dynamic=False``). :func:`export_model` also says which exporter wrote the file.

    Outputs are named ``boxes``, ``scores``, ``labels`` (and ``masks``); their first dimension (the
    number of detections) is dynamic. Needs the ``onnx`` package (``pip install restransfer[onnx]``).
    """
    return _export_onnx(model, path, size, opset, dynamic, exporter).path


def export_outputs(exported: Union[str, os.PathLike], image: Tensor) -> List[Tensor]:
    """Run an exported file (``.onnx`` through onnxruntime, anything else through ``torch.jit.load``)
    on one ``(3, H, W)`` image; returns ``[boxes, scores, labels(, masks)]`` as CPU tensors."""
    exported = str(exported)
    if exported.endswith(".onnx"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependency(
                "running an ONNX file needs onnxruntime: pip install onnxruntime (or restransfer[onnx])"
            ) from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # torchvision's mask-pasting loop makes ORT warn about shapes per mask
        session = ort.InferenceSession(exported, options, providers=["CPUExecutionProvider"])
        outs = session.run(None, {"image": image.detach().cpu().numpy()})
        return [torch.from_numpy(o) for o in outs]
    with torch.no_grad(), _without_deprecation_notices():
        module = torch.jit.load(exported, map_location="cpu")
        return [o.cpu() for o in module(image.cpu())]


def verify_export(
    model: nn.Module,
    exported: Union[str, os.PathLike],
    size: Tuple[int, int],
    seed: int = 0,
    iou_threshold: float = IOU_THRESHOLD,
    score_tolerance: float = SCORE_TOLERANCE,
) -> Dict[str, float]:
    """Compare an exported file with the PyTorch ``model`` (run as it is, in eval mode) on a
    synthetic-shapes image of ``size`` = (H, W).

    Detections are matched one to one with the same label and IoU > ``iou_threshold``; a match agrees
    when the scores differ by at most ``score_tolerance``. Returns ``{"height", "width", "detections"
    (the model's count), "exported_detections", "matched" (agreeing pairs), "agreement" (matched over
    the larger count; 1.0 when neither has any), "max_score_difference", "max_box_difference_px",
    "min_iou" (over the label-and-IoU pairs)}``.
    """
    h, w = int(size[0]), int(size[1])
    image = synthetic_batch((h, w), 1, seed=seed)[0][0]
    was_training = model.training
    try:
        with torch.no_grad():
            ref = model.eval()([image.to(next(model.parameters()).device)])[0]
    finally:
        model.train(was_training)
    ref = {k: v.detach().cpu() for k, v in ref.items()}
    out = export_outputs(exported, image)
    got = {"boxes": out[0], "scores": out[1], "labels": out[2]}
    pairs = match_detections(got, ref, iou_threshold)
    score_diffs = [abs(float(ref["scores"][i]) - float(got["scores"][j])) for i, j, _ in pairs]
    box_diffs = [float((ref["boxes"][i] - got["boxes"][j]).abs().max()) for i, j, _ in pairs]
    matched = sum(d <= score_tolerance for d in score_diffs)
    n = max(len(ref["boxes"]), len(got["boxes"]))
    return {
        "height": float(h),
        "width": float(w),
        "detections": float(len(ref["boxes"])),
        "exported_detections": float(len(got["boxes"])),
        "matched": float(matched),
        "agreement": matched / n if n else 1.0,
        "max_score_difference": max(score_diffs, default=0.0),
        "max_box_difference_px": max(box_diffs, default=0.0),
        "min_iou": min((iou for _, _, iou in pairs), default=1.0),
    }


def verify_export_sizes(
    model: nn.Module, exported: Union[str, os.PathLike], sizes: Sequence[Tuple[int, int]] = VERIFY_SIZES, seed: int = 0
) -> List[Dict[str, float]]:
    """:func:`verify_export` at each of ``sizes``."""
    return [verify_export(model, exported, size, seed=seed) for size in sizes]


def describe_verification(report: Dict[str, float]) -> str:
    """One line for a :func:`verify_export` report."""
    size = f"{int(report['height'])}x{int(report['width'])}"
    n, m = int(report["detections"]), int(report["exported_detections"])
    if n == 0 and m == 0:
        return f"{size}: no detections from either model on the test image: nothing compared"
    counts = f"{int(report['matched'])}/{max(n, m)} detections agree"
    if n != m:
        counts += f" (PyTorch model {n}, exported file {m})"
    return (
        f"{size}: {counts} (same label, IoU > {IOU_THRESHOLD}, score within {SCORE_TOLERANCE:g}); "
        f"max score difference {report['max_score_difference']:.1e}, max box difference "
        f"{report['max_box_difference_px']:.1e} px, lowest IoU {report['min_iou']:.6f}"
    )


def require_agreement(reports: Sequence[Dict[str, float]]) -> None:
    """Raise :class:`ExportMismatchError` naming every size where not all detections agree."""
    bad = [r for r in reports if r["agreement"] < 1.0]
    if bad:
        sizes = ", ".join(
            f"{int(r['height'])}x{int(r['width'])} ({int(r['matched'])}/"
            f"{int(max(r['detections'], r['exported_detections']))} agree)"
            for r in bad
        )
        raise ExportMismatchError(
            f"the exported file's detections differ from the PyTorch model's at {sizes}: agreement needs the same "
            f"label, IoU > {IOU_THRESHOLD} and scores within {SCORE_TOLERANCE:g}. Export with dynamic=False for one "
            "size, or with the other exporter or format, and verify again"
        )
