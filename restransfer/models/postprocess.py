"""Detector post-processing: pasting mask probabilities into images, binary masks and their formats.

torchvision pastes every detection's mask into a full-image float tensor and stacks them. Here
:class:`FastDetectionTransform` (installed by :func:`use_fast_postprocess`) pastes into one
preallocated ``(N, 1, H, W)`` tensor instead, with the same numbers. The Predictor and evaluation go
further (:func:`deferred_mask_paste`, :func:`detection_masks`): they take the low-resolution mask
probabilities and paste binary masks one box at a time, as bool arrays or straight to COCO RLE
(:func:`paste_masks_binary`), so no full-image float mask exists.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

from ..rle import encode_masks, encode_patch
from .transform import DetectionTransform

__all__ = [
    "MASK_FORMATS",
    "check_mask_format",
    "paste_masks",
    "paste_masks_binary",
    "detection_masks",
    "FastDetectionTransform",
    "use_fast_postprocess",
    "deferred_mask_paste",
]

MASK_FORMATS = ("bool", "rle")


def check_mask_format(format: str) -> str:
    """``format`` if it is one of :data:`MASK_FORMATS`, else a ValueError naming the valid ones."""
    if format not in MASK_FORMATS:
        raise ValueError(f"mask format must be one of {', '.join(map(repr, MASK_FORMATS))}, got {format!r}")
    return format


def _box_patches(
    masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int], padding: int, threshold: Optional[float] = None
) -> Iterator[Tuple[int, int, int, Tensor]]:
    """For each detection whose pasted mask meets the image: ``(index, top, left, patch)``, where ``patch``
    is the part inside the image of its mask resized to the integer box exactly as torchvision's
    ``paste_masks_in_image`` computes it (1-pixel padding, box expansion, bilinear resize), as float
    probabilities or, with ``threshold``, as bool ``patch > threshold``. Float memory is one box at a time.
    """
    im_h, im_w = int(image_shape[0]), int(image_shape[1])
    padded, scale = expand_masks(masks, padding=padding)
    # one host transfer for all boxes instead of several scalar reads per box
    for i, (x0, y0, x1, y1) in enumerate(expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, im_w), max(y0, 0), min(y1 + 1, im_h)
        if xb <= xa or yb <= ya:
            continue
        resized = F.interpolate(padded[i : i + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        patch = resized[ya - y0 : yb - y0, xa - x0 : xb - x0]
        del resized
        if threshold is not None:
            patch = patch > threshold  # the box-sized float result is freed here
        yield i, ya, xa, patch
        del patch


def paste_masks(masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int], padding: int = 1) -> Tensor:
    """Paste per-box mask probabilities into full images, exactly as torchvision's
    ``paste_masks_in_image`` (1-pixel padding, box expansion, bilinear resize to the integer box size),
    but into one preallocated output.

    Args:
        masks: (N, 1, M, M) probabilities.
        boxes: (N, 4) float xyxy in pixels of the output image.
        image_shape: (H, W) of the output image.

    Returns:
        (N, 1, H, W) probabilities, zero outside each box. This is 4 bytes per pixel and detection: for
        binary masks use :func:`paste_masks_binary`, which never holds them.
    """
    out = masks.new_zeros((masks.shape[0], 1, int(image_shape[0]), int(image_shape[1])))
    for i, top, left, patch in _box_patches(masks, boxes, image_shape, padding):
        out[i, 0, top : top + patch.shape[0], left : left + patch.shape[1]] = patch
    return out


def paste_masks_binary(
    masks: Tensor,
    boxes: Tensor,
    image_shape: Tuple[int, int],
    threshold: float = 0.5,
    format: str = "bool",
    padding: int = 1,
) -> Union[np.ndarray, List[Dict[str, Any]]]:
    """``paste_masks(masks, boxes, image_shape) > threshold``, without the float images.

    Each detection's mask is resized and thresholded inside its box only, then written into the
    output, so memory is the output plus one box of floats.

    Args:
        masks: (N, 1, M, M) probabilities (any device).
        boxes: (N, 4) float xyxy in pixels of the output image.
        image_shape: (H, W) of the output image.
        threshold: a pixel is on when its probability is > ``threshold``.
        format: ``"bool"``: a numpy bool (N, H, W) array; ``"rle"``: N COCO RLE dicts
            ``{"size": [H, W], "counts": str}`` (pycocotools' compressed format, json-ready), encoded from
            the box alone, so memory no longer grows with H x W x N.
    """
    check_mask_format(format)
    im_h, im_w = int(image_shape[0]), int(image_shape[1])
    n = int(masks.shape[0])
    if format == "bool":
        dense = np.zeros((n, im_h, im_w), dtype=bool)
        for i, top, left, patch in _box_patches(masks, boxes, image_shape, padding, threshold):
            dense[i, top : top + patch.shape[0], left : left + patch.shape[1]] = patch.cpu().numpy()
        return dense
    empty = encode_patch(np.zeros((0, 0), dtype=bool), 0, 0, (im_h, im_w))["counts"]
    rles = [{"size": [im_h, im_w], "counts": empty} for _ in range(n)]  # for boxes that miss the image
    for i, top, left, patch in _box_patches(masks, boxes, image_shape, padding, threshold):
        rles[i] = encode_patch(patch.cpu().numpy(), top, left, (im_h, im_w))
    return rles


def detection_masks(
    output: Dict[str, Tensor],
    image_shape: Tuple[int, int],
    threshold: float = 0.5,
    format: str = "bool",
    keep: Optional[Tensor] = None,
) -> Union[np.ndarray, List[Dict[str, Any]]]:
    """Binary masks of one image's detector output, in ``format`` (see :func:`paste_masks_binary`).

    ``output`` holds either ``"mask_probs"`` (N, 1, M, M) with ``"boxes"`` in image pixels, as a model
    returns them inside :func:`deferred_mask_paste` (pasted here, one box at a time), or torchvision's
    full-image ``"masks"`` (N, 1, H, W) probabilities (thresholded here). ``keep`` selects detections
    (a bool mask or indices over N).
    """
    check_mask_format(format)
    if "mask_probs" in output:
        probs, boxes = output["mask_probs"], output["boxes"]
        if keep is not None:
            probs, boxes = probs[keep], boxes[keep]
        return paste_masks_binary(probs, boxes, image_shape, threshold, format)
    masks = output["masks"]
    if keep is not None:
        masks = masks[keep]
    if format == "rle":
        return encode_masks(masks, threshold)
    return (masks[:, 0] > threshold).cpu().numpy()


class FastDetectionTransform(DetectionTransform):
    """:class:`DetectionTransform` that pastes masks with :func:`paste_masks` (one preallocated output).
    Same outputs; installed on a model by :func:`use_fast_postprocess`."""

    def paste_masks(self, masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int]) -> Tensor:
        return paste_masks(masks, boxes, image_shape)


def use_fast_postprocess(model: nn.Module) -> None:
    """Replace ``model.transform`` (a plain :class:`DetectionTransform`) by an otherwise identical
    :class:`FastDetectionTransform`; any other transform is left as it is."""
    if type(model.transform) is DetectionTransform:
        model.transform = FastDetectionTransform(**model.transform.options()).train(model.transform.training)


@contextlib.contextmanager
def deferred_mask_paste(model: nn.Module) -> Iterator[bool]:
    """Within this context, ``model(images)`` returns low-resolution ``"mask_probs"`` instead of pasted
    full-image ``"masks"``; :func:`detection_masks` then pastes binary masks one box at a time.

    Yields whether the model defers (its transform is a :class:`DetectionTransform`); a model with another
    transform keeps returning ``"masks"``, which :func:`detection_masks` accepts too. The model is
    restored on exit, so calls outside the context keep torchvision's output contract.
    """
    transform = getattr(model, "transform", None)
    if not isinstance(transform, DetectionTransform):
        yield False
        return
    had_flag = "defer_mask_paste" in vars(transform)
    flag = vars(transform).get("defer_mask_paste")
    transform.defer_mask_paste = True
    try:
        yield True
    finally:
        if had_flag:
            transform.defer_mask_paste = flag
        else:
            del transform.defer_mask_paste
