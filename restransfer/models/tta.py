"""Multi-scale and flipped testing: the geometry of the test views and the paper's maxout scale rule.

``test.aug.merge: union`` runs the detector on every scale (and its horizontal flip), maps the boxes back
to the image and merges them (per-class NMS, then box voting; masks averaged over the views);
``merge: maxout`` (C4, He et al. 2015 appendix B, after SPPnet / Fast R-CNN) keeps the proposals of the
single test scale and pools each region from two adjacent scales of a feature pyramid, chosen by
:func:`maxout_scale_pair`, merged by element-wise max before the res5 head. Both run in
:class:`restransfer.models.system.DetectionSystem`.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["flip_boxes", "maxout_scale_pair", "MAXOUT_TRAIN_SIZE"]

# the side of the region the ImageNet-pretrained res5 head saw in training (224 x 224 crops)
MAXOUT_TRAIN_SIZE = 224.0


def flip_boxes(boxes: Tensor, width: float) -> Tensor:
    """xyxy ``boxes (N, 4)`` of an image ``width`` pixels wide -> the same boxes in its horizontal mirror
    (its own inverse)."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def maxout_scale_pair(
    widths: Tensor, heights: Tensor, factors: Sequence[float], train_size: float = MAXOUT_TRAIN_SIZE
) -> Tuple[Tensor, Tensor]:
    """The two adjacent pyramid scales each region is pooled from in maxout testing.

    Args:
        widths, heights: ``(R,)`` region sizes in pixels of the original image.
        factors: the pyramid's resize factors (resized side / original side), in increasing order.
        train_size: the side of the training-scale region (224 for an ImageNet-pretrained head).

    Returns:
        ``(best, other)``, ``(R,)`` indices into ``factors``: ``best`` minimises ``|s w * s h - train_size^2|``
        (the scale where the region's area is closest to the training area), ``other`` is the neighbour of
        ``best`` (one scale up or down) whose area is closer to it; with one scale both are 0.
    """
    f = torch.as_tensor(list(factors), dtype=torch.float64, device=widths.device)
    if f.numel() == 0 or bool((f[1:] <= f[:-1]).any()):
        raise ValueError(f"factors must be a non-empty increasing sequence, got {list(factors)}")
    area = (widths.double() * heights.double())[:, None]
    dist = (area * f[None, :] ** 2 - train_size**2).abs()
    best = dist.argmin(dim=1)
    last = f.numel() - 1
    lower, upper = (best - 1).clamp(min=0), (best + 1).clamp(max=last)
    lower_closer = dist.gather(1, lower[:, None])[:, 0] <= dist.gather(1, upper[:, None])[:, 0]
    other = torch.where(best == 0, upper, torch.where(best == last, lower, torch.where(lower_closer, lower, upper)))
    return best, other
