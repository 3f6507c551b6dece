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
(``tools/benchmark_imagenet_loc_eval.py``). The submission files (devkit text, Kaggle CSV) are read and written
by :mod:`restransfer.evaluation.imagenet_loc_io` into the arrays :func:`evaluate_localization` takes; the IoU is
:func:`restransfer.boxes.inclusive_iou`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..boxes import inclusive_iou
from ..data.ilsvrc import IlsvrcFormatError, Synsets, read_synsets
from ..data.imagenet_loc import LocImage, read_blacklist, read_devkit_annotations, read_kaggle_solution
from ..errors import ConfigError, DataError
from .imagenet_loc_io import MAX_GUESSES, LocSubmission, read_devkit_submission, read_kaggle_submission, read_submission

__all__ = [
    "LocSubmission",
    "LocGroundTruth",
    "pack_ground_truth",
    "first_correct_guess",
    "evaluate_localization",
    "read_devkit_submission",
    "read_kaggle_submission",
    "evaluate_files",
    "MAX_GUESSES",
    "IOU_THRESHOLD",
]

IOU_THRESHOLD = 0.5
_NEVER = np.iinfo(np.int64).max  # rank of a class that no guess names / localizes


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
        IlsvrcFormatError: an image without ground-truth class (the devkit would divide by zero).
    """
    n = len(images)
    width = max((len(im.labels) for im in images), default=1) or 1
    labels = np.zeros((n, width), dtype=np.int64)
    counts = np.array([len(im.boxes) for im in images], dtype=np.int64)
    for i, im in enumerate(images):
        if not im.labels:
            raise IlsvrcFormatError(
                f"image {i + 1} ({im.name}): no ground-truth class; every evaluated image needs one"
            )
        labels[i, : len(im.labels)] = [synsets.label(w) for w in im.labels]
    box_label = np.array([synsets.label(w) for im in images for w in im.box_wnids], dtype=np.int64)
    boxes = np.concatenate([im.boxes for im in images]) if counts.sum() else np.zeros((0, 4))
    return LocGroundTruth(
        labels=labels,
        box_image=np.repeat(np.arange(n), counts),
        box_label=box_label,
        boxes=boxes.astype(np.float64),
        names=[im.name for im in images],
    )


def first_correct_guess(
    gt: LocGroundTruth, sub: LocSubmission, max_guesses: int = MAX_GUESSES
) -> Tuple[np.ndarray, np.ndarray]:
    """For every (image, ground-truth class) the 0-based index of the first guess that names it and the first
    that localizes it.

    Returns:
        ``(cls_rank, loc_rank)``, both (N, L) int64; a huge value where no guess among the first ``max_guesses``
        does, and for the padding slots of ``gt.labels``.
    """
    n = len(gt.labels)
    if len(sub.labels) != n:
        raise DataError(f"the submission has {len(sub.labels)} images, the ground truth {n}")
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


def evaluate_localization(
    gt: LocGroundTruth, sub: LocSubmission, *, blacklist: Optional[np.ndarray] = None, max_guesses: int = MAX_GUESSES
) -> Dict[str, float]:
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


def evaluate_files(
    submission: os.PathLike | str,
    *,
    synsets: os.PathLike | str,
    annotations: Optional[os.PathLike | str] = None,
    ground_truth: Optional[os.PathLike | str] = None,
    solution: Optional[os.PathLike | str] = None,
    blacklist: Optional[os.PathLike | str] = None,
    gt_class_submission: Optional[os.PathLike | str] = None,
    max_guesses: int = MAX_GUESSES,
) -> Dict[str, float]:
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
        raise ConfigError("give either annotations (devkit XML folder) or solution (Kaggle CSV)")
    if annotations is not None:
        images = read_devkit_annotations(annotations, classes, ground_truth=ground_truth)
    else:
        images = read_kaggle_solution(solution, classes, split="val")
    gt = pack_ground_truth(images, classes)
    black = read_blacklist(blacklist, len(images)) if blacklist is not None else None
    metrics = evaluate_localization(
        gt, read_submission(submission, classes, gt.names, max_guesses), blacklist=black, max_guesses=max_guesses
    )
    if gt_class_submission is not None:
        gt_sub = read_submission(gt_class_submission, classes, gt.names, max_guesses)
        metrics["gt_class_loc_error"] = evaluate_localization(gt, gt_sub, blacklist=black, max_guesses=max_guesses)[
            "top5_loc_error"
        ]
    return metrics
