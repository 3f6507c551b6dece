"""Time the PASCAL VOC evaluation (the devkit's VOCevaldet.m rules) on a generated set.

    python tools/benchmark_voc_eval.py [--images 5000] [--detections-per-image 300] [--metric voc2007|area]

The set (restransfer.benchmark.voc_eval.synthetic_voc_eval_set): 20 classes, about 2.8 objects per image, 15%
of them difficult, detections near objects (duplicates and wrong classes included) and random ones, scores
rounded to 3 decimals so that ties occur. Prints the time of writing and reading the devkit's results files and
of the evaluation from arrays (mAP@.5 and the AP over IoU .5:.95 together), and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

try:
    import restransfer  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.benchmark import machine_description
from restransfer.benchmark.voc_eval import run_voc_eval_benchmark
from restransfer.cli import run_tool
from restransfer.evaluation.voc import METRICS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--detections-per-image", type=int, default=300)
    p.add_argument("--metric", choices=METRICS, default="voc2007")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    out = run_voc_eval_benchmark(args.images, args.detections_per_image, metric=args.metric, seed=args.seed)
    s = out.seconds
    print(machine_description(torch.device("cpu")))
    print(
        f"generated {out.num_objects} objects in {out.num_images} images, {out.num_detections} detections "
        f"({s['generate']:.1f} s)"
    )
    print(f"write results files   {s['write results files']:7.2f} s")
    print(f"read results files    {s['read results files']:7.2f} s")
    print(
        f"evaluate ({args.metric})    {s['evaluate']:7.2f} s   mAP@.5 {out.mean_ap:.2f}  "
        f"mAP@.5:.95 {out.mean_ap_50_95:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower --images or --detections-per-image"))
