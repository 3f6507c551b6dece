"""Image-classifier scores over a list of images: the one scoring loop of classification testing
(center, 10-crop, fully convolutional) and of the localization task's classifier mode.

The test views and the normalisation come from :mod:`restransfer.data.classifier_transforms`; each
image's views go through ``model.classify`` in batches of up to ``batch_size`` images, and the view scores
of an image are averaged (softmax probabilities, or raw logits with ``softmax=False``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..backbone import ResNet
from ..backbone.weights import load_pretrained_state, read_pretrained, read_weights
from ..data.classifier_transforms import image_views, normalize
from ..data.image_io import read_image
from ..errors import ConfigError

__all__ = ["classifier_scores", "classifier_scores_from_model", "load_classifier", "IMAGENET_MEAN", "IMAGENET_STD"]

# torchvision's and timm's ImageNet normalisation in 0..255 units
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

ImageItem = Union[str, os.PathLike, np.ndarray]


def _rgb(item: ImageItem) -> np.ndarray:
    """An image file (decoded to RGB uint8) or an (H, W, 3) RGB array as it is."""
    return read_image(item) if isinstance(item, (str, os.PathLike)) else np.asarray(item)


@torch.no_grad()
def classifier_scores(
    model: nn.Module,
    images: Union[Sequence[ImageItem], Any],
    *,
    mode: str = "center",
    crop: int = 224,
    test_size: int = 256,
    scales: Sequence[int] = (),
    mean: Sequence[float] = (0, 0, 0),
    std: Sequence[float] = (1, 1, 1),
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    bgr: bool = False,
    softmax: bool = True,
) -> np.ndarray:
    """(N, C) scores of ``model.classify`` for N ``images``, averaged over each image's test views (``mode``,
    ``crop``, ``test_size``, ``scales``: see :func:`~restransfer.data.classifier_transforms.image_views`).

    ``images``: image files or RGB uint8 arrays, or a dataset with ``len()`` and ``read(i)`` (the RGB image, or
    None for one that cannot be read, e.g. :class:`~restransfer.classification.data.ClassificationDataset`):
    the row of an image it cannot read is NaN. ``mean``/``std`` are in 0..255 units; ``bgr`` feeds the channels
    in BGR order (MSRA weights); ``softmax``: average class probabilities (testing), else the logits (a single
    view's logits are returned as they are).
    """
    n = len(images)
    read: Callable[[int], Optional[np.ndarray]] = images.read if hasattr(images, "read") else lambda i: _rgb(images[i])
    model.eval()
    acc: Dict[int, torch.Tensor] = {}
    counts: Dict[int, int] = {}
    pending: List[Tuple[int, torch.Tensor]] = []  # (image index, its views) of one batch

    def flush() -> None:
        if not pending:
            return
        x = torch.cat([v for _, v in pending]).to(device)
        scores = model.classify(x).float()
        scores = (torch.softmax(scores, dim=1) if softmax else scores).cpu()
        for (i, _), s in zip(pending, scores.split([len(v) for _, v in pending])):
            acc[i] = acc.get(i, 0) + s.sum(0)
            counts[i] = counts.get(i, 0) + len(s)
        pending.clear()

    for i in range(n):
        img = read(i)
        if img is None:  # unreadable: the reader warned; its row is NaN
            continue
        for group in image_views(img, mode, crop=crop, test_size=test_size, scales=scales):
            views = torch.stack([normalize(v[..., ::-1] if bgr else v, mean, std) for v in group])
            # one batch holds views of one size, and at most batch_size images
            if pending and (views.shape[1:] != pending[0][1].shape[1:] or len(pending) >= batch_size):
                flush()
            pending.append((i, views))
        if mode == "fcn":
            flush()  # views of other images have other sizes
    flush()
    if not acc:
        return np.full((n, 0), np.nan, np.float32)
    num_classes = len(next(iter(acc.values())))
    return np.stack(
        [(acc[i] / counts[i]).numpy() if i in acc else np.full(num_classes, np.nan, np.float32) for i in range(n)]
    )


def classifier_scores_from_model(
    model: nn.Module,
    image_paths: Sequence[ImageItem],
    *,
    device: str = "cpu",
    batch_size: int = 32,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    bgr: bool = False,
) -> np.ndarray:
    """Classifier logits (N, C) of ``model.classify`` (e.g. ``restransfer.backbone.ResNet(101, num_classes=1000)``)
    over images, with the standard single-crop test transform: shorter side to ``resize``, center ``crop``,
    per-channel ``(x - mean) / std`` in 0..255 units (``bgr``: channels in BGR order, for MSRA weights).
    The localization task's classifier mode; the same loop as classification's ``center`` testing."""
    model.eval().to(device)
    return classifier_scores(
        model,
        list(image_paths),
        mode="center",
        crop=crop,
        test_size=resize,
        mean=mean,
        std=std,
        batch_size=batch_size,
        device=device,
        bgr=bgr,
        softmax=False,
    )


def load_classifier(depth: int, weights: str, *, style: str = "pytorch") -> ResNet:
    """``restransfer.backbone.ResNet(depth, num_classes=1000)`` with ImageNet ``weights`` (a file,
    ``torchvision://...`` or ``timm://...``); its ``pixel_convention`` says how to normalize images.

    A checkpoint of ``tools/train_cls.py`` describes its own network: its depth, style and class count are
    used instead of the arguments, and its ``class_names`` are kept on the model as ``class_names``."""
    meta = read_weights(os.path.expanduser(weights))[2] if os.path.isfile(os.path.expanduser(weights)) else {}
    if meta.get("task") == "classification":
        if meta.get("arch") != "imagenet":
            raise ConfigError(
                f"{weights}: a {meta.get('arch')}-arch classifier; localization needs an imagenet-arch "
                "ResNet (model.arch: imagenet)"
            )
        depth, style = int(meta["depth"]), str(meta.get("style", style))
    pretrained = read_pretrained(weights)  # the network is built with the convention its weights carry
    model = ResNet(
        depth,
        style=style,
        num_classes=int(meta.get("num_classes", 1000)),
        pixel_convention=pretrained.convention,
        class_names=list(meta.get("class_names") or []),
    )
    load_pretrained_state(model, pretrained, strict_classifier=True)
    return model
