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
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.benchmark import run_det_eval_benchmark
from restransfer.cli import run_tool


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20121)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--detections", type=int, default=2_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coco", action="store_true", help="also time the COCO protocol (mAP@.5:.95)")
    args = p.parse_args(argv)

    out = run_det_eval_benchmark(args.images, args.classes, args.detections, seed=args.seed, coco=args.coco)
    s = out.seconds
    print(
        f"generated {out.num_objects} objects in {out.num_images} images, {out.num_detections} detections, "
        f"{out.num_classes} classes ({s['generate']:.1f} s)"
    )
    print(f"write submission file      {s['write submission file']:7.2f} s")
    print(f"read submission file       {s['read submission file']:7.2f} s")
    print(
        f"devkit evaluation          {s['devkit evaluation']:7.2f} s   mAP@.5 {out.mean_ap * 100:.2f}  "
        f"({out.true_positives} true positives)"
    )
    print(f"read + evaluate            {s['read submission file'] + s['devkit evaluation']:7.2f} s")
    if out.coco is not None:
        print(
            f"COCO protocol              {s['COCO protocol']:7.2f} s   AP {out.coco['AP']:.2f}  "
            f"AP50 {out.coco['AP50']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower --images or --detections"))
