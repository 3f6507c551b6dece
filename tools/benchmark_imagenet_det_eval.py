"""Time the ImageNet-DET evaluation on a synthetic set the size of ILSVRC val.

    python tools/benchmark_imagenet_det_eval.py [--images 20121] [--classes 200] [--detections 2000000] [--coco]

Ground truth: about 2.8 objects per image (as in val), some images crowded with one class. Detections:
a third are jittered copies of objects (often several per object, sometimes the wrong class), the
rest random boxes of random classes; confidences are rounded to 3 decimals so that ties occur.
Prints the time of writing and reading the submission file, of the devkit evaluation from arrays,
and (with --coco) of the COCO protocol beside it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import restransfer  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.cli import run_tool
from restransfer.evaluation.imagenet_det import (
    DetGroundTruth,
    DetSubmission,
    coco_box_metrics,
    evaluate_detections,
    read_submission,
    write_submission,
)


def synthetic_set(num_images: int, num_classes: int, num_dets: int, seed: int = 0):
    """(ground truth, submission) with the statistics described in the module docstring."""
    rng = np.random.default_rng(seed)
    image_ids = np.arange(1, num_images + 1, dtype=np.int64)
    per_image = rng.poisson(1.8, num_images) + 1
    crowded = rng.random(num_images) < 0.02
    per_image[crowded] += rng.integers(5, 30, crowded.sum())
    obj_image = np.repeat(image_ids, per_image)
    g = len(obj_image)
    image_class = rng.integers(1, num_classes + 1, num_images)  # crowded images repeat one class
    labels = np.where(rng.random(g) < 0.5, image_class[obj_image - 1], rng.integers(1, num_classes + 1, g))
    wh = np.exp(rng.uniform(np.log(8), np.log(450), (g, 2))).round()
    xy = rng.uniform(0, 500 - wh)
    gt_boxes = np.column_stack([xy, xy + wh - 1]).round()
    wnids = tuple(f"n{i:08d}" for i in range(num_classes))
    gt = DetGroundTruth(image_ids, obj_image, labels.astype(np.int64), gt_boxes, wnids)

    n_near = num_dets // 3
    src = rng.integers(0, g, n_near)
    scale = np.repeat((gt_boxes[src, 2:] - gt_boxes[src, :2] + 1), 2, axis=0).reshape(-1, 4)
    near = gt_boxes[src] + rng.normal(0, 0.12, (n_near, 4)) * scale
    near_labels = np.where(rng.random(n_near) < 0.9, labels[src], rng.integers(1, num_classes + 1, n_near))
    n_rand = num_dets - n_near
    rwh = rng.uniform(4, 400, (n_rand, 2))
    rxy = rng.uniform(0, 500 - rwh)
    sub = DetSubmission(
        image_ids=np.concatenate([obj_image[src], rng.integers(1, num_images + 1, n_rand)]),
        labels=np.concatenate([near_labels, rng.integers(1, num_classes + 1, n_rand)]).astype(np.int64),
        scores=np.concatenate([rng.beta(4, 2, n_near), rng.beta(2, 4, n_rand)]).round(3),
        boxes=np.concatenate([near, np.column_stack([rxy, rxy + rwh])]),
    )
    order = rng.permutation(num_dets)
    sub = DetSubmission(sub.image_ids[order], sub.labels[order], sub.scores[order], sub.boxes[order])
    return gt, sub


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20121)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--detections", type=int, default=2_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coco", action="store_true", help="also time the COCO protocol (mAP@.5:.95)")
    args = p.parse_args(argv)

    t = time.perf_counter()
    gt, sub = synthetic_set(args.images, args.classes, args.detections, args.seed)
    print(f"generated {len(gt.labels)} objects in {args.images} images, {len(sub)} detections, {args.classes} classes "
          f"({time.perf_counter() - t:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "submission.txt"
        t = time.perf_counter()
        write_submission(path, sub)
        t_write = time.perf_counter() - t
        t = time.perf_counter()
        sub_file = read_submission(path, gt.image_ids, args.classes)
        t_read = time.perf_counter() - t
    t = time.perf_counter()
    result = evaluate_detections(gt, sub_file)
    t_eval = time.perf_counter() - t
    print(f"write submission file      {t_write:7.2f} s")
    print(f"read submission file       {t_read:7.2f} s")
    print(f"devkit evaluation          {t_eval:7.2f} s   mAP@.5 {result.mean_ap * 100:.2f}  "
          f"({int(result.tp.sum())} true positives)")
    print(f"read + evaluate            {t_read + t_eval:7.2f} s")
    if args.coco:
        t = time.perf_counter()
        coco = coco_box_metrics(gt, sub_file)
        t_coco = time.perf_counter() - t
        print(f"COCO protocol              {t_coco:7.2f} s   AP {coco['AP']:.2f}  AP50 {coco['AP50']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower --images or --detections"))
