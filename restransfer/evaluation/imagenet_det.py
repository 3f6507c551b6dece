"""ImageNet-DET evaluation, identical to the ILSVRC devkit's ``eval_detection.m``.

The protocol (which differs from PASCAL VOC's ``VOCevaldet``):

* A submission has one line per detection: ``<image_index> <DET_id> <confidence> <xmin> <ymin>
  <xmax> <ymax>``. ``image_index`` is the image list's index column (for ``val.txt`` that is its
  1-based line number); boxes are inclusive pixel indices.
* IoU with inclusive coordinates: ``iw = min(x2) - max(x1) + 1``, ``ih`` likewise; boxes overlap only
  if ``iw > 0 and ih > 0``; ``union = w_a * h_a + w_b * h_b - iw * ih`` with ``w = x2 - x1 + 1``.
* Every ground-truth object has its own threshold ``min(0.5, w * h / ((w + 10) * (h + 10)))``.
* Per image, detections are visited by descending confidence (stable: equal confidences keep file
  order). Each takes, among the not yet matched objects of its class whose threshold it passes, the
  one with the highest IoU (the first in XML order on a tie): true positive; none: false positive.
* Blacklisted ``(image, class)`` pairs: those detections count neither way, those objects are not
  positives.
* Per class, detections are sorted by descending confidence (stable, in image-index order), then
  precision/recall are accumulated and AP is the area under the monotone precision envelope at all
  recall points (VOC 2010+). mAP is the mean over classes.

Classes without positives have no defined AP (the devkit returns NaN): they get NaN here and are left
out of the mean.

The matching is vectorized: detection/object pairs of the same image and class are built with numpy,
non-passing pairs dropped, and the greedy assignment runs in rounds over all (image, class) groups at
once; each round settles the next true positive of every group, so the number of rounds is the
largest number of objects of one class in one image.

Submission files, ground-truth readers and the prediction conversion are in
:mod:`restransfer.evaluation.imagenet_det_io` (re-exported here); the IoU is
:func:`restransfer.boxes.inclusive_iou`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from restransfer.boxes import devkit_to_xyxy, inclusive_iou, xyxy_to_xywh
from restransfer.data.ilsvrc import Synsets
from restransfer.data.imagenet_det import read_blacklist, read_synsets
from restransfer.errors import DataError
from restransfer.evaluation.coco import evaluate_coco
from restransfer.evaluation.devkit_records import ClassAPResult
from restransfer.evaluation.imagenet_det_io import (
    DetGroundTruth,
    DetSubmission,
    ground_truth_from_coco,
    load_ground_truth,
    predictions_to_submission,
    read_submission,
    write_submission,
)
from restransfer.evaluation.voc import voc_ap  # VOC 2010+ AP (VOCap.m), which eval_detection.m uses too

__all__ = [
    "DetGroundTruth",
    "DetSubmission",
    "DetEvalResult",
    "object_thresholds",
    "voc_ap",
    "match_detections",
    "evaluate_detections",
    "read_submission",
    "write_submission",
    "read_blacklist",
    "load_ground_truth",
    "ground_truth_from_coco",
    "predictions_to_submission",
    "coco_box_metrics",
    "evaluate_files",
    "evaluate_predictions",
    "metrics_dict",
    "format_table",
]

DEFAULT_IOU_THRESHOLD = 0.5
PIXEL_TOLERANCE = 10.0


# ------------------------------------------------------------------------------------------ records


@dataclass
class DetEvalResult(ClassAPResult):
    """``ap`` (K,) in [0, 1], NaN for classes without positives; ``num_pos`` (K,) positives after the
    blacklist; ``recall``/``precision``: per class, the curves over that class's detections in rank
    order; ``tp``/``fp`` (N,) bool in submission order (both False: ignored by the blacklist);
    ``mean_ap``: mAP over the classes that have positives."""


# ------------------------------------------------------------------------------------ pure functions


def object_thresholds(boxes: np.ndarray) -> np.ndarray:
    """Per-object IoU thresholds ``min(0.5, w*h / ((w+10)(h+10)))`` for devkit boxes (G, 4) -> (G,)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return np.minimum(DEFAULT_IOU_THRESHOLD, (w * h) / ((w + PIXEL_TOLERANCE) * (h + PIXEL_TOLERANCE)))


