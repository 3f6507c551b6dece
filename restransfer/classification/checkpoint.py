"""What a ``train_cls`` checkpoint holds beyond the engine's entries, and loading one into a network.

A checkpoint is the engine's dict (``model``, ``optimizer``, ``scheduler``, ``scaler``, ``iteration``, ``rng``,
``config``, ``class_names``, ``pixel_convention``, ``best``) plus ``task: "classification"`` and the network's
``arch``, ``depth``, ``residual``, ``style`` and ``num_classes``. ``model`` is the network's own state dict
(torchvision parameter names for the imagenet arch), so :func:`restransfer.backbone.load_pretrained` reads it
as backbone weights, with the pixel convention the classifier was trained with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import Tensor, nn

from ..backbone.weights import (
    PixelConvention,
    PretrainedWeights,
    load_pretrained_state,
    read_pretrained,
    read_weights,
)
from ..serialization import WeightsError

__all__ = ["TASK", "network_meta", "ClassifierWeights", "read_classifier_weights", "load_classifier_state"]

TASK = "classification"


def network_meta(model: nn.Module, arch: str) -> Dict[str, Any]:
    """The entries that describe the network in a checkpoint."""
    return {
        "task": TASK,
        "arch": arch,
        "depth": int(model.depth),
        "residual": bool(model.residual),
        "style": getattr(model, "style", "pytorch"),
        "num_classes": int(model.num_classes),
    }


@dataclass
class ClassifierWeights:
    """Weights for a classifier, read before it is built: a ``train_cls`` checkpoint (its network entries
    ``meta`` and ``state_dict``) or any other ResNet weights (``pretrained``), with the pixel ``convention``
    and the ``class_names`` they carry (None: the source's own class order)."""

    source: str
    convention: Optional[PixelConvention]
    class_names: Optional[List[str]] = None
    meta: Dict[str, Any] = field(default_factory=dict)
    state_dict: Dict[str, Tensor] = field(default_factory=dict)
    pretrained: Optional[PretrainedWeights] = None


def read_classifier_weights(weights: os.PathLike | str, arch: str) -> ClassifierWeights:
    """Read ``weights`` for a classifier of ``arch`` (``imagenet`` or ``cifar``): a ``train_cls`` checkpoint,
    or for the imagenet arch any source :func:`~restransfer.backbone.load_pretrained` reads (a file,
    ``torchvision://...``, ``timm://...``). The builder constructs the network with the convention and class
    names found here, then loads the weights with :func:`load_classifier_state`.

    Raises:
        WeightsError: unreadable file, unrecognized layout, a non-``train_cls`` source for the cifar arch.
    """
    path = Path(os.path.expanduser(str(weights)))
    meta: Dict[str, Any] = {}
    sd: Dict[str, Tensor] = {}
    if path.is_file():
        sd, _, meta = read_weights(path)
    if meta.get("task") != TASK:
        if arch == "cifar":
            raise WeightsError(f"{weights}: not a train_cls checkpoint; the cifar arch loads only those")
        pretrained = read_pretrained(str(weights))
        return ClassifierWeights(str(weights), pretrained.convention, pretrained=pretrained)
    saved = meta.get("pixel_convention")
    names = meta.get("class_names")
    return ClassifierWeights(
        str(weights),
        PixelConvention.from_dict(saved, meta.get("style")) if saved else None,
        [str(n) for n in names] if names else None,
        meta,
        sd,
    )


def load_classifier_state(model: nn.Module, weights: ClassifierWeights) -> None:
    """Load weights of :func:`read_classifier_weights` into a classifier built by
    :func:`~restransfer.classification.config.build_classifier`. A ``train_cls`` checkpoint must describe the
    same network (arch, depth, residual, class count); other weights need the classifier layer (imagenet arch).

    Raises:
        WeightsError: another network, missing or mis-shaped weights.
    """
    if weights.pretrained is not None:
        load_pretrained_state(model, weights.pretrained, strict_classifier=True)
        return
    arch = "cifar" if not hasattr(model, "stages") else "imagenet"
    meta, sd, source = weights.meta, weights.state_dict, weights.source
    want = network_meta(model, arch)
    for key in ("arch", "depth", "residual", "num_classes"):
        if meta.get(key) != want[key]:
            raise WeightsError(
                f"{source}: the checkpoint's network has {key}={meta.get(key)!r} but the config builds "
                f"{key}={want[key]!r}; set model.{key}={meta.get(key)} (model.arch, model.depth, "
                "model.residual and model.num_classes must match the checkpoint)"
            )
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(
            f"{source}: the weights do not fit the network: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
