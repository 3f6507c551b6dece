"""COCO run-length encoding (RLE) of binary masks, one mask at a time.

COCO RLE lists the lengths of alternating runs of 0s and 1s over the image in column-major order,
starting with a (possibly empty) run of 0s; pycocotools compresses those counts into an ASCII string.
Both functions here return json-ready dicts ``{"size": [H, W], "counts": str}`` that are identical to
``pycocotools.mask.encode`` of the full-image mask, without ever holding more than one full-size
``uint8`` mask (:func:`encode_masks`) or anything larger than the box (:func:`encode_patch`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["encode_masks", "encode_patch"]


def _json_ready(rle: Dict[str, Any]) -> Dict[str, Any]:
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def encode_masks(masks: Any, threshold: float = 0.5) -> List[Dict[str, Any]]:
    """Binarise full-image masks (``> threshold``) and encode each as COCO RLE.

    Args:
        masks: (N, 1, H, W) or (N, H, W) probabilities or binary masks, torch tensor (any device) or numpy.
        threshold: a pixel is in the mask when its value is > ``threshold``.

    Returns:
        N dicts ``{"size": [H, W], "counts": str}``. Works through one (H, W) uint8 buffer in the Fortran
        order pycocotools wants, so memory does not grow with N beyond the input itself.
    """
    if not hasattr(masks, "shape"):
        masks = np.asarray(masks)
    shape = tuple(masks.shape)
    if len(shape) == 4:
        if shape[1] != 1:
            raise ValueError(f"expected masks of shape (N, 1, H, W), got {shape}")
        masks = masks[:, 0]
    elif len(shape) != 3:
        raise ValueError(f"expected masks of shape (N, 1, H, W) or (N, H, W), got {shape}")
    n, h, w = int(masks.shape[0]), int(masks.shape[1]), int(masks.shape[2])
    if n == 0:
        return []
    binary = np.empty((h, w, 1), dtype=np.uint8, order="F")
    out = []
    for i in range(n):
        m = masks[i]
        if hasattr(m, "detach"):  # a torch tensor: one binary mask at a time to the host
            binary[:, :, 0] = (m.detach() > threshold).cpu().numpy()
        else:
            np.greater(m, threshold, out=binary[:, :, 0])
        out.append(_json_ready(mask_util.encode(binary)[0]))
    return out


def encode_patch(patch: np.ndarray, top: int, left: int, image_size: Tuple[int, int]) -> Dict[str, Any]:
    """COCO RLE of a full ``image_size`` mask that is 0 everywhere except ``patch`` at (``top``, ``left``).

    Args:
        patch: (h, w) binary array (bool or 0/1 integers), lying inside the image.
        top, left: the image row and column of ``patch[0, 0]``.
        image_size: (H, W) of the image.

    Returns:
        ``{"size": [H, W], "counts": str}``, equal to ``pycocotools.mask.encode`` of the full mask; the work
        and memory are proportional to the patch, not to the image.
    """
    im_h, im_w = int(image_size[0]), int(image_size[1])
    patch = np.asarray(patch)
    if patch.ndim != 2:
        raise ValueError(f"expected a 2-D mask patch, got shape {patch.shape}")
    ph, pw = patch.shape
    if top < 0 or left < 0 or top + ph > im_h or left + pw > im_w:
        raise ValueError(f"a {ph}x{pw} patch at row {top}, column {left} does not fit in a {im_h}x{im_w} image")
    # Runs are column-major: a run starts where a pixel differs from the one above it in the same column,
    # at the top of a column whose first pixel is on and just below a column whose last pixel is on.
    # The row differences are taken in the patch's own layout (no transposing copy) and sorted after.
    on = patch.astype(bool, copy=False)
    starts = np.empty(0, dtype=np.int64)
    if on.size:
        rows, cols = np.divmod(np.flatnonzero(on[1:] != on[:-1]), pw)  # 2-D np.nonzero is ~10x slower
        starts = np.concatenate(
            (cols * im_h + rows + 1, np.flatnonzero(on[0]) * im_h, np.flatnonzero(on[-1]) * im_h + ph)
        ).astype(np.int64) + (left * im_h + top)
        # a column ending on and the next one starting on at the same flat index make one run: drop both
        starts, seen = np.unique(starts, return_counts=True)
        starts = starts[seen == 1]
    counts = np.diff(np.concatenate(([0], starts, [im_h * im_w])))
    if len(counts) > 1 and counts[-1] == 0:  # the mask ends on the last pixel: no trailing run of 0s
        counts = counts[:-1]
    rle = mask_util.frPyObjects({"size": [im_h, im_w], "counts": counts.astype(np.uint32)}, im_h, im_w)
    return _json_ready(rle)
