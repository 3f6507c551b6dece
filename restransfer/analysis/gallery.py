"""A gallery of predictions drawn on test images: per class the most and least confident correct
detections, the worst false positive and a missed object (IoU .5 matches of the COCO evaluation), taken in
turn over the classes up to ~24 images, drawn with :mod:`restransfer.visualize` on small thumbnails."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..boxes import xywh_to_xyxy
from ..data.image_io import CorruptImageError, read_image
from ..visualize import draw_detections
from .coco_errors import ErrorAnalysis

__all__ = ["GalleryItem", "KINDS", "select_examples", "draw_gallery"]

logger = logging.getLogger(__name__)

KINDS = ("most confident correct", "least confident correct", "worst false positive", "missed")
_T = 1  # the IoU .5 row of the analysis' matches


@dataclass
class GalleryItem:
    """One example: its ``kind`` (of :data:`KINDS`), category index, image id, the featured detection or
    (``missed``) ground-truth annotation id, its score (None for a missed object), the caption and, once
    drawn, the JPEG bytes."""

    kind: str
    category: int
    image_id: int
    ann_id: int
    score: Optional[float]
    caption: str = ""
    jpeg: bytes = b""


def _candidates(analysis: ErrorAnalysis, k: int) -> Dict[str, List[GalleryItem]]:
    tp, fp, fn = [], [], []
    for e in analysis.matches[k]:
        if e is None:
            continue
        dt_m, dt_ig = np.asarray(e["dtMatches"])[_T], np.asarray(e["dtIgnore"])[_T]
        for j, (d, s) in enumerate(zip(e["dtIds"], e["dtScores"])):
            if not dt_ig[j]:
                (tp if dt_m[j] > 0 else fp).append(GalleryItem("", k, e["image_id"], int(d), float(s)))
        gt_m, gt_ig = np.asarray(e["gtMatches"])[_T], np.asarray(e["gtIgnore"])
        for i, g in enumerate(e["gtIds"]):
            if not gt_ig[i] and gt_m[i] == 0:
                fn.append(GalleryItem("", k, e["image_id"], int(g), None))
    tp.sort(key=lambda it: -it.score)
    fp.sort(key=lambda it: -it.score)
    fn.sort(key=lambda it: -float(analysis.ground_truth[it.ann_id].get("area", 0)))
    return {KINDS[0]: tp, KINDS[1]: tp[::-1], KINDS[2]: fp, KINDS[3]: fn}


def select_examples(analysis: ErrorAnalysis, limit: int = 24) -> List[GalleryItem]:
    """Up to ``limit`` examples: round after round over the categories (worst AP50 first), one of each kind
    per category and round, never the same annotation twice."""
    c50 = [analysis.areas(k)["C50"] for k in range(len(analysis.names))]
    order = sorted(range(len(analysis.names)), key=lambda k: (c50[k] is None, c50[k] if c50[k] is not None else 0))
    pools = {k: _candidates(analysis, k) for k in order}
    chosen: List[GalleryItem] = []
    seen = set()
    depth = 0
    while len(chosen) < limit and any(len(p[kind]) > depth for p in pools.values() for kind in KINDS):
        for k in order:
            for kind in KINDS:
                pool = pools[k][kind]
                key = (kind == "missed", pool[depth].ann_id) if depth < len(pool) else None  # gt and dt ids overlap
                if key is not None and len(chosen) < limit and key not in seen:
                    it = pool[depth]
                    seen.add(key)
                    name = analysis.names[k]
                    what = f"{name} {it.score:.2f}" if it.score is not None else name
                    chosen.append(GalleryItem(kind, k, it.image_id, it.ann_id, it.score, f"{kind}: {what}"))
        depth += 1
    return chosen


def _thumbnail(image: np.ndarray, size: int) -> tuple:
    h, w = image.shape[:2]
    scale = size / max(h, w)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp), scale


def draw_gallery(
    analysis: ErrorAnalysis,
    items: List[GalleryItem],
    images: List[Dict[str, Any]],
    image_root: Union[str, os.PathLike],
    size: int = 256,
    score_threshold: float = 0.3,
) -> List[GalleryItem]:
    """Draw each example on its image, scaled so that the longer side is ``size`` px: the featured detection
    (for a missed object, the detections scoring at least ``score_threshold`` that overlap it with IoU >= 0.1,
    of any class) and the category's ground-truth boxes in white, the featured one thicker. Images that
    cannot be read are left out with a warning."""
    files = {im["id"]: im["file_name"] for im in images}
    names = analysis.names
    cat_index = {c: i for i, c in enumerate(analysis.cat_ids)}
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for d in analysis.detections.values():
        by_image.setdefault(d["image_id"], []).append(d)
    drawn = []
    for it in items:
        path = Path(image_root) / files[it.image_id]
        try:
            image = read_image(path)
        except CorruptImageError as e:
            logger.warning("gallery: %s", e)
            continue
        thumb, scale = _thumbnail(image, size)
        if it.kind == "missed":  # what the model put on the missed object, if anything
            g = analysis.ground_truth[it.ann_id]
            cands = [d for d in by_image.get(it.image_id, []) if d["score"] >= score_threshold]
            overlap = mask_utils.iou([d["bbox"] for d in cands], [g["bbox"]], [0]).reshape(-1) if cands else np.zeros(0)
            dets = [d for d, o in zip(cands, overlap) if o >= 0.1]
        else:
            dets = [analysis.detections[it.ann_id]]
        pred = {
            "boxes": xywh_to_xyxy(np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)) * scale,
            "scores": np.array([d["score"] for d in dets]),
            "labels": np.array([cat_index[d["category_id"]] + 1 for d in dets], dtype=np.int64),
        }
        canvas = np.ascontiguousarray(thumb)
        cat_id = analysis.cat_ids[it.category]
        for g in analysis.ground_truth.values():
            if g["image_id"] == it.image_id and g["category_id"] == cat_id:
                x1, y1, x2, y2 = (xywh_to_xyxy(np.array([g["bbox"]], dtype=np.float64))[0] * scale).round().astype(int)
                width = 2 if g["id"] == it.ann_id else 1
                cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), (255, 255, 255), width)
        canvas = draw_detections(canvas, pred, class_names=names, mask_alpha=0.0)
        ok, buf = cv2.imencode(".jpg", canvas[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            it.jpeg = buf.tobytes()
            it.caption = f"{it.caption} ({files[it.image_id]})"
            drawn.append(it)
    return drawn
