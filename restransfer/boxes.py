"""Box conventions at the file boundary.

Inside the toolkit every box is float ``xyxy`` in absolute pixels of the image as stored, with
``x2``/``y2`` the *exclusive* right/bottom edge, so that ``width = x2 - x1``.

Files use other conventions; each has exactly one pair of conversion functions here:

* COCO json: ``[x, y, w, h]`` in pixels (``xywh``).
* ILSVRC devkit (ImageNet-DET and CLS-LOC XML files and submissions): inclusive integer pixel
  indices ``xmin, ymin, xmax, ymax`` where ``width = xmax - xmin + 1``. Pixel index ``i`` covers the
  interval ``[i, i + 1)``, so the internal box is ``(xmin, ymin, xmax + 1, ymax + 1)`` and the way back
  is ``(x1, y1, x2 - 1, y2 - 1)``. Integer devkit boxes round-trip exactly.
* PASCAL VOC (XML annotations and the devkit's ``comp4_det_test_<class>.txt`` results): inclusive pixel
  indices that start at **1** (``width = xmax - xmin + 1``). Pixel ``i`` (1-based) covers ``[i - 1, i)``, so
  the internal box is ``(xmin - 1, ymin - 1, xmax, ymax)`` and the way back is ``(x1 + 1, y1 + 1, x2, y2)``.
  Integer VOC boxes round-trip exactly; a whole 500 x 375 image is ``(1, 1, 500, 375)`` in VOC and
  ``(0, 0, 500, 375)`` inside.

The devkits' IoU on inclusive boxes (:func:`inclusive_iou`) lives here too, next to the convention it
depends on.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "xywh_to_xyxy",
    "xyxy_to_xywh",
    "devkit_to_xyxy",
    "xyxy_to_devkit",
    "voc_to_xyxy",
    "xyxy_to_voc",
    "inclusive_iou",
]


def _as_array(boxes: ArrayLike) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 4) if arr.size else arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4), got {arr.shape}")
    return arr


def xywh_to_xyxy(boxes: ArrayLike) -> np.ndarray:
    """COCO ``[x, y, w, h]`` (N, 4) -> internal ``xyxy`` (N, 4) float64."""
    b = _as_array(boxes).copy()
    b[:, 2:] += b[:, :2]
    return b


def xyxy_to_xywh(boxes: ArrayLike) -> np.ndarray:
    """Internal ``xyxy`` (N, 4) -> COCO ``[x, y, w, h]`` (N, 4) float64."""
    b = _as_array(boxes).copy()
    b[:, 2:] -= b[:, :2]
    return b


def devkit_to_xyxy(boxes: ArrayLike) -> np.ndarray:
    """ILSVRC devkit inclusive ``xmin, ymin, xmax, ymax`` (N, 4) -> internal ``xyxy`` (N, 4)."""
    b = _as_array(boxes).copy()
    b[:, 2:] += 1.0
    return b


def xyxy_to_devkit(boxes: ArrayLike) -> np.ndarray:
    """Internal ``xyxy`` (N, 4) -> ILSVRC devkit inclusive ``xmin, ymin, xmax, ymax`` (N, 4)."""
    b = _as_array(boxes).copy()
    b[:, 2:] -= 1.0
    return b


def voc_to_xyxy(boxes: ArrayLike) -> np.ndarray:
    """PASCAL VOC 1-based inclusive ``xmin, ymin, xmax, ymax`` (N, 4) -> internal ``xyxy`` (N, 4):
    ``(xmin - 1, ymin - 1, xmax, ymax)``."""
    b = _as_array(boxes).copy()
    b[:, :2] -= 1.0
    return b


def xyxy_to_voc(boxes: ArrayLike) -> np.ndarray:
    """Internal ``xyxy`` (N, 4) -> PASCAL VOC 1-based inclusive ``xmin, ymin, xmax, ymax`` (N, 4):
    ``(x1 + 1, y1 + 1, x2, y2)``."""
    b = _as_array(boxes).copy()
    b[:, :2] += 1.0
    return b


def inclusive_iou(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """IoU of devkit boxes ``a`` and ``b`` (broadcastable ``(..., 4)``) with inclusive pixel indices.

    As in the ILSVRC devkits (``eval_detection.m``, ``eval_clsloc.m``) and PASCAL VOC's ``VOCevaldet.m``
    (``a`` the detection, ``b`` the ground truth), with their operations in their order, so threshold
    decisions agree bit for bit: intersection width ``min(x2) - max(x1) + 1``, likewise
    the height; boxes that do not overlap (either not positive) get -1; otherwise
    ``iw * ih / (area_a + area_b - iw * ih)`` with ``area = (x2 - x1 + 1) * (y2 - y1 + 1)``, in float64.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
    inter = iw * ih
    union = (
        (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
        + (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
        - inter
    )
    overlap = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), -1.0)
