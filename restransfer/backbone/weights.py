"""ImageNet-pretrained weights for :class:`~restransfer.backbone.ResNet`.

Sources (``load_pretrained(model, source)``):

* a local file: a torchvision or timm state dict (``.pth``/``.pt``/``.bin``, also wrapped as
  ``{"state_dict": ...}`` or ``{"model": ...}``), a ``.safetensors`` file, or an MSRA/Caffe ResNet as
  converted for detectron2 (``R-50.pkl``, ``R-101.pkl``: a pickle of numpy arrays named ``conv1_w``,
  ``res_conv1_bn_s``, ``res2_0_branch2a_w``, ...). The format is detected from the content.
* ``torchvision://resnet101`` (torchvision's ImageNet weights, IMAGENET1K_V1 unless a weights name is
  given as in ``torchvision://resnet50.IMAGENET1K_V2``) through torchvision's cache and download.
* ``timm://<model name>`` (e.g. ``timm://resnet50.a1_in1k``) through timm's cache.

Every source carries the pixel convention its weights were trained with (:class:`PixelConvention`);
the builders read the weights first (:func:`read_pretrained`) and pass it to the constructor
(``ResNet(..., pixel_convention=...)``, then :func:`load_pretrained_state`); :func:`load_pretrained` records it
as ``model.pixel_convention`` on a ResNet built by hand. The detectors apply it by default. A checkpoint
of ``tools/train_cls.py`` (``task: "classification"``, torchvision parameter names under ``model``) records
the convention its classifier was trained with, and that one is used.

Checkpoints are untrusted input: zip checkpoints go through the verified load
(:func:`restransfer.serialization.load_torch_file`: member sizes and CRCs, ``torch.load(..., weights_only=True)``,
a bounded walk and the checksum); pickles through an unpickler that admits only plain containers and numpy
arrays, and the same bounded walk.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..serialization import WeightsError, check_not_empty, load_torch_file, safe_load_pickle, verify_checksum

logger = logging.getLogger(__name__)

__all__ = [
    "PixelConvention",
    "TORCHVISION_RGB",
    "MSRA_BGR",
    "load_pretrained",
    "read_pretrained",
    "load_pretrained_state",
    "PretrainedWeights",
    "read_state_dict",
    "read_weights",
    "tensors_of",
    "safe_load_pickle",
    "LoadReport",
    "WeightsError",
]


@dataclass(frozen=True)
class PixelConvention:
    """How images must be presented to weights: channel order and per-channel mean/std in 0..255 units."""

    channel_order: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    style: Optional[str] = None  # the ResNet style the weights require, None if either works

    def to_dict(self) -> Dict[str, Any]:
        """What checkpoints record: ``{"channel_order", "mean", "std"}`` with lists (the style is not saved)."""
        return {"channel_order": self.channel_order, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], style: Optional[str] = None) -> "PixelConvention":
        """The convention a checkpoint recorded with :meth:`to_dict`, for weights of ``style``."""
        return cls(data["channel_order"], tuple(data["mean"]), tuple(data["std"]), style)


TORCHVISION_RGB = PixelConvention("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "pytorch")
MSRA_BGR = PixelConvention("BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0), "caffe")


@dataclass
class LoadReport:
    source: str
    format: str
    convention: PixelConvention
    loaded: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)


def _unwrap(obj: Any) -> Any:
    for key in ("state_dict", "model", "blobs", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    return obj


def read_state_dict(path: os.PathLike | str) -> Tuple[Dict[str, Tensor], str]:
    """Read a weights file into ``{name: tensor}`` and say how it was stored (``torch``, ``safetensors`` or
    ``pickle``). Never executes code from the file."""
    sd, kind, _ = read_weights(path)
    return sd, kind


# top-level entries of a classifier checkpoint (tools/train_cls.py) that say how to use its weights
CLASSIFIER_META_KEYS = ("task", "arch", "depth", "residual", "style", "num_classes", "class_names", "pixel_convention")


def read_weights(path: os.PathLike | str) -> Tuple[Dict[str, Tensor], str, Dict[str, Any]]:
    """:func:`read_state_dict` plus the checkpoint's description of its weights: for a classifier checkpoint of
    ``tools/train_cls.py`` (``task: "classification"``) the entries of ``CLASSIFIER_META_KEYS``, else ``{}``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}. Pass an existing file, or a hub source such as "
            "torchvision://resnet101 or timm://resnet50.a1_in1k"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), "safetensors", {}
        except Exception as e:
            raise WeightsError(f"{path}: not a readable safetensors file: {e}") from None
    check_not_empty(path)
    if zipfile.is_zipfile(path):
        obj, kind = load_torch_file(path), "torch"
    else:
        try:  # torch's legacy (pre-zip) format, through the same safe unpickler as zip checkpoints
            obj, kind = torch.load(path, map_location="cpu", weights_only=True), "torch"
        except Exception:
            # a plain pickle such as detectron2's R-101.pkl
            obj, kind = safe_load_pickle(path), "pickle"
        verify_checksum(obj, path)  # the bounded walk (and a checksum, if the file has one)
    meta: Dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("task") == "classification" and isinstance(obj.get("model"), Mapping):
        meta = {k: obj[k] for k in CLASSIFIER_META_KEYS if k in obj}
    return tensors_of(obj, path), kind, meta


