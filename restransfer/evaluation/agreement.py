"""How far two detectors' outputs for one image agree (one-to-one matching by label and IoU)."""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["detection_agreement", "match_detections"]


def match_detections(
    pred: Dict[str, Tensor], ref: Dict[str, Tensor], iou_threshold: float = 0.9
) -> List[Tuple[int, int, float]]:
    """One-to-one matches ``(ref index, pred index, IoU)`` between two detection sets: same label and IoU
    above ``iou_threshold``, the highest-IoU pairs first (greedy).

    Order-insensitive: detections whose scores tie may come out in another order.
    """
    pb, rb = pred["boxes"].detach().float().cpu(), ref["boxes"].detach().float().cpu()
    pl, rl = pred["labels"].cpu(), ref["labels"].cpu()
    if len(pb) == 0 or len(rb) == 0:
        return []
    iou = box_iou(rb, pb)
    iou[rl[:, None] != pl[None, :]] = 0
    pairs = (iou > iou_threshold).nonzero().tolist()
    pairs.sort(key=lambda ij: -float(iou[ij[0], ij[1]]))
    used_r, used_p, matches = set(), set(), []
    for i, j in pairs:
        if i not in used_r and j not in used_p:
            used_r.add(i)
            used_p.add(j)
            matches.append((i, j, float(iou[i, j])))
    return matches


def detection_agreement(
    pred: Dict[str, Tensor], ref: Dict[str, Tensor], iou_threshold: float = 0.9
) -> Tuple[float, float]:
    """Fraction of detections that match one-to-one (same label, IoU > ``iou_threshold``;
    :func:`match_detections`), over the larger of the two counts, and the largest box-coordinate difference
    among matched pairs (px).
    """
    n = max(len(pred["boxes"]), len(ref["boxes"]))
    if n == 0:
        return 1.0, 0.0
    if len(pred["boxes"]) == 0 or len(ref["boxes"]) == 0:
        return 0.0, math.inf
    pb, rb = pred["boxes"].detach().float().cpu(), ref["boxes"].detach().float().cpu()
    matches = match_detections(pred, ref, iou_threshold)
    diffs = [0.0] + [float((rb[i] - pb[j]).abs().max()) for i, j, _ in matches]
    return len(matches) / n, max(diffs)
