"""What a ``train_cls`` checkpoint holds beyond the engine's entries, and loading one into a network.

A checkpoint is the engine's dict (``model``, ``optimizer``, ``scheduler``, ``scaler``, ``iteration``, ``rng``,
``config``, ``class_names``, ``pixel_convention``, ``best``) plus ``task: "classification"`` and the network's
``arch``, ``depth``, ``residual``, ``style`` and ``num_classes``. ``model`` is the network's own state dict
(torchvision parameter names for the imagenet arch), so :func:`restransfer.backbone.load_pretrained` reads it
as backbone weights, with the pixel convention the classifier was trained with.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

from ..backbone.weights import PixelConvention, load_pretrained, read_weights
from ..serialization import WeightsError

__all__ = ["TASK", "network_meta", "load_classifier_weights"]

TASK = "classification"


def network_meta(model: nn.Module, arch: str) -> Dict[str, Any]:
    """The entries that describe the network in a checkpoint."""
    return {"task": TASK, "arch": arch, "depth": int(model.depth), "residual": bool(model.residual),
            "style": getattr(model, "style", "pytorch"), "num_classes": int(model.num_classes)}


def load_classifier_weights(model: nn.Module, weights: os.PathLike | str) -> Optional[List[str]]:
    """Load ``weights`` into a classifier built by :func:`~restransfer.classification.config.build_classifier`.

    A ``train_cls`` checkpoint must describe the same network (arch, depth, residual, class count); its pixel
    convention becomes ``model.pixel_convention`` and its class names are returned. Any other source (a
    file, ``torchvision://...``, ``timm://...``) goes through :func:`load_pretrained` with the classifier
    required (imagenet arch only); then None is returned (the columns are the source's own class order).

    Raises:
        WeightsError: unreadable file, another network, missing or mis-shaped weights.
    """
    arch = "cifar" if not hasattr(model, "stages") else "imagenet"
    path = Path(os.path.expanduser(str(weights)))
    meta: Dict[str, Any] = {}
    if path.is_file():
        sd, _, meta = read_weights(path)
    if meta.get("task") != TASK:
        if arch == "cifar":
            raise WeightsError(f"{weights}: not a train_cls checkpoint; the cifar arch loads only those")
        load_pretrained(model, str(weights), strict_classifier=True)
        return None
    want = network_meta(model, arch)
    for key in ("arch", "depth", "residual", "num_classes"):
        if meta.get(key) != want[key]:
            raise WeightsError(f"{weights}: the checkpoint's network has {key}={meta.get(key)!r} but the config builds "
                               f"{key}={want[key]!r}; set model.{key}={meta.get(key)} (model.arch, model.depth, "
                               "model.residual and model.num_classes must match the checkpoint)")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(f"{weights}: the weights do not fit the network: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}")
    model.pixel_convention = PixelConvention.from_dict(meta["pixel_convention"], meta.get("style"))
    names = meta.get("class_names")
    return [str(n) for n in names] if names else None
