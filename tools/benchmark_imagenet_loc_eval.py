"""Time the ImageNet CLS-LOC evaluation and localization on a synthetic validation set of full size.

    python tools/benchmark_imagenet_loc_eval.py [--images 50000] [--xml] [--output timings.json]

Builds 50,000 images (1000 classes, 1-3 boxes each, like ILSVRC val), writes the Kaggle solution, a devkit text
submission and a Kaggle CSV submission with 5 guesses per image into a temporary folder (with --xml also the
50,000 devkit XML files), then times reading each file, the evaluation itself, and the three localization
modes over detector outputs of 100 detections per image. Prints seconds per step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.cli import run_tool
from restransfer.fileio import atomic_write_text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=50000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--detections", type=int, default=100, help="detections per image for the localization timing")
    p.add_argument("--xml", action="store_true", help="also write and time reading the devkit XML folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the timings as json")
    args = p.parse_args(argv)

    from restransfer.benchmark import LOC_EVALUATE_STEP, run_loc_eval_benchmark

    out = run_loc_eval_benchmark(args.images, args.classes, args.detections, xml=args.xml, seed=args.seed)
    for name, seconds in out.seconds.items():
        print(f"{name:>32s}: {seconds:7.3f} s")
        if name == LOC_EVALUATE_STEP:
            print("  metrics:", {key: round(v, 3) for key, v in out.metrics.items()})
    if args.output:
        atomic_write_text(args.output, json.dumps(out.as_json(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower --images or --detections"))
