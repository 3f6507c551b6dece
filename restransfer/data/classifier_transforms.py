"""What an image classifier sees: the shorter side resized, per-channel normalisation, and the test views.

Test views (``CROPS``) of one RGB image:

* ``center``: the shorter side resized to ``test_size``, the central ``crop`` x ``crop`` window.
* ``10crop``: the same resize, the four corner crops and the center crop, and their horizontal flips
  (torchvision's ``ten_crop`` order).
* ``fcn``: the whole image with its shorter side at every size of ``scales`` (the paper's {224, 256, 384,
  480, 640}) and its horizontal flip, for a network run fully convolutionally.

Classification training (:mod:`restransfer.classification.data`), classification testing and the
localization task's classifier scores (:mod:`restransfer.inference.classifier`) all prepare images here.
"""

from __future__ import annotations

from typing import List, Sequence

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

__all__ = ["CROPS", "resize_shorter", "normalize", "center_crop", "ten_crops", "image_views"]

CROPS = ("center", "10crop", "fcn")


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8/float (H, W, 3) so that its shorter side is ``size`` (aspect ratio kept)."""
    h, w = img.shape[:2]
    if min(h, w) == size:
        return img
    s = size / min(h, w)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (max(size, round(w * s)), max(size, round(h * s))), interpolation=interp)


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB (H, W, 3) in 0..255 -> float32 (3, H, W) tensor ``(img - mean) / std``."""
    out = (img.astype(np.float32) - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def center_crop(img: np.ndarray, crop: int) -> np.ndarray:
    """The central ``crop`` x ``crop`` window of (H, W, C) ``img``."""
    h, w = img.shape[:2]
    y, x = (h - crop) // 2, (w - crop) // 2
    return img[y : y + crop, x : x + crop]


def ten_crops(img: np.ndarray, crop: int) -> np.ndarray:
    """(10, crop, crop, C): top-left, top-right, bottom-left, bottom-right, center, then the same five of
    the horizontally flipped image (torchvision's ``ten_crop``)."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    return torch.stack(TF.ten_crop(t, [crop, crop])).permute(0, 2, 3, 1).numpy()


def image_views(
    img: np.ndarray, mode: str, *, crop: int, test_size: int, scales: Sequence[int] = ()
) -> List[np.ndarray]:
    """The test views of one RGB image as groups of equally sized views ``(V, H, W, 3)``: one group for
    ``center`` (V=1) and ``10crop`` (V=10), one per scale for ``fcn`` (the image and its flip, V=2)."""
    if mode not in CROPS:
        raise ValueError(f"crops={mode!r} is not one of {', '.join(CROPS)}")
    if mode == "fcn":
        groups = []
        for s in scales:
            r = resize_shorter(img, int(s))
            groups.append(np.stack([r, r[:, ::-1]]))
        return groups
    resized = resize_shorter(img, test_size)
    if mode == "center":
        return [center_crop(resized, crop)[None]]
    return [ten_crops(resized, crop)]
