#!/usr/bin/env python
"""Time pycocotools against faster-coco-eval on a generated result set and check that they agree.

python tools/benchmark_eval.py                       # 5,000 images x 100 detections, bbox
python tools/benchmark_eval.py --segm-images 500     # plus a smaller segm run
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.benchmark.coco_eval import compare_engines, synthetic_eval_set
from restransfer.cli import run_tool


def _run(name: str, images: int, dets: int, categories: int, iou_type: str, seed: int) -> bool:
    t0 = time.perf_counter()
    gt, results = synthetic_eval_set(images, dets, categories, with_masks=iou_type == "segm", seed=seed)
    crowd = sum(a["iscrowd"] for a in gt["annotations"])
    print(
        f"{name}: {images} images, {len(gt['annotations'])} ground-truth objects ({crowd} crowd), "
        f"{len(results)} detections, {categories} categories (generated in {time.perf_counter() - t0:.1f} s)"
    )
    out = compare_engines(gt, results, (iou_type,))
    ok = out["max_diff"] <= 1e-9
    for engine in ("pycocotools", "faster_coco_eval"):
        print(
            f"  {engine:<16} {out['seconds'][engine]:8.2f} s wall {out['cpu_seconds'][engine]:8.2f} s CPU   "
            f"AP {out['metrics'][engine][iou_type]['AP']:.4f}"
        )
    wall = out["seconds"]["pycocotools"] / out["seconds"]["faster_coco_eval"]
    cpu = out["cpu_seconds"]["pycocotools"] / out["cpu_seconds"]["faster_coco_eval"]
    print(
        f"  speed-up {wall:.1f}x wall, {cpu:.1f}x CPU; largest metric difference {out['max_diff']:.2e} "
        f"({'equal to 1e-9' if ok else 'NOT EQUAL'})"
    )
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=100, help="detections per image")
    p.add_argument("--categories", type=int, default=80)
    p.add_argument("--segm-images", type=int, default=0, help="images of an extra segm run (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, python {platform.python_version()}{load}")
    ok = _run("bbox", args.images, args.dets, args.categories, "bbox", args.seed)
    if args.segm_images > 0:
        ok &= _run("segm", args.segm_images, args.dets, args.categories, "segm", args.seed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower --images, --dets or --segm-images"))
