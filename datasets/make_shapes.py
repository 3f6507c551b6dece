#!/usr/bin/env python
"""Generate the synthetic shapes instance-segmentation set (COCO format).

    python datasets/make_shapes.py [--root datasets/shapes] [--num-train 2000] [--num-val 200]
        [--image-size 128] [--seed 0] [--classes circle triangle square]

Writes ROOT/{train,val}/*.png and ROOT/annotations/{train,val}.json; the same arguments always give
the same files. Configs with ``generate: shapes`` in a dataset entry run this automatically when
the json is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.config import resolve_path
from restransfer.data.shapes import DEFAULT_CLASSES, DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, SHAPE_CLASSES, generate_shapes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="datasets/shapes", help="output folder (RESTRANSFER_DATASETS applies)")
    p.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    p.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", nargs="+", choices=SHAPE_CLASSES, default=list(DEFAULT_CLASSES))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    paths = generate_shapes(
        resolve_path(args.root), args.num_train, args.num_val, args.image_size, args.seed, args.classes
    )
    print(f"wrote {args.num_train} train and {args.num_val} val images in {time.perf_counter() - t0:.1f} s:")
    for split, path in paths.items():
        print(f"  {split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
