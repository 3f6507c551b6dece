"""Detections from per-class scores and boxes, with the ResNet paper's box voting (appendix B).

Pure functions on tensors: :func:`class_candidates` flattens a box head's output into one candidate per
(region, foreground class) exactly as torchvision's ``RoIHeads.postprocess_detections`` does before its
NMS; :func:`select_detections` applies per-class NMS, keeps the top detections and optionally replaces
each kept box by its :func:`box_voting` average. Iterative box refinement (score the regressed boxes
again and take the union with the first predictions) is in :class:`restransfer.models.system.DetectionSystem`,
which feeds these functions the union.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, remove_small_boxes

__all__ = ["class_candidates", "box_voting", "select_detections", "refined_boxes"]


def class_candidates(probs: Tensor, boxes: Tensor, score_thresh: float) -> Tuple[Tensor, Tensor, Tensor]:
    """``probs (R, K+1)`` (column 0 background) and decoded, clipped ``boxes (R, K+1, 4)`` -> flat
    ``(boxes (N, 4), scores (N,), labels (N,))`` of the foreground classes scoring above ``score_thresh``,
    without empty boxes, in region-major order (torchvision's order)."""
    labels = torch.arange(probs.shape[1], device=probs.device).view(1, -1).expand_as(probs)
    flat_boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), probs[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
    inds = torch.where(scores > score_thresh)[0]
    flat_boxes, scores, labels = flat_boxes[inds], scores[inds], labels[inds]
    keep = remove_small_boxes(flat_boxes, min_size=1e-2)
    return flat_boxes[keep], scores[keep], labels[keep]


def box_voting(
    kept_boxes: Tensor, kept_labels: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float = 0.5
) -> Tensor:
    """Each kept box ``(k, 4)`` becomes the score-weighted mean of the candidate ``boxes (n, 4)`` of its class
    that overlap it at IoU >= ``iou_thresh`` (the kept box is one of the candidates, so the set is never
    empty). Returns the new ``(k, 4)`` boxes."""
    if kept_boxes.numel() == 0:
        return kept_boxes
    near = (box_iou(kept_boxes, boxes) >= iou_thresh) & (kept_labels[:, None] == labels[None, :])
    weights = near.to(scores.dtype) * scores[None, :]
    return (weights @ boxes) / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    nms_thresh: float,
    max_detections: int,
    voting_iou: Optional[float] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-class NMS at ``nms_thresh``, the ``max_detections`` best kept, then (with ``voting_iou``) box
    voting over all the candidates. Returns ``(boxes, scores, labels)`` sorted by decreasing score."""
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
    kept_boxes, kept_scores, kept_labels = boxes[keep], scores[keep], labels[keep]
    if voting_iou is not None:
        kept_boxes = box_voting(kept_boxes, kept_labels, boxes, scores, labels, voting_iou)
    return kept_boxes, kept_scores, kept_labels


def refined_boxes(probs: Tensor, boxes: Tensor) -> Tensor:
    """Each region's regressed box ``(R, 4)``: its box for its highest-scoring foreground class."""
    best = probs[:, 1:].argmax(dim=1) + 1
    return boxes[torch.arange(boxes.shape[0], device=boxes.device), best]
