"""Generated ground truth and detections for checking and timing the COCO evaluation engines.

:func:`synthetic_eval_set` builds a COCO ground truth with every situation ``COCOeval`` treats
specially: crowd regions, objects in all three area ranges, images without objects, a category
without ground truth, and more detections per image than ``maxDets`` with tied scores, matching
boxes at every IoU and pure false positives. :func:`compare_engines` times pycocotools against
faster-coco-eval on it and reports the largest difference between their numbers.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

from ..evaluation.coco import ENGINES, SUMMARY_KEYS, evaluate_coco

__all__ = ["synthetic_eval_set", "compare_engines", "max_metric_difference"]


def _box_polygon(x: float, y: float, w: float, h: float) -> List[List[float]]:
    """An octagon inscribed in the box, so that mask area and box area differ."""
    cx, cy, a, b = x + w / 2, y + h / 2, w / 2, h / 2
    t = np.arange(8) * np.pi / 4 + np.pi / 8
    px = cx + a * np.cos(t) / np.cos(np.pi / 8)
    py = cy + b * np.sin(t) / np.cos(np.pi / 8)
    px, py = np.clip(px, x, x + w), np.clip(py, y, y + h)
    return [np.stack([px, py], axis=1).ravel().round(2).tolist()]


def _uncompressed_counts(mask: np.ndarray) -> List[int]:
    """Run lengths of a binary (H, W) mask in column-major order, starting with a run of zeros."""
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    return ([0] if flat[0] else []) + [int(r) for r in runs]


def synthetic_eval_set(
    num_images: int = 100,
    dets_per_image: int = 100,
    num_categories: int = 10,
    *,
    image_size: Tuple[int, int] = (480, 640),
    crowd_fraction: float = 0.1,
    with_masks: bool = False,
    seed: int = 0,
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """A ground-truth dict and a results list.

    Ground truth: 0-12 objects per image (every 10th image has none), sides log-uniform in 4..400
    px so that all of small/medium/large occur, ``crowd_fraction`` of them crowd regions (stored as
    uncompressed RLE, as in COCO); the last category has no ground truth at all. Non-crowd objects
    are octagon polygons.

    Results: ``dets_per_image`` per image: jittered copies of the ground truth (IoU from ~0.3 to 1,
    sometimes duplicated) scored 0.3-1, plus random boxes scored 0-0.7; scores are rounded to 2
    decimals so that ties occur. With
    ``with_masks`` every result also has a compressed-RLE ``segmentation`` of its octagon.
    """
    rng = np.random.default_rng(seed)
    h, w = image_size
    categories = [{"id": 2 * k + 1, "name": f"class_{k}"} for k in range(num_categories)]  # ids with gaps
    gt_cat_ids = [c["id"] for c in categories[:-1]] if num_categories > 1 else [categories[0]["id"]]
    images, annotations, results = [], [], []
    for i in range(num_images):
        image_id = 1000 + i
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": h, "width": w})
        n_gt = 0 if i % 10 == 9 else int(rng.integers(1, 13))
        gts = []
        for _ in range(n_gt):
            bw, bh = np.exp(rng.uniform(np.log(4), np.log(400), size=2))
            bw, bh = min(bw, w - 1), min(bh, h - 1)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            cat = int(rng.choice(gt_cat_ids))
            crowd = rng.random() < crowd_fraction
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat,
                "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                "iscrowd": int(crowd),
            }
            if crowd:
                m = np.zeros((h, w), dtype=np.uint8, order="F")
                m[int(y) : int(y + bh), int(x) : int(x + bw)] = 1
                # Uncompressed RLE (counts as a list of run lengths), as COCO stores crowd regions.
                ann["segmentation"] = {"size": [h, w], "counts": _uncompressed_counts(m)}
                ann["area"] = float(m.sum())
            else:
                poly = _box_polygon(*ann["bbox"])
                ann["segmentation"] = poly
                ann["area"] = float(mask_util.area(mask_util.merge(mask_util.frPyObjects(poly, h, w))))
            annotations.append(ann)
            gts.append(ann)
        dets = []
        for g in gts:
            for _ in range(int(rng.integers(0, 3))):  # misses, hits and duplicates
                x, y, bw, bh = g["bbox"]
                jitter = rng.normal(0, rng.choice([0.02, 0.1, 0.3]), size=4) * [bw, bh, bw, bh]
                cat = g["category_id"] if rng.random() < 0.85 else int(rng.choice([c["id"] for c in categories]))
                dets.append(
                    (
                        x + jitter[0],
                        y + jitter[1],
                        max(bw + jitter[2], 1.0),
                        max(bh + jitter[3], 1.0),
                        cat,
                        rng.uniform(0.3, 1.0),
                    )
                )
        while len(dets) < dets_per_image:
            bw, bh = np.exp(rng.uniform(np.log(4), np.log(300), size=2))
            dets.append(
                (
                    rng.uniform(0, w - bw),
                    rng.uniform(0, h - bh),
                    bw,
                    bh,
                    int(rng.choice([c["id"] for c in categories])),
                    rng.uniform(0.0, 0.7),
                )
            )
        for x, y, bw, bh, cat, score in dets[:dets_per_image]:
            x, y = float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))
            bw, bh = float(min(bw, w - x)), float(min(bh, h - y))
            r = {"image_id": image_id, "category_id": cat, "bbox": [x, y, bw, bh], "score": round(float(score), 2)}
            if with_masks:
                rle = mask_util.merge(mask_util.frPyObjects(_box_polygon(x, y, bw, bh), h, w))
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            results.append(r)
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, results


def max_metric_difference(a: Dict[str, Dict[str, Any]], b: Dict[str, Dict[str, Any]]) -> float:
    """Largest absolute difference between two metric dicts (NaN equals NaN; NaN vs number is inf)."""
    worst = 0.0

    def cmp(x: float, y: float) -> None:
        nonlocal worst
        if math.isnan(x) or math.isnan(y):
            worst = worst if math.isnan(x) and math.isnan(y) else math.inf
        else:
            worst = max(worst, abs(x - y))

    if a.keys() != b.keys():
        return math.inf
    for t in a:
        for k in SUMMARY_KEYS:
            cmp(a[t][k], b[t][k])
        if a[t]["per_category"].keys() != b[t]["per_category"].keys():
            return math.inf
        for name, v in a[t]["per_category"].items():
            cmp(v, b[t]["per_category"][name])
    return worst


def compare_engines(
    gt: Dict[str, Any], results: List[Dict[str, Any]], iou_types: Sequence[str] = ("bbox",)
) -> Dict[str, Any]:
    """Evaluate with each engine.

    Returns ``{"seconds": {engine: wall s}, "cpu_seconds": {engine: process CPU s, all threads},
    "metrics": {engine: metrics}, "max_diff": float}``. CPU time is the steadier figure on a busy machine.
    """
    seconds, cpu_seconds, metrics = {}, {}, {}
    for engine in ENGINES:
        t0, c0 = time.perf_counter(), time.process_time()
        metrics[engine] = evaluate_coco(gt, results, iou_types, engine=engine)
        seconds[engine], cpu_seconds[engine] = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "metrics": metrics,
        "max_diff": max_metric_difference(metrics["pycocotools"], metrics["faster_coco_eval"]),
    }