def tensors_of(obj: Any, path: os.PathLike | str) -> Dict[str, Tensor]:
    """The ``{name: tensor}`` weights in a loaded file (a state dict, possibly wrapped as ``{"state_dict": ...}``
    or ``{"model": ...}``); numpy arrays become tensors, other entries are skipped."""
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict of named arrays or tensors, found {type(obj).__name__}")
    out: Dict[str, Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise WeightsError(
                    f"{path}: entry {k!r} is a numpy array of dtype {v.dtype}, not numbers; a weights "
                    "file holds numeric arrays only"
                )
            out[str(k)] = torch.from_numpy(np.ascontiguousarray(v))
        elif isinstance(v, Tensor):
            out[str(k)] = v
        # other entries (e.g. "__author__" strings in detectron2 pickles) carry no weights
    return out


# ------------------------------------------------------------------------------- format mapping


_MSRA_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(1|2[abc])_(w|b|bn_s|bn_b)$")


def _is_msra(keys: Collection[str]) -> bool:
    return "conv1_w" in keys or "res_conv1_bn_s" in keys or any(_MSRA_BLOCK.match(k) for k in keys)


def _msra_to_torchvision(sd: Dict[str, Tensor], eps: float = 1e-5) -> Dict[str, Tensor]:
    """Rename MSRA/Caffe blobs to torchvision names. Caffe BN is a fixed scale ``_s`` and bias ``_b``; as a
    FrozenBatchNorm2d that is weight=s, bias=b, mean 0 and variance 1 - eps (so that rsqrt(var + eps) = 1)."""
    out: Dict[str, Tensor] = {}

    def bn(prefix: str, s: Tensor, b: Tensor) -> None:
        out[prefix + ".weight"], out[prefix + ".bias"] = s, b
        out[prefix + ".running_mean"] = torch.zeros_like(s)
        out[prefix + ".running_var"] = torch.full_like(s, 1.0 - eps)

    for k, v in sd.items():
        if k == "conv1_w":
            out["conv1.weight"] = v
        elif k == "res_conv1_bn_s":
            bn("bn1", v, sd["res_conv1_bn_b"])
        elif k == "fc1000_w":
            out["fc.weight"] = v
        elif k == "fc1000_b":
            out["fc.bias"] = v
        elif k in ("res_conv1_bn_b",) or k.endswith("_bn_b") or k.endswith("_momentum"):
            continue
        else:
            m = _MSRA_BLOCK.match(k)
            if not m:
                out["unmapped:" + k] = v
                continue
            stage, block, branch, kind = m.groups()
            base = f"layer{int(stage) - 1}.{block}."
            if branch == "1":
                conv, norm = base + "downsample.0", base + "downsample.1"
            else:
                idx = "abc".index(branch[1]) + 1
                conv, norm = base + f"conv{idx}", base + f"bn{idx}"
            if kind == "w":
                out[conv + ".weight"] = v
            elif kind == "b":
                out["unmapped:" + k] = v  # caffe conv biases do not exist in ResNets
            elif kind == "bn_s":
                bn(norm, v, sd[k[:-1] + "b"])
    return out


def _strip_prefix(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Drop common wrappers (``module.``, ``backbone.``, ``backbone.body.``) when every key has them."""
    for prefix in ("module.", "backbone.body.", "backbone.", "body.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _detect(sd: Dict[str, Tensor], kind: str, hint: str = "") -> Tuple[Dict[str, Tensor], str, PixelConvention]:
    if _is_msra(sd.keys()):
        return _msra_to_torchvision(sd), "msra", MSRA_BGR
    sd = _strip_prefix(sd)
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
        fmt = "timm" if hint == "timm" else "torchvision"
        return sd, fmt, TORCHVISION_RGB
    sample = ", ".join(list(sd)[:5])
    raise WeightsError(
        f"unrecognized weights layout (first keys: {sample}); expected a torchvision/timm ResNet "
        "state dict (conv1.weight, layer1.0...) or MSRA/Caffe blobs (conv1_w, res2_0_branch2a_w, ...)"
    )


# -------------------------------------------------------------------------------------- hub sources


def _torchvision_source(spec: str) -> Tuple[Dict[str, Tensor], str]:
    import torchvision
    from torch.hub import get_dir

    arch, _, variant = spec.partition(".")
    try:
        enum = torchvision.models.get_model_weights(arch)
    except Exception:
        raise WeightsError(
            f"torchvision://{spec}: torchvision has no model named {arch!r} (expected e.g. torchvision://resnet101)"
        ) from None
    variant = variant or "IMAGENET1K_V1"
    try:
        w = enum[variant]
    except KeyError:
        raise WeightsError(
            f"torchvision://{spec}: no weights {variant!r} for {arch}; available: {', '.join(e.name for e in enum)}"
        ) from None
    filename = w.url.rsplit("/", 1)[-1]
    target = Path(get_dir()) / "checkpoints" / filename
    try:
        sd = w.get_state_dict(progress=False, check_hash=False)
    except Exception as e:
        raise WeightsError(
            f"torchvision://{spec}: could not fetch {w.url} ({type(e).__name__}: {e}). Offline? Place the file at "
            f"{target} (torchvision's cache; set TORCH_HOME to move it), or pass the local path as the weights "
            "source."
        ) from None
    return dict(sd), "torch"


def _timm_source(spec: str) -> Tuple[Dict[str, Tensor], str]:
    try:
        import timm
    except ImportError:
        raise WeightsError(f"timm://{spec}: timm is not installed (pip install timm)") from None
    try:
        # timm builds (randomly initializes) a model to read its weights: on a forked RNG, so that reading
        # weights never moves the global stream the layers built after the backbone draw from
        with torch.random.fork_rng(devices=[]):
            model = timm.create_model(spec, pretrained=True)
    except Exception as e:
        raise WeightsError(
            f"timm://{spec}: could not load timm's pretrained weights "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Offline? Download them once where there is network (they land in the Hugging Face cache, "
            "~/.cache/huggingface/hub, set HF_HOME to move it), or save timm.create_model(name, pretrained=True)"
            ".state_dict() to a file and pass its path as the weights source."
        ) from None
    return dict(model.state_dict()), "torch"


def _fetch(source: str) -> Tuple[Dict[str, Tensor], str, str, Optional[PixelConvention]]:
    """Return ``(raw state dict, storage kind, hint, recorded pixel convention or None)`` for any source."""
    if source.startswith("torchvision://"):
        sd, kind = _torchvision_source(source[len("torchvision://") :])
        return sd, kind, "torchvision", None
    if source.startswith("timm://"):
        sd, kind = _timm_source(source[len("timm://") :])
        return sd, kind, "timm", None
    sd, kind, meta = read_weights(os.path.expanduser(source))
    if meta.get("pixel_convention"):  # a train_cls checkpoint: the convention its classifier was trained with
        return sd, kind, "train_cls", PixelConvention.from_dict(meta["pixel_convention"], meta.get("style"))
    return sd, kind, "", None


# ------------------------------------------------------------------------------------------ loading


@dataclass
class PretrainedWeights:
    """ImageNet weights read from a source, in torchvision's parameter names, with the ``format`` they came in
    (``torchvision``, ``timm``, ``msra``, ``train_cls``) and the pixel ``convention`` they were trained with."""

    source: str
    state_dict: Dict[str, Tensor]
    format: str
    convention: PixelConvention


def read_pretrained(source: str) -> PretrainedWeights:
    """Read ImageNet weights (a file, ``torchvision://<arch>[.<weights>]`` or ``timm://<name>``) and their pixel
    convention, before any model exists: a builder passes the convention to the model's constructor and loads
    the weights with :func:`load_pretrained_state`.

    Raises:
        WeightsError: unreadable or unsafe file, unrecognized layout.
    """
    raw, kind, hint, recorded = _fetch(str(source))
    sd, fmt, convention = _detect(raw, kind, hint)
    if recorded is not None:
        fmt, convention = hint, recorded
    return PretrainedWeights(str(source), sd, fmt, convention)


def load_pretrained(model: nn.Module, source: str, *, strict_classifier: bool = False) -> LoadReport:
    """Load ImageNet weights into a :class:`~restransfer.backbone.ResNet` and record their pixel convention.

    Args:
        model: the ResNet (stages it was built without are skipped; ``fc`` loads only if it has one).
        source: a file path, ``torchvision://<arch>[.<weights>]`` or ``timm://<name>``.
        strict_classifier: require ``fc`` weights when the model has a classifier.

    Returns:
        A :class:`LoadReport`; ``model.pixel_convention`` is set.

    Raises:
        WeightsError: unreadable or unsafe file, unrecognized layout, a style mismatch (MSRA weights into a
            ``style="pytorch"`` model or the reverse), missing keys, or a shape mismatch (names the first bad key).
    """
    weights = read_pretrained(source)
    report = load_pretrained_state(model, weights, strict_classifier=strict_classifier)
    # a ResNet built by hand learns here what its new weights expect; the toolkit's builders read the weights
    # first (read_pretrained) and pass the convention to the constructor instead
    model.pixel_convention = weights.convention
    return report


def load_pretrained_state(
    model: nn.Module, weights: PretrainedWeights, *, strict_classifier: bool = False
) -> LoadReport:
    """Load weights of :func:`read_pretrained` into ``model`` (a ResNet built with their convention); the
    checks and errors of :func:`load_pretrained`. The model's ``pixel_convention`` is left as constructed."""
    source, sd, fmt, convention = weights.source, weights.state_dict, weights.format, weights.convention
    style = getattr(model, "style", None)
    block_is_bottleneck = getattr(model, "depth", 50) >= 50
    if convention.style and style and block_is_bottleneck and style != convention.style:
        raise WeightsError(
            f"{source}: these are {fmt} weights, trained with style={convention.style!r} (stride 2 in the "
            f"{'first 1x1' if convention.style == 'caffe' else '3x3'} convolution), but the model was built with "
            f"style={style!r}. Build it with style={convention.style!r} (model.backbone.style: {convention.style})."
        )

    own = model.state_dict()
    unmapped = sorted(k[len("unmapped:") :] for k in sd if k.startswith("unmapped:"))
    sd = {k: v for k, v in sd.items() if not k.startswith("unmapped:")}
    # parts the model was built without (later stages, the classifier) are expected to be absent
    present_prefixes = {k.split(".")[0] for k in own}
    unexpected = sorted(
        k for k in sd if k not in own and k.split(".")[0] in present_prefixes and not k.endswith("num_batches_tracked")
    )
    ignored = sorted(k for k in sd if k.split(".")[0] not in present_prefixes)
    missing = sorted(
        k
        for k in own
        if k not in sd and not k.endswith("num_batches_tracked") and (strict_classifier or not k.startswith("fc."))
    )
    for k in own:
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape):
            depth = getattr(model, "depth", "?")
            raise WeightsError(
                f"{source}: shape mismatch at {k}: the file has {tuple(sd[k].shape)}, the model (ResNet-{depth}) "
                f"expects {tuple(own[k].shape)}. Is this checkpoint for another depth?"
            )
    if missing:
        depth = getattr(model, "depth", "?")
        raise WeightsError(
            f"{source}: {len(missing)} weights of the ResNet-{depth} are missing from the file, "
            f"e.g. {', '.join(missing[:5])}. Is this checkpoint for another depth or architecture?"
        )
    if unexpected or unmapped:
        logger.warning(
            "%s: ignoring %d unexpected keys: %s",
            source,
            len(unexpected) + len(unmapped),
            ", ".join((unexpected + unmapped)[:10]),
        )
    if ignored:
        logger.info(
            "%s: not used by this model (built without them): %s",
            source,
            ", ".join(sorted({k.split(".")[0] for k in ignored})),
        )
    to_load = {k: v.to(own[k].dtype) for k, v in sd.items() if k in own}
    model.load_state_dict(to_load, strict=False)
    return LoadReport(
        source=str(source), format=fmt, convention=convention, loaded=sorted(to_load), unexpected=unexpected + unmapped
    )
