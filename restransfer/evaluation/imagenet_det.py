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
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from restransfer.boxes import devkit_to_xyxy, xywh_to_xyxy, xyxy_to_devkit, xyxy_to_xywh
from restransfer.data.imagenet_det import (
    DetFormatError,
    DetSynsets,
    parse_int,
    read_annotation,
    read_image_list,
    read_synsets,
    text_fields,
)
from restransfer.evaluation.coco import evaluate_coco

__all__ = [
    "DetGroundTruth",
    "DetSubmission",
    "DetEvalResult",
    "devkit_iou",
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
class DetGroundTruth:
    """Ground truth of an image list.

    ``image_ids`` (I,) int64: the list's image indices in list order. Objects, grouped by image in
    list order and in XML order inside an image: ``obj_image_ids`` (G,) int64, ``labels`` (G,) int64
    DET ids 1..K, ``boxes`` (G, 4) float64 devkit inclusive. ``wnids``/``names``: class k is
    ``wnids[k - 1]``.
    """

    image_ids: np.ndarray
    obj_image_ids: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    wnids: Tuple[str, ...]
    names: Tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.wnids)


@dataclass
class DetSubmission:
    """Detections in file order: ``image_ids`` (N,) int64, ``labels`` (N,) int64 DET ids,
    ``scores`` (N,) float64, ``boxes`` (N, 4) float64 devkit inclusive."""

    image_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass
class DetEvalResult:
    """``ap`` (K,) in [0, 1], NaN for classes without positives; ``num_pos`` (K,) positives after the
    blacklist; ``recall``/``precision``: per class, the curves over that class's detections in rank
    order; ``tp``/``fp`` (N,) bool in submission order (both False: ignored by the blacklist)."""

    ap: np.ndarray
    num_pos: np.ndarray
    recall: List[np.ndarray]
    precision: List[np.ndarray]
    tp: np.ndarray
    fp: np.ndarray

    @property
    def mean_ap(self) -> float:
        """Mean AP over the classes that have positives (a fraction in [0, 1])."""
        valid = ~np.isnan(self.ap)
        return float(self.ap[valid].mean()) if valid.any() else float("nan")


# ------------------------------------------------------------------------------------ pure functions


