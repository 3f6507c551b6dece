"""How far two detectors' outputs for one image agree (one-to-one matching by label and IoU)."""
from __future__ import annotations

import math
from typing import Dict, Tuple

from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["detection_agreement"]


def detection_agreement(pred: Dict[str, Tensor], ref: Dict[str, Tensor], iou_threshold: float = 0.9
                        ) -> Tuple[float, float]:
    """Fraction of detections that match one-to-one (same label, IoU > ``iou_threshold``), over the
    larger of the two counts, and the largest box-coordinate difference among matched pairs (px).

    Order-insensitive: detections whose scores tie may come out in another order.
    """
    pb, rb = pred["boxes"].detach().float().cpu(), ref["boxes"].detach().float().cpu()
    pl, rl = pred["labels"].cpu(), ref["labels"].cpu()
    n = max(len(pb), len(rb))
    if n == 0:
        return 1.0, 0.0
    if len(pb) == 0 or len(rb) == 0:
        return 0.0, math.inf
    iou = box_iou(rb, pb)
    iou[rl[:, None] != pl[None, :]] = 0
    pairs = (iou > iou_threshold).nonzero().tolist()
    pairs.sort(key=lambda ij: -float(iou[ij[0], ij[1]]))
    used_r, used_p, diffs = set(), set(), [0.0]
    for i, j in pairs:
        if i not in used_r and j not in used_p:
            used_r.add(i)
            used_p.add(j)
            diffs.append(float((rb[i] - pb[j]).abs().max()))
    return len(used_r) / n, max(diffs)
