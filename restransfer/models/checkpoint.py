"""Loading full detector weights, across class counts.

Transfer learning normally starts from a checkpoint trained on another label set (COCO's 80 or 91
classes, say) and a model with the user's K classes. Only the class-dependent layers differ; they are
re-initialized and named in the log, and everything else must load, or it is an error that names the keys.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..backbone.weights import WeightsError, read_state_dict, tensors_of
from ..serialization import CheckpointError, check_torch_archive, load_torch_file
from .context import has_global_context

logger = logging.getLogger(__name__)

__all__ = [
    "load_detector_weights",
    "read_detector_checkpoint",
    "apply_detector_state",
    "CLASS_DEPENDENT",
    "DetectorLoadReport",
    "check_global_context",
    "checkpoint_class_names",
]

# layers whose shape depends on the number of classes
CLASS_DEPENDENT = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)


@dataclass
class DetectorLoadReport:
    source: str
    reinitialized: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)  # e.g. pixel_convention, class_names of our checkpoints


_META_KEYS = ("pixel_convention", "class_names", "iteration")


def read_detector_checkpoint(source: str) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """``(state_dict, meta)`` of a detector checkpoint; ``meta`` holds what our training checkpoints record
    beside the weights (pixel convention, class names, iteration). Never executes code from the file; a zip
    checkpoint goes through the verified load (:func:`restransfer.serialization.load_torch_file`)."""
    path = Path(source)
    meta: Dict[str, Any] = {}
    if path.is_file() and zipfile.is_zipfile(path):
        obj = load_torch_file(path)
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            meta = {k: obj[k] for k in _META_KEYS if k in obj}
            return {k: v for k, v in obj["model"].items() if isinstance(v, Tensor)}, meta
        return tensors_of(obj, path), meta
    sd, _ = read_state_dict(source)
    return sd, meta


def load_detector_weights(model: nn.Module, source: str) -> DetectorLoadReport:
    """Load a detector checkpoint (ours, or a torchvision detection state dict) into ``model``.

    Class-dependent layers (``CLASS_DEPENDENT``) whose shape differs are re-initialized (and logged).
    Any other missing key or shape mismatch raises :class:`WeightsError` naming the keys; unexpected keys
    (e.g. a Mask R-CNN checkpoint's mask head loaded into a Faster R-CNN) are logged and skipped.
    """
    sd, meta = read_detector_checkpoint(source)
    return apply_detector_state(model, sd, source, meta)


def apply_detector_state(
    model: nn.Module, sd: Dict[str, Tensor], source: str, meta: Optional[Dict[str, Any]] = None
) -> DetectorLoadReport:
    """Load a state dict read by :func:`read_detector_checkpoint` from ``source`` into ``model``, with the
    rules of :func:`load_detector_weights`; ``meta`` goes into the report."""
    for prefix in ("module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    own = model.state_dict()
    check_global_context(has_global_context(own), has_global_context(sd), source)
    reinit: List[str] = []
    mismatched: List[str] = []
    for k, v in own.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            if k.startswith(CLASS_DEPENDENT):
                reinit.append(k)
            else:
                mismatched.append(f"{k} (file {tuple(sd[k].shape)}, model {tuple(v.shape)})")
    if mismatched:
        raise WeightsError(
            f"{source}: shape mismatch for {len(mismatched)} keys outside the class-dependent layers: "
            f"{'; '.join(mismatched[:5])}. Is this checkpoint for another architecture or depth?"
        )
    missing = sorted(k for k in own if k not in sd and not k.endswith("num_batches_tracked"))
    if missing:
        raise WeightsError(
            f"{source}: {len(missing)} weights of the model are missing from the checkpoint, e.g. "
            f"{', '.join(missing[:6])}. Check model.arch/model.head/model.backbone against the "
            "checkpoint's, or load backbone-only weights through model.backbone.weights."
        )
    unexpected = sorted(k for k in sd if k not in own and not k.endswith("num_batches_tracked"))
    if unexpected:
        logger.warning(
            "%s: ignoring %d keys the model does not have: %s", source, len(unexpected), ", ".join(unexpected[:8])
        )
    to_load: Dict[str, Tensor] = {k: sd[k].to(own[k].dtype) for k in own if k in sd and k not in reinit}
    model.load_state_dict(to_load, strict=False)
    if reinit:
        layers = sorted({k.rsplit(".", 1)[0] for k in reinit})
        for name in layers:
            mod = model.get_submodule(name)
            _init_predictor_layer(mod)
        logger.warning(
            "%s: the checkpoint has another number of classes; re-initialized the class-dependent "
            "layers %s (everything else loaded)",
            source,
            ", ".join(layers),
        )
    return DetectorLoadReport(
        source=str(source),
        reinitialized=sorted({k.rsplit(".", 1)[0] for k in reinit}),
        unexpected=unexpected,
        meta=dict(meta or {}),
    )


def check_global_context(model_has: bool, checkpoint_has: bool, source: str) -> None:
    """Raise :class:`WeightsError` naming ``model.roi_heads.global_context`` when a checkpoint and a model
    differ in it (the box predictor's input width depends on it, so nothing could load silently)."""
    if model_has != checkpoint_has:
        raise WeightsError(
            f"{source}: the checkpoint was trained with model.roi_heads.global_context="
            f"{str(checkpoint_has).lower()} but the model has global_context={str(model_has).lower()}; "
            f"set model.roi_heads.global_context={str(checkpoint_has).lower()}"
        )


@torch.no_grad()
def _init_predictor_layer(mod: nn.Module) -> None:
    """The initialization torchvision gives these layers (its default Linear/Conv init)."""
    if isinstance(mod, nn.Conv2d):  # mask logits: kaiming, zero bias, like MaskRCNNPredictor
        nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(mod.bias)
    else:
        mod.reset_parameters()


def checkpoint_class_names(path: Union[str, os.PathLike]) -> Optional[List[str]]:
    """The ``class_names`` list a training checkpoint stores next to its weights, or ``None``.

    Read with ``weights_only=True`` (no code from the file runs) and memory-mapped where the format
    allows, so the weights are not read twice; a zip whose member sizes do not add up (a zip bomb) is not
    opened. The weights themselves go through the verified load, which reports any damage.
    """
    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file():
        return None
    try:
        if zipfile.is_zipfile(path):
            check_torch_archive(path, crc=False)
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except CheckpointError:
        return None
    except Exception:  # an old (non-zip) file cannot be memory-mapped, or not a torch file at all
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return None
    names = obj.get("class_names") if isinstance(obj, dict) else None
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return list(names)
    return None
