"""A generated PASCAL VOC evaluation set and the timing of the VOC evaluation on it.

:func:`synthetic_voc_eval_set` turns :func:`~restransfer.benchmark.imagenet_eval.synthetic_det_eval_set`'s ground
truth and detections into VOC's (1-based boxes on 500 x 500 images, image ids ``000001`` ..., some objects
difficult); :func:`run_voc_eval_benchmark` times writing and reading the devkit's results files and the
evaluation from arrays (mAP@.5 and the AP over IoU .5:.95).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from ..data.voc import VOC_CLASSES
from ..evaluation.voc import evaluate_voc
from ..evaluation.voc_io import VocDetections, VocGroundTruth, read_results, write_results
from .imagenet_eval import synthetic_det_eval_set

__all__ = ["synthetic_voc_eval_set", "VocEvalTimings", "run_voc_eval_benchmark"]


def synthetic_voc_eval_set(
    num_images: int = 5000,
    detections_per_image: int = 300,
    *,
    classes: Sequence[str] = VOC_CLASSES,
    difficult_fraction: float = 0.15,
    seed: int = 0,
) -> Tuple[VocGroundTruth, VocDetections]:
    """A VOC ground truth and detections: about 2.8 objects per image (ILSVRC val's statistics; VOC 2007 test
    has 2.4), ``difficult_fraction`` of them difficult, and ``num_images * detections_per_image`` detections
    in image order, a third near objects (duplicates and wrong classes included), scores rounded to 3
    decimals so that ties occur. Boxes are integers for the objects and floats for the detections."""
    rng = np.random.default_rng(seed)
    n_det = num_images * detections_per_image
    det_gt, sub = synthetic_det_eval_set(num_images, len(classes), n_det, seed=rng)
    # devkit 0-based indices on a 500 x 500 canvas -> VOC's 1-based ones, inside the image
    boxes = np.clip(det_gt.boxes + 1, 1, 500)
    gt = VocGroundTruth(
        image_names=tuple(f"{i:06d}" for i in range(1, num_images + 1)),
        obj_image=det_gt.obj_image_ids - 1,
        labels=det_gt.labels,
        boxes=boxes,
        difficult=rng.random(len(boxes)) < difficult_fraction,
        class_names=tuple(classes),
    )
    order = np.argsort(sub.image_ids, kind="stable")  # results in image order, as a model writes them
    dets = VocDetections(
        image=sub.image_ids[order] - 1, labels=sub.labels[order], scores=sub.scores[order], boxes=sub.boxes[order] + 1
    )
    return gt, dets


@dataclass
class VocEvalTimings:
    """What :func:`run_voc_eval_benchmark` measured: the set's size, wall seconds per step (``generate``,
    ``write results files``, ``read results files``, ``evaluate``) and the mAPs (percent)."""

    num_images: int
    num_objects: int
    num_detections: int
    seconds: Dict[str, float]
    mean_ap: float
    mean_ap_50_95: float


def run_voc_eval_benchmark(
    num_images: int = 5000, detections_per_image: int = 300, *, metric: str = "voc2007", seed: int = 0
) -> VocEvalTimings:
    """Generate a set, write and read back its results files in a temporary folder, and evaluate them."""
    seconds: Dict[str, float] = {}
    t = time.perf_counter()
    gt, dets = synthetic_voc_eval_set(num_images, detections_per_image, seed=seed)
    seconds["generate"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_results(tmp, gt, dets)
        seconds["write results files"] = time.perf_counter() - t
        t = time.perf_counter()
        read = read_results(Path(tmp), gt)
        seconds["read results files"] = time.perf_counter() - t
    t = time.perf_counter()
    result = evaluate_voc(gt, read, metric)
    seconds["evaluate"] = time.perf_counter() - t
    return VocEvalTimings(
        num_images, len(gt.labels), len(dets), seconds, result.mean_ap * 100, result.mean_ap_50_95 * 100
    )