def devkit_iou(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Element-wise IoU of inclusive devkit boxes ``a[i]`` and ``b[i]`` ((N, 4) each, float64).

    Returns (iou (N,), overlaps (N,) bool): ``iou`` is only meaningful where ``overlaps``. The operations
    are those of the devkit, in its order, so threshold decisions agree bit for bit.
    """
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1
    overlaps = (iw > 0) & (ih > 0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return iou, overlaps


def object_thresholds(boxes: np.ndarray) -> np.ndarray:
    """Per-object IoU thresholds ``min(0.5, w*h / ((w+10)(h+10)))`` for devkit boxes (G, 4) -> (G,)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return np.minimum(DEFAULT_IOU_THRESHOLD, (w * h) / ((w + PIXEL_TOLERANCE) * (h + PIXEL_TOLERANCE)))


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC 2010+ AP: area under the monotone (right-to-left maximum) precision envelope, summed at
    every recall change. ``recall``/``precision``: (M,) in rank order; M = 0 gives 0."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


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
    iou, overlaps = devkit_iou(sub.boxes[pair_det], gt.boxes[pair_gt])
    thr = object_thresholds(gt.boxes)
    passing = overlaps & (iou >= thr[pair_gt])
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
        ValueError: a detection of an image outside the list, with a label outside 1..K, or with a
            confidence or box that is not a finite number.
    """
    k = gt.num_classes
    n = len(sub)
    known = np.isin(sub.image_ids, gt.image_ids)
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        raise ValueError(
            f"detection {i} (0-based): image index {int(sub.image_ids[i])} is not in the image list; "
            "detections must refer to the list being evaluated"
        )
    bad = (sub.labels < 1) | (sub.labels > k)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"detection {i} (0-based): DET id {int(sub.labels[i])} is outside 1..{k}")
    finite = np.isfinite(sub.scores) & np.isfinite(sub.boxes).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"detection {i} (0-based): confidence and box must be finite numbers")

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


# ------------------------------------------------------------------------------------- file readers


def _row_problem(fields: List[str], image_set: Optional[set], num_classes: int) -> Optional[str]:
    if len(fields) != 7:
        return (
            f"expected 7 fields '<image_index> <DET_id> <confidence> <xmin> <ymin> <xmax> <ymax>', "
            f"got {len(fields)}"
        )
    values = []
    for name, tok in zip(("image_index", "DET_id", "confidence", "xmin", "ymin", "xmax", "ymax"), fields):
        try:
            v = float(tok)
        except ValueError:
            return f"{name} {tok!r} is not a number"
        if not math.isfinite(v):
            return f"{name} {tok!r} is not a finite number"
        values.append(v)
    if not values[0].is_integer():
        return f"image_index {fields[0]!r} is not an integer"
    if not values[1].is_integer():
        return f"DET_id {fields[1]!r} is not an integer"
    if image_set is not None and int(values[0]) not in image_set:
        return f"image_index {int(values[0])} is not in the image list"
    if not 1 <= values[1] <= num_classes:
        return f"DET_id {int(values[1])} is outside 1..{num_classes}"
    return None


def _first_bad_line(path, image_ids: Optional[np.ndarray], num_classes: int) -> str:
    image_set = None if image_ids is None else set(image_ids.tolist())
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            problem = _row_problem(fields, image_set, num_classes)
            if problem:
                return f"{path}:{lineno}: {problem}"
    return f"{path}: unreadable submission file"


def read_submission(
    path: os.PathLike | str,
    image_ids: Optional[np.ndarray] = None,
    num_classes: int = 200,
) -> DetSubmission:
    """Read a submission file (blank lines are skipped).

    Args:
        path: lines ``<image_index> <DET_id> <confidence> <xmin> <ymin> <xmax> <ymax>``.
        image_ids: the image list's indices; when given, other image indices are errors.
        num_classes: DET ids must be in 1..num_classes.

    Raises:
        DetFormatError: ``file:line: what`` for the first line with a wrong field count, a non-number,
        a non-integer index or id, an image index outside the list or a DET id outside 1..K.
    """
    # numpy's C parser reads millions of lines in seconds; only when something is wrong is the file
    # scanned again line by line to name the first bad line.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty file is an empty submission
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        raise DetFormatError(_first_bad_line(path, image_ids, num_classes)) from None
    if rows.size == 0:
        rows = rows.reshape(0, 7)
    ok = rows.shape[1] == 7
    if ok and len(rows):
        ints = rows[:, :2]
        ok = bool(
            np.isfinite(rows).all()
            and (ints == np.round(ints)).all()
            and ((rows[:, 1] >= 1) & (rows[:, 1] <= num_classes)).all()
            and (image_ids is None or np.isin(rows[:, 0].astype(np.int64), image_ids).all())
        )
    if not ok:
        raise DetFormatError(_first_bad_line(path, image_ids, num_classes))
    return DetSubmission(
        image_ids=rows[:, 0].astype(np.int64),
        labels=rows[:, 1].astype(np.int64),
        scores=np.ascontiguousarray(rows[:, 2]),
        boxes=np.ascontiguousarray(rows[:, 3:7]),
    )


def write_submission(path: os.PathLike | str, sub: DetSubmission) -> None:
    """Write a submission file. Floats are written in their shortest exact form (``repr``), so reading
    the file back gives the same float64 numbers as the in-memory detections."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [sub.image_ids.tolist(), sub.labels.tolist(), sub.scores.tolist()]
    cols += [sub.boxes[:, j].tolist() for j in range(4)]
    line = "%d %d %r %r %r %r %r\n"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line % row for row in zip(*cols))
    os.replace(tmp, path)


def read_blacklist(path: os.PathLike | str, synsets: DetSynsets) -> np.ndarray:
    """Read a devkit blacklist (``<image_index> <WNID>`` per line) -> (B, 2) int64 ``(index, DET id)``."""
    lookup = synsets.wnid_to_id
    pairs: List[Tuple[int, int]] = []
    for lineno, fields in text_fields(path, "<image_index> <WNID>", 2, 2):
        index = parse_int(fields[0], "image_index", path, lineno)
        if fields[1] not in lookup:
            raise DetFormatError(
                f"{path}:{lineno}: unknown WNID {fields[1]!r}; it is not in {synsets.path or 'map_det.txt'}"
            )
        pairs.append((index, lookup[fields[1]]))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def load_ground_truth(
    annotations_dir: os.PathLike | str,
    image_list: os.PathLike | str,
    synsets: DetSynsets,
) -> DetGroundTruth:
    """Ground truth from ``<annotations_dir>/<image>.xml`` for every image of ``image_list``
    (``val.txt`` format). Images without objects stay in the list. Missing files, malformed XML and
    unknown WNIDs raise DetFormatError naming the file (and line)."""
    names, indices = read_image_list(image_list)
    obj_ids: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    boxes: List[np.ndarray] = []
    for name, index in zip(names, indices.tolist()):
        p = Path(annotations_dir) / f"{name}.xml"
        if not p.is_file():
            raise DetFormatError(
                f"{p}: annotation missing for image {name!r} (listed in {image_list}); check --annotations"
            )
        ann = read_annotation(p, synsets)
        obj_ids.append(np.full(len(ann.labels), index, dtype=np.int64))
        labels.append(ann.labels)
        boxes.append(ann.boxes)
    return DetGroundTruth(
        image_ids=indices,
        obj_image_ids=np.concatenate(obj_ids) if obj_ids else np.zeros(0, np.int64),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        wnids=synsets.wnids,
        names=synsets.names,
    )