def _keys(image_ids: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    return image_ids.astype(np.int64) * (num_classes + 1) + labels.astype(np.int64)


def match_detections(
    sub: DetSubmission,
    gt: DetGroundTruth,
    ignored: Optional[np.ndarray] = None,
    gt_ignored: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The devkit's greedy per-image matching, for all images at once.

    Args:
        sub: N detections; ``gt``: G objects.
        ignored: (N,) bool, detections that take part in no matching (blacklisted).
        gt_ignored: (G,) bool, objects that no detection may take (blacklisted).

    Returns:
        tp: (N,) bool in submission order; a detection that is neither tp nor ignored is a false positive.
    """
    n = len(sub)
    k = gt.num_classes
    tp = np.zeros(n, dtype=bool)
    if n == 0 or len(gt.labels) == 0:
        return tp
    # The devkit visits an image's detections by descending confidence, stably: rank by (image, -score, file order).
    order = np.lexsort((-sub.scores, sub.image_ids))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)

    det_key = _keys(sub.image_ids, sub.labels, k)
    gt_key = _keys(gt.obj_image_ids, gt.labels, k)
    usable = np.ones(len(gt_key), dtype=bool) if gt_ignored is None else ~gt_ignored
    gt_idx = np.flatnonzero(usable)
    gt_idx = gt_idx[np.argsort(gt_key[gt_idx], kind="stable")]  # stable: XML order inside a group
    sorted_keys = gt_key[gt_idx]
    lo = np.searchsorted(sorted_keys, det_key, side="left")
    cnt = np.searchsorted(sorted_keys, det_key, side="right") - lo
    if ignored is not None:
        cnt[ignored] = 0

    # All (detection, object) pairs of the same image and class.
    pair_det = np.repeat(np.arange(n), cnt)
    starts = np.cumsum(cnt) - cnt
    pair_gt = gt_idx[lo[pair_det] + np.arange(len(pair_det)) - starts[pair_det]]
    iou = inclusive_iou(sub.boxes[pair_det], gt.boxes[pair_gt])  # -1 where boxes do not overlap
    thr = object_thresholds(gt.boxes)  # positive, so a non-overlapping pair never passes
    passing = iou >= thr[pair_gt]
    pair_det, pair_gt, iou = pair_det[passing], pair_gt[passing], iou[passing]

    # Group-wise order: (image, class), then detection rank, then best IoU, then XML order.
    o = np.lexsort((pair_gt, -iou, rank[pair_det], det_key[pair_det]))
    pair_det, pair_gt = pair_det[o], pair_gt[o]
    group = det_key[pair_det]
    taken = np.zeros(len(gt_key), dtype=bool)
    # Each round: the first remaining pair of each group is its earliest detection that can still match,
    # with its best available object. Every earlier detection of the group lost all its objects to even
    # earlier ones (false positive), so assigning these pairs reproduces the sequential greedy exactly.
    while len(pair_det):
        first = np.flatnonzero(np.concatenate(([True], group[1:] != group[:-1])))
        tp[pair_det[first]] = True
        taken[pair_gt[first]] = True
        keep = ~taken[pair_gt] & ~tp[pair_det]
        pair_det, pair_gt, group = pair_det[keep], pair_gt[keep], group[keep]
    return tp


def evaluate_detections(
    gt: DetGroundTruth,
    sub: DetSubmission,
    blacklist: Optional[np.ndarray] = None,
) -> DetEvalResult:
    """Evaluate a submission as ``eval_detection.m`` does.

    Args:
        gt: ground truth of the image list.
        sub: the detections; every image id must be in ``gt.image_ids`` and every label in 1..K.
        blacklist: optional (B, 2) int array of ``(image index, DET id)`` pairs; pairs of images
            outside the list have no effect.

    Returns:
        A :class:`DetEvalResult` (AP as fractions).

    Raises:
        DataError: a detection of an image outside the list, with a label outside 1..K, or with a
            confidence or box that is not a finite number.
    """
    k = gt.num_classes
    n = len(sub)
    known = np.isin(sub.image_ids, gt.image_ids)
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        raise DataError(
            f"detection {i} (0-based): image index {int(sub.image_ids[i])} is not in the image list; "
            "detections must refer to the list being evaluated"
        )
    bad = (sub.labels < 1) | (sub.labels > k)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"detection {i} (0-based): DET id {int(sub.labels[i])} is outside 1..{k}")
    finite = np.isfinite(sub.scores) & np.isfinite(sub.boxes).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise DataError(f"detection {i} (0-based): confidence and box must be finite numbers")

    ignored = np.zeros(n, dtype=bool)
    gt_ignored = np.zeros(len(gt.labels), dtype=bool)
    if blacklist is not None and len(blacklist):
        bl = np.asarray(blacklist, dtype=np.int64).reshape(-1, 2)
        bl = bl[np.isin(bl[:, 0], gt.image_ids)]  # other images have no effect
        bl_keys = _keys(bl[:, 0], bl[:, 1], k)
        ignored = np.isin(_keys(sub.image_ids, sub.labels, k), bl_keys)
        gt_ignored = np.isin(_keys(gt.obj_image_ids, gt.labels, k), bl_keys)

    tp = match_detections(sub, gt, ignored, gt_ignored)
    fp = ~tp & ~ignored
    num_pos = np.bincount(gt.labels[~gt_ignored], minlength=k + 1)[1:].astype(np.int64)

    # Ignored detections add nothing to the cumulative counts in the devkit (0/0 precision points are
    # skipped by its envelope), so they are simply dropped here. Rank: label, -score, image, file order.
    keep = np.flatnonzero(~ignored)
    o = keep[np.lexsort((sub.image_ids[keep], -sub.scores[keep], sub.labels[keep]))]
    labels_sorted = sub.labels[o]
    bounds = np.searchsorted(labels_sorted, np.arange(1, k + 2))
    ap = np.full(k, np.nan)
    recall: List[np.ndarray] = []
    precision: List[np.ndarray] = []
    for c in range(k):
        seg = o[bounds[c] : bounds[c + 1]]
        ctp = np.cumsum(tp[seg], dtype=np.float64)
        cfp = np.cumsum(fp[seg], dtype=np.float64)
        prec = ctp / (ctp + cfp)
        rec = ctp / num_pos[c] if num_pos[c] > 0 else np.full(len(seg), np.nan)
        recall.append(rec)
        precision.append(prec)
        if num_pos[c] > 0:
            ap[c] = voc_ap(rec, prec)
    return DetEvalResult(ap=ap, num_pos=num_pos, recall=recall, precision=precision, tp=tp, fp=fp)


def coco_box_metrics(gt: DetGroundTruth, sub: DetSubmission) -> Dict[str, float]:
    """The COCO protocol (bbox) on the same ground truth and detections, in percent:
    ``{"AP": mAP@.5:.95, "AP50": mAP@.5}``. The blacklist does not apply here.

    The ground truth becomes the COCO json that ``datasets/prepare_imagenet_det.py`` writes (image id
    = devkit image index, category id = DET id, ``bbox`` from the inclusive box), and
    :func:`restransfer.evaluation.coco.evaluate_coco` computes pycocotools' numbers.
    """
    gt_xywh = xyxy_to_xywh(devkit_to_xyxy(gt.boxes)).tolist()
    dataset = {
        "images": [{"id": i} for i in gt.image_ids.tolist()],
        "annotations": [
            {"id": j + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for j, (im, c, b) in enumerate(zip(gt.obj_image_ids.tolist(), gt.labels.tolist(), gt_xywh))
        ],
        "categories": [{"id": k + 1, "name": w} for k, w in enumerate(gt.wnids)],
    }
    det_xywh = xyxy_to_xywh(devkit_to_xyxy(sub.boxes)).tolist()
    results = [
        {"image_id": im, "category_id": c, "bbox": b, "score": s}
        for im, c, b, s in zip(sub.image_ids.tolist(), sub.labels.tolist(), det_xywh, sub.scores.tolist())
    ]
    bbox = evaluate_coco(dataset, results, ("bbox",), allow_empty=True)["bbox"]  # the devkit scores an empty file too
    return {"AP": bbox["AP"], "AP50": bbox["AP50"]}


# --------------------------------------------------------------------------------------- pipelines


def evaluate_files(
    submission: os.PathLike | str,
    annotations_dir: os.PathLike | str,
    image_list: os.PathLike | str,
    synsets: os.PathLike | str,
    blacklist: Optional[os.PathLike | str] = None,
    with_coco: bool = True,
) -> Tuple[DetEvalResult, DetGroundTruth, Optional[Dict[str, float]]]:
    """Evaluate a submission file against the XML ground truth of an image list, as the devkit is
    called. Returns (devkit result, ground truth, COCO numbers in percent or None)."""
    syn = read_synsets(synsets)
    gt = load_ground_truth(annotations_dir, image_list, syn)
    sub = read_submission(submission, gt.image_ids, len(syn))
    bl = read_blacklist(blacklist, syn) if blacklist else None
    result = evaluate_detections(gt, sub, bl)
    return result, gt, coco_box_metrics(gt, sub) if with_coco else None


def evaluate_predictions(
    predictions: Sequence[Mapping],
    coco: Mapping,
    label_to_cat_id: Optional[Mapping[int, int]] = None,
    blacklist: Optional[os.PathLike | str] = None,
    submission_path: Optional[os.PathLike | str] = None,
    with_coco: bool = True,
) -> Tuple[DetEvalResult, DetGroundTruth, Optional[Dict[str, float]]]:
    """Evaluate the inference engine's per-image predictions on a converted val json (``coco``, a
    dict); optionally write the submission file first. Returns what :func:`evaluate_files` does."""
    gt = ground_truth_from_coco(coco)
    sub = predictions_to_submission(predictions, coco, label_to_cat_id)
    if submission_path is not None:
        write_submission(submission_path, sub)
    bl = read_blacklist(blacklist, Synsets(gt.wnids, gt.names)) if blacklist else None
    result = evaluate_detections(gt, sub, bl)
    return result, gt, coco_box_metrics(gt, sub) if with_coco else None


# ------------------------------------------------------------------------------------------ reports


def metrics_dict(result: DetEvalResult, wnids: Sequence[str], coco: Optional[Mapping[str, float]] = None) -> dict:
    """``{"mAP": .., "AP": {wnid: ..}, "coco": {"AP": .., "AP50": ..}}`` in percent, full precision.
    Classes without positives map to None (JSON null)."""
    out = {
        "mAP": result.mean_ap * 100.0,
        "AP": {w: (None if np.isnan(a) else float(a) * 100.0) for w, a in zip(wnids, result.ap.tolist())},
    }
    if coco is not None:
        out["coco"] = {"AP": float(coco["AP"]), "AP50": float(coco["AP50"])}
    return out


def format_table(
    result: DetEvalResult, gt: DetGroundTruth, coco: Optional[Mapping[str, float]] = None, show: int = 5
) -> str:
    """A table for people: the first and last ``show`` classes (as the devkit demo prints), mAP,
    median AP and the COCO numbers, rounded."""
    names = gt.names or gt.wnids
    k = gt.num_classes
    rows = list(range(k)) if k <= 2 * show else list(range(show)) + [-1] + list(range(k - show, k))
    lines = [f"{'class':<24} {'wnid':<10} {'positives':>9} {'AP':>7}"]
    for c in rows:
        if c < 0:
            lines.append(f"{'... (' + str(k - 2 * show) + ' classes)':<24}")
            continue
        ap = "n/a" if np.isnan(result.ap[c]) else f"{result.ap[c] * 100:.2f}"
        lines.append(f"{names[c][:24]:<24} {gt.wnids[c]:<10} {int(result.num_pos[c]):>9} {ap:>7}")
    valid = result.ap[~np.isnan(result.ap)]
    lines.append("-" * 53)
    lines.append(f"{'mAP@.5 (ILSVRC devkit)':<45} {result.mean_ap * 100:>7.2f}")
    if len(valid):
        lines.append(f"{'median AP':<45} {float(np.median(valid)) * 100:>7.2f}")
    if len(valid) < k:
        lines.append(f"({k - len(valid)} classes without positives are left out of the mean)")
    if coco is not None:
        lines.append(f"{'COCO mAP@.5:.95':<45} {coco['AP']:>7.2f}")
        lines.append(f"{'COCO mAP@.5':<45} {coco['AP50']:>7.2f}")
    return "\n".join(lines)
