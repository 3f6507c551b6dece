"""Classification testing: center crop, the paper's 10-crop testing and fully-convolutional multi-scale
testing, and the top-1 / top-5 error.

* ``center``: the shorter side resized to ``test_size``, the central ``crop`` x ``crop`` window.
* ``10crop``: the same resize, the four corner crops and the center crop, and their horizontal flips
  (torchvision's ``ten_crop`` order); the softmax scores of the ten views are averaged.
* ``fcn``: the whole image with its shorter side at every size of ``scales`` (the paper's {224, 256, 384,
  480, 640}) and its horizontal flip, each through the network as a fully convolutional net (global
  average pooling over whatever spatial size it has); the softmax scores are averaged over all views.

Errors are percentages: an image counts as a top-k error when its label is not among the k highest scores.
The views (:mod:`restransfer.data.classifier_transforms`) and the scoring loop
(:func:`restransfer.inference.classifier.classifier_scores`) are the ones the localization task's classifier
mode uses; ``metrics.json`` goes through the one metrics writer (:mod:`restransfer.evaluation.metrics_file`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ..data.classifier_transforms import center_crop, image_views, ten_crops
from ..devices import resolve_device
from ..errors import ConfigError, DataError
from ..evaluation.metrics_file import write_metrics
from ..inference.classifier import classifier_scores
from .config import build_classifier
from .data import ClassificationDataset, dataset_from_spec

logger = logging.getLogger(__name__)

__all__ = [
    "topk_errors",
    "ten_crops",
    "center_crop",
    "image_views",
    "classifier_scores",
    "evaluate_classifier",
    "write_metrics",
]


def topk_errors(
    scores: np.ndarray | torch.Tensor, labels: Sequence[int], ks: Sequence[int] = (1, 5)
) -> Dict[str, float]:
    """``{"top1_error": %, "top5_error": %}`` (one key per k) of (N, C) ``scores`` against (N,) labels.
    With fewer than k classes every image is a top-k hit."""
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(-1)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(
            f"scores must be (N, C) with one row per label, got {tuple(scores.shape)} for {len(labels)} labels"
        )
    if not len(labels):
        raise DataError("no images to evaluate")
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        hit = (top == labels[:, None]).any(dim=1)
        out[f"top{k}_error"] = 100.0 * float((~hit).double().mean())
    return out


def evaluate_classifier(model: nn.Module, dataset: ClassificationDataset, **kwargs) -> Dict[str, float]:
    """``{"top1_error", "top5_error"}`` in percent of ``model`` on ``dataset`` (keyword arguments as in
    :func:`classifier_scores`). Images that cannot be read are left out with a warning, and counted in
    ``"num_skipped"`` (present only when some were); none readable is a :class:`DataError`."""
    scores = classifier_scores(model, dataset, **kwargs)
    readable = ~dataset.unreadable
    if not readable.any():
        raise DataError(
            f"none of the {len(dataset)} test images can be read (first: "
            f"{', '.join(map(str, dataset.skipped_names()))}; see the warnings above); check "
            "data.test's image_root"
        )
    metrics: Dict[str, float] = topk_errors(scores[readable], dataset.labels[readable])
    if not readable.all():
        metrics["num_skipped"] = int((~readable).sum())
        logger.warning(
            "%d of %d test images could not be read and are left out of the error rates (first: %s)",
            metrics["num_skipped"],
            len(dataset),
            ", ".join(map(str, dataset.skipped_names())),
        )
    return metrics


def cfg_test_kwargs(cfg: DictConfig, mode: Optional[str] = None, scales: Optional[Sequence[int]] = None) -> dict:
    """The :func:`classifier_scores` keyword arguments of a classification config (``mode``/``scales``
    override ``test.crops``/``test.scales``)."""
    return dict(
        mode=mode or cfg.test.crops,
        crop=cfg.input.crop,
        test_size=cfg.input.test_size,
        scales=list(scales) if scales else list(cfg.test.scales),
        mean=tuple(cfg.input.pixel_mean),
        std=tuple(cfg.input.pixel_std),
        batch_size=cfg.test.ims_per_batch,
    )


def run_cls_evaluation(
    cfg: DictConfig,
    weights: os.PathLike | str,
    *,
    mode: Optional[str] = None,
    scales: Optional[Sequence[int]] = None,
    output: Optional[os.PathLike | str] = None,
) -> Dict[str, float]:
    """Load ``weights`` (a ``train_cls`` checkpoint, or ResNet ImageNet weights for the imagenet arch) into the
    config's network, test it on ``data.test`` and write ``metrics.json`` (``output``, default
    ``output_dir/metrics.json``)."""
    if cfg.data.test is None:
        raise ConfigError("evaluation needs data.test in the config ({image_root: DIR, format: ...})")
    model = build_classifier(cfg, weights)
    class_names = model.class_names
    dataset = dataset_from_spec(
        cfg.data.test,
        class_names,
        allow_outside_root=cfg.data.allow_outside_root,
        max_image_pixels=cfg.data.max_image_pixels,
    )
    if class_names is None and len(dataset.class_names) != cfg.model.num_classes:
        raise DataError(
            f"{weights} carries no class names and the test set has {len(dataset.class_names)} classes, "
            f"not the model's {cfg.model.num_classes}: its columns cannot be matched to the test classes "
            "(for ImageNet weights the test folders must be all 1000 WNIDs, in sorted order)"
        )
    device = resolve_device(cfg.device)
    kwargs = cfg_test_kwargs(cfg, mode, scales)
    conv = model.pixel_convention
    kwargs.update(mean=conv.mean, std=conv.std, bgr=conv.channel_order == "BGR")
    metrics = evaluate_classifier(model.to(device), dataset, device=device, **kwargs)
    metrics.update(crops=kwargs["mode"], num_images=len(dataset))
    if kwargs["mode"] == "fcn":
        metrics["scales"] = kwargs["scales"]
    path = Path(output) if output else Path(cfg.output_dir) / "metrics.json"
    write_metrics(metrics, path)
    logger.info(
        "%s testing on %d images: top-1 error %.2f%%, top-5 error %.2f%% (%s)",
        kwargs["mode"],
        len(dataset),
        metrics["top1_error"],
        metrics["top5_error"],
        path,
    )
    return metrics
