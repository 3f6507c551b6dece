"""ImageNet CLS-LOC evaluation, with the numbers of the ILSVRC devkit's ``eval_clsloc.m``.

Protocol (per image ``i`` with ground-truth classes ``g_1..g_n`` and guesses ``(l_j, b_j)``, ``j = 1..5``):

* a guess localizes class ``g_k`` when ``l_j == g_k`` and its box overlaps *some* ground-truth box of class
  ``g_k`` in that image with IoU >= 0.5, IoU computed on inclusive pixel indices (``w = x2 - x1 + 1``; no
  overlap unless the +1 intersection width and height are both positive);
* the image's localization error is the fraction of its ground-truth classes that no guess localizes,
  its classification error the fraction that no guess names (boxes ignored);
* top-k error uses the first k guesses; guesses after the fifth are ignored; blacklisted images add 0 to the
  localization sum and leave its denominator (``N - #blacklisted``); classification uses all ``N`` images;
* a ground-truth class without any box of that class in the image cannot be localized and counts as an error
  (the devkit's files have no such image; its code would stop there).

Everything is vectorized over images, guesses and boxes: 50,000 images take well under a second
(``tools/benchmark_imagenet_loc_eval.py``). File readers at the bottom turn the devkit's text submission and
Kaggle's CSV into the arrays :func:`evaluate_localization` takes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.imagenet_loc import (
    LocFormatError, LocImage, Synsets, _is_float, _parse_groups, _where, iter_kaggle_rows, read_blacklist, read_devkit_annotations,
    read_kaggle_solution, read_synsets,
)

__all__ = [
    "LocSubmission", "LocGroundTruth", "pack_ground_truth", "inclusive_iou", "first_correct_guess",
    "evaluate_localization", "read_devkit_submission", "read_kaggle_submission", "evaluate_files",
    "MAX_GUESSES", "IOU_THRESHOLD",
]

MAX_GUESSES = 5
IOU_THRESHOLD = 0.5
_NEVER = np.iinfo(np.int64).max  # rank of a class that no guess names / localizes


@dataclass
class LocSubmission:
    """Guesses for N images in ground-truth order.

    Attributes:
        labels: (N, G) int64 class labels 1..K of a :class:`Synsets`; 0 where an image has fewer guesses.
        boxes: (N, G, 4) float64 devkit boxes (inclusive ``xmin ymin xmax ymax``).
    """

    labels: np.ndarray
    boxes: np.ndarray


@dataclass
class LocGroundTruth:
    """Ground truth as flat arrays (see :func:`pack_ground_truth`).

    Attributes:
        labels: (N, L) int64 image-level class labels, 0-padded (L = most classes of one image, usually 1).
        box_image: (B,) int64 image index of every box.
        box_label: (B,) int64 class label of every box.
        boxes: (B, 4) float64 devkit boxes.
        names: the N image names.
    """

    labels: np.ndarray
    box_image: np.ndarray
    box_label: np.ndarray
    boxes: np.ndarray
    names: List[str]


def pack_ground_truth(images: Sequence[LocImage], synsets: Synsets) -> LocGroundTruth:
    """:class:`~restransfer.data.imagenet_loc.LocImage` list -> :class:`LocGroundTruth` with ``synsets`` labels.

    Raises:
        LocFormatError: an image without ground-truth class (the devkit would divide by zero).
    """
    n = len(images)
    width = max((len(im.labels) for im in images), default=1) or 1
    labels = np.zeros((n, width), dtype=np.int64)
    counts = np.array([len(im.boxes) for im in images], dtype=np.int64)
    for i, im in enumerate(images):
        if not im.labels:
            raise LocFormatError(f"image {i + 1} ({im.name}): no ground-truth class; every evaluated image needs one")
        labels[i, :len(im.labels)] = [synsets.label(w) for w in im.labels]
    box_label = np.array([synsets.label(w) for im in images for w in im.box_wnids], dtype=np.int64)
    boxes = np.concatenate([im.boxes for im in images]) if counts.sum() else np.zeros((0, 4))
    return LocGroundTruth(labels=labels, box_image=np.repeat(np.arange(n), counts), box_label=box_label,
                          boxes=boxes.astype(np.float64), names=[im.name for im in images])


def inclusive_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of devkit boxes ``a`` and ``b`` (broadcastable ``(..., 4)``) with inclusive pixel indices.

    As in the devkit: intersection width ``min(x2) - max(x1) + 1``, likewise the height; boxes that do not
    overlap (either not positive) get -1; otherwise ``iw * ih / (area_a + area_b - iw * ih)`` with
    ``area = (x2 - x1 + 1) * (y2 - y1 + 1)``, in float64 like MATLAB.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
    inter = iw * ih
    union = ((a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
             + (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1) - inter)
    overlap = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), -1.0)


def first_correct_guess(gt: LocGroundTruth, sub: LocSubmission,
                        max_guesses: int = MAX_GUESSES) -> Tuple[np.ndarray, np.ndarray]:
    """For every (image, ground-truth class) the 0-based index of the first guess that names it and the first
    that localizes it.

    Returns:
        ``(cls_rank, loc_rank)``, both (N, L) int64; a huge value where no guess among the first ``max_guesses``
        does, and for the padding slots of ``gt.labels``.
    """
    n = len(gt.labels)
    if len(sub.labels) != n:
        raise ValueError(f"the submission has {len(sub.labels)} images, the ground truth {n}")
    labels = sub.labels[:, :max_guesses]
    boxes = sub.boxes[:, :max_guesses]
    valid = gt.labels > 0

    named = (gt.labels[:, :, None] == labels[:, None, :]) & valid[:, :, None]  # (N, L, G)
    cls_rank = np.where(named.any(-1), named.argmax(-1), _NEVER)

    # each box belongs to the slot of its image's ground-truth class; boxes of other classes are not evaluated
    slot_match = gt.labels[gt.box_image] == gt.box_label[:, None]  # (B, L)
    keep = slot_match.any(1)
    bi, bl, bb = gt.box_image[keep], gt.box_label[keep], gt.boxes[keep]
    slot = slot_match[keep].argmax(1)
    hit = (labels[bi] == bl[:, None]) & (inclusive_iou(boxes[bi], bb[:, None, :]) >= IOU_THRESHOLD)  # (B, G)
    first = np.where(hit.any(1), hit.argmax(1), _NEVER)
    loc_rank = np.full(gt.labels.shape, _NEVER, dtype=np.int64)
    np.minimum.at(loc_rank, (bi, slot), first)
    return cls_rank, loc_rank


def evaluate_localization(gt: LocGroundTruth, sub: LocSubmission, *, blacklist: Optional[np.ndarray] = None,
                          max_guesses: int = MAX_GUESSES) -> Dict[str, float]:
    """Top-1 and top-5 localization and classification error, in percent, as ``eval_clsloc.m`` computes them.

    Args:
        gt: the ground truth of N images.
        sub: the guesses for the same N images, in the same order.
        blacklist: 0-based indices of images left out of the localization error.
        max_guesses: guesses per image that count (the devkit's 5).

    Returns:
        ``{"top1_loc_error", "top5_loc_error", "top1_cls_error", "top5_cls_error", "num_images",
        "num_blacklisted"}``; "top5" means the first ``max_guesses`` guesses.
    """
    cls_rank, loc_rank = first_correct_guess(gt, sub, max_guesses)
    valid = gt.labels > 0
    per_image = valid.sum(1)
    n = len(gt.labels)
    counted = np.ones(n, dtype=bool)
    if blacklist is not None and len(blacklist):
        counted[np.asarray(blacklist, dtype=np.int64)] = False
    denominator = int(counted.sum())

    def error(rank: np.ndarray, k: int, mask: np.ndarray, denom: int) -> float:
        per = ((rank >= k) & valid).sum(1) / per_image
        return 100.0 * float(per[mask].sum()) / denom if denom else float("nan")

    everyone = np.ones(n, dtype=bool)
    return {
        "top5_loc_error": error(loc_rank, max_guesses, counted, denominator),
        "top1_loc_error": error(loc_rank, 1, counted, denominator),
        "top5_cls_error": error(cls_rank, max_guesses, everyone, n),
        "top1_cls_error": error(cls_rank, 1, everyone, n),
        "num_images": n,
        "num_blacklisted": n - denominator,
    }


# --------------------------------------------------------------------------------------- submissions


def _empty_submission(n: int, g: int) -> LocSubmission:
    return LocSubmission(np.zeros((n, g), dtype=np.int64), np.zeros((n, g, 4), dtype=np.float64))


def read_devkit_submission(path: os.PathLike | str, synsets: Synsets, num_images: int, *,
                           max_guesses: int = MAX_GUESSES) -> LocSubmission:
    """Read a devkit submission: line ``i`` holds image ``i``'s guesses ``label xmin ymin xmax ymax ...``.

    Labels are the class list's labels (devkit ids with ``map_clsloc.txt``); an empty line is an image without
    guesses; guesses after ``max_guesses`` are ignored.

    Raises:
        LocFormatError: the wrong number of lines, a field count that is not a multiple of 5, a non-numeric
            field, or a label that is not a class id (with file and line).
    """
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != num_images:
        raise LocFormatError(f"{path}: {len(lines)} lines, but the ground truth has {num_images} images; write one "
                             "line per image in ground-truth order (empty for an image without guesses)")
    width = 5 * max_guesses
    fields = np.zeros((num_images, width), dtype=object)
    fields[:] = "0"
    num_guesses = np.zeros(num_images, dtype=np.int64)
    for i, raw in enumerate(lines):
        tokens = raw.split()
        if len(tokens) % 5:
            raise LocFormatError(f"{_where(path, i + 1)}: {len(tokens)} fields; each guess needs 5 "
                                 "(label xmin ymin xmax ymax)")
        tokens = tokens[:width]
        fields[i, :len(tokens)] = tokens
        num_guesses[i] = len(tokens) // 5
    try:
        values = fields.astype(np.float64)
    except ValueError:
        for i, raw in enumerate(lines):  # slow path only to name the line
            bad = [t for t in raw.split()[:width] if not _is_float(t)]
            if bad:
                raise LocFormatError(f"{_where(path, i + 1)}: {bad[0]!r} is not a number") from None
        raise
    values = values.reshape(num_images, max_guesses, 5)
    raw_labels = values[:, :, 0]
    present = np.arange(max_guesses)[None, :] < num_guesses[:, None]
    bad = present & ((raw_labels != np.round(raw_labels)) | (raw_labels < 1) | (raw_labels > len(synsets)))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise LocFormatError(f"{_where(path, i + 1)}: guess {j + 1} has label {raw_labels[i, j]:g}, which is not a class "
                             f"id of {synsets.path or 'the class list'} (1..{len(synsets)})")
    return LocSubmission(np.where(present, raw_labels, 0).astype(np.int64), values[:, :, 1:].copy())


def read_kaggle_submission(path: os.PathLike | str, synsets: Synsets, names: Sequence[str], *,
                           max_guesses: int = MAX_GUESSES) -> LocSubmission:
    """Read a Kaggle CSV submission (``ImageId,PredictionString`` with ``WNID xmin ymin xmax ymax`` guesses),
    matched to ``names`` (the ground-truth order) by ImageId.

    Raises:
        LocFormatError: a wrong header, an ImageId not in the ground truth or given twice, images missing, a
            field count that is not a multiple of 5, an unknown WNID (with file and line).
    """
    index = {name: i for i, name in enumerate(names)}
    sub = _empty_submission(len(names), max_guesses)
    seen = np.zeros(len(names), dtype=bool)
    for lineno, image_id, tokens in iter_kaggle_rows(path):
        i = index.get(image_id)
        if i is None:
            raise LocFormatError(f"{_where(path, lineno)}: ImageId {image_id!r} is not in the ground truth")
        if seen[i]:
            raise LocFormatError(f"{_where(path, lineno)}: ImageId {image_id} appears twice")
        seen[i] = True
        wnids, boxes = _parse_groups(tokens, path, lineno, synsets, what="guess")
        g = min(len(wnids), max_guesses)
        sub.labels[i, :g] = [synsets.label(w) for w in wnids[:g]]
        sub.boxes[i, :g] = boxes[:g]
    if not seen.all():
        missing = [names[i] for i in np.flatnonzero(~seen)[:3]]
        raise LocFormatError(f"{path}: {int((~seen).sum())} ground-truth images have no row (e.g. {', '.join(missing)}); "
                             "write a row for every image, with an empty PredictionString if needed")
    return sub


def _read_submission(path: os.PathLike | str, synsets: Synsets, names: Sequence[str], max_guesses: int) -> LocSubmission:
    """A Kaggle CSV (recognized by its header) or a devkit text submission."""
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    if first.strip().startswith("ImageId"):
        return read_kaggle_submission(path, synsets, names, max_guesses=max_guesses)
    return read_devkit_submission(path, synsets, len(names), max_guesses=max_guesses)


def evaluate_files(submission: os.PathLike | str, *, synsets: os.PathLike | str,
                   annotations: Optional[os.PathLike | str] = None, ground_truth: Optional[os.PathLike | str] = None,
                   solution: Optional[os.PathLike | str] = None, blacklist: Optional[os.PathLike | str] = None,
                   gt_class_submission: Optional[os.PathLike | str] = None,
                   max_guesses: int = MAX_GUESSES) -> Dict[str, float]:
    """Evaluate submission files against the devkit layout (``annotations`` XML folder + ``ground_truth``) or
    Kaggle's (``solution`` CSV).

    Args:
        submission: devkit text submission (labels of ``synsets``) or Kaggle CSV (WNIDs).
        synsets: ``map_clsloc.txt`` or ``LOC_synset_mapping.txt``; numeric labels in a text submission are
            this file's labels (devkit ids for ``map_clsloc.txt``, line numbers for ``LOC_synset_mapping.txt``).
        annotations, ground_truth: the devkit's validation XML folder and ground-truth file.
        solution: Kaggle's ``LOC_val_solution.csv`` (instead of ``annotations``).
        blacklist: the devkit's blacklist of 1-based image indices.
        gt_class_submission: a submission made with the ground-truth class (see
            :func:`restransfer.localization.gt_class_guesses`); its top-5 localization error is reported as
            ``gt_class_loc_error``.

    Returns:
        the metrics of :func:`evaluate_localization` (percent), plus ``gt_class_loc_error`` when asked.
    """
    classes = read_synsets(synsets)
    if (annotations is None) == (solution is None):
        raise ValueError("give either annotations (devkit XML folder) or solution (Kaggle CSV)")
    if annotations is not None:
        images = read_devkit_annotations(annotations, classes, ground_truth=ground_truth)
    else:
        images = read_kaggle_solution(solution, classes, split="val")
    gt = pack_ground_truth(images, classes)
    black = read_blacklist(blacklist, len(images)) if blacklist is not None else None
    metrics = evaluate_localization(gt, _read_submission(submission, classes, gt.names, max_guesses),
                                    blacklist=black, max_guesses=max_guesses)
    if gt_class_submission is not None:
        gt_sub = _read_submission(gt_class_submission, classes, gt.names, max_guesses)
        metrics["gt_class_loc_error"] = evaluate_localization(gt, gt_sub, blacklist=black,
                                                              max_guesses=max_guesses)["top5_loc_error"]
    return metrics