def _coco_classes(coco: Mapping) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError(
            "categories: ImageNet-DET jsons have category ids 1..K equal to DET ids; "
            "convert with datasets/prepare_imagenet_det.py"
        )
    return tuple(c.get("wnid", c["name"]) for c in cats), tuple(c["name"] for c in cats)


def ground_truth_from_coco(coco: Mapping) -> DetGroundTruth:
    """Ground truth from a json written by ``datasets/prepare_imagenet_det.py`` (a dict).

    Every image needs ``ilsvrc_index``; ``bbox`` converts back to devkit boxes exactly for integer
    boxes; object order is annotation order (the XML order of the conversion).
    """
    wnids, names = _coco_classes(coco)
    image_index: Dict[int, int] = {}
    for img in coco["images"]:
        if "ilsvrc_index" not in img:
            raise ValueError(
                f"image id {img['id']} ({img.get('file_name')}) has no ilsvrc_index; "
                "only val images can be evaluated with the devkit protocol"
            )
        image_index[img["id"]] = int(img["ilsvrc_index"])
    anns = coco["annotations"]
    xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    obj = np.asarray([image_index[a["image_id"]] for a in anns], dtype=np.int64)
    labels = np.asarray([a["category_id"] for a in anns], dtype=np.int64)
    # Stable grouping by image in list order keeps annotation order inside each image.
    position = {idx: p for p, idx in enumerate(image_index.values())}
    o = np.argsort(np.asarray([position[i] for i in obj.tolist()], dtype=np.int64), kind="stable")
    return DetGroundTruth(
        image_ids=np.asarray(list(image_index.values()), dtype=np.int64),
        obj_image_ids=obj[o],
        labels=labels[o],
        boxes=xyxy_to_devkit(xywh_to_xyxy(xywh))[o],
        wnids=wnids,
        names=names,
    )


def predictions_to_submission(
    predictions: Sequence[Mapping],
    coco: Mapping,
    label_to_cat_id: Optional[Mapping[int, int]] = None,
) -> DetSubmission:
    """Per-image prediction dicts (``image_id``, ``boxes`` (N, 4) internal xyxy, ``scores``, ``labels``
    1..K) -> devkit detections, using the converted json (``coco``, a dict) for image indices.

    ``label_to_cat_id`` maps toolkit labels to category ids (= DET ids); by default label ``i + 1`` is
    the i-th category by id, the dataset's convention. Detections keep prediction order.
    """
    index_of = {img["id"]: img.get("ilsvrc_index") for img in coco["images"]}
    if label_to_cat_id is None:
        cat_ids = sorted(c["id"] for c in coco["categories"])
        label_to_cat_id = {i + 1: c for i, c in enumerate(cat_ids)}
    lut = np.zeros(max(label_to_cat_id) + 1, dtype=np.int64)
    for lab, cid in label_to_cat_id.items():
        lut[lab] = cid
    ids, labels, scores, boxes = [], [], [], []
    for i, p in enumerate(predictions):
        image_id = int(p["image_id"])
        if image_id not in index_of:
            raise ValueError(f"prediction {i}: image_id {image_id} is not an image of the dataset json")
        if index_of[image_id] is None:
            raise ValueError(f"prediction {i}: image_id {image_id} has no ilsvrc_index in the json (not a val image)")
        lab = np.asarray(p["labels"], dtype=np.int64).reshape(-1)
        if len(lab) and (lab.min() < 1 or lab.max() >= len(lut)):
            raise ValueError(
                f"prediction {i}: labels must be in 1..{len(lut) - 1}, got {int(lab.min())}..{int(lab.max())}"
            )
        ids.append(np.full(len(lab), index_of[image_id], dtype=np.int64))
        labels.append(lut[lab])
        scores.append(np.asarray(p["scores"], dtype=np.float64).reshape(-1))
        boxes.append(xyxy_to_devkit(np.asarray(p["boxes"], dtype=np.float64).reshape(-1, 4)))
    if not ids:
        return DetSubmission(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))
    return DetSubmission(np.concatenate(ids), np.concatenate(labels), np.concatenate(scores), np.concatenate(boxes))


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
    bl = read_blacklist(blacklist, DetSynsets(gt.wnids, gt.names)) if blacklist else None
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
