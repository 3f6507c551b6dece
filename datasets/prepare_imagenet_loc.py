"""Convert an ImageNet CLS-LOC split (ILSVRC devkit or Kaggle layout) to a COCO-format json.

Devkit layout:
    python datasets/prepare_imagenet_loc.py --split val --synsets LOC_devkit/data/map_clsloc.txt \\
        --annotations datasets/ILSVRC/Annotations/CLS-LOC/val \\
        --ground-truth LOC_devkit/data/ILSVRC2015_clsloc_validation_ground_truth.txt \\
        --image-root datasets/ILSVRC/Data/CLS-LOC --output datasets/ILSVRC/annotations/imagenet_loc_val.json
Kaggle layout:
    python datasets/prepare_imagenet_loc.py --split train --synsets LOC_synset_mapping.txt \\
        --solution LOC_train_solution.csv --image-root datasets/ILSVRC/Data/CLS-LOC \\
        --output datasets/ILSVRC/annotations/imagenet_loc_train.json

Categories get the class list's ids (devkit ids 1..1000 with map_clsloc.txt; with LOC_synset_mapping.txt the
file's line numbers) plus a "wnid" field. Train images without boxes are left out unless --keep-unboxed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", required=True, choices=("train", "val", "test"))
    p.add_argument("--synsets", required=True, help="map_clsloc.txt (ids = devkit ids) or LOC_synset_mapping.txt")
    p.add_argument("--image-root", required=True, help="ILSVRC/Data/CLS-LOC (file_name entries are relative to it)")
    p.add_argument("--annotations", help="devkit XML folder ILSVRC/Annotations/CLS-LOC/<split>")
    p.add_argument("--ground-truth", help="devkit validation ground truth (image-level labels of val)")
    p.add_argument("--solution", help="Kaggle LOC_<split>_solution.csv (instead of --annotations)")
    p.add_argument(
        "--keep-unboxed",
        action="store_true",
        help="also write the images without boxes (with their folder's class as image label)",
    )
    p.add_argument("--output", required=True, help="json to write")
    args = p.parse_args(argv)
    if args.split != "test" and (args.annotations is None) == (args.solution is None):
        p.error("give either --annotations (devkit layout) or --solution (Kaggle layout)")

    from restransfer.config import resolve_path
    from restransfer.data.imagenet_loc import LocFormatError, convert_split, read_synsets

    try:
        synsets = read_synsets(resolve_path(args.synsets))
        data = convert_split(
            args.split,
            synsets,
            resolve_path(args.image_root),
            annotations=resolve_path(args.annotations),
            ground_truth=resolve_path(args.ground_truth),
            solution=resolve_path(args.solution),
            keep_unboxed=args.keep_unboxed,
        )
    except LocFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if synsets.source != "map_clsloc":
        print(
            "note: category ids are the line numbers of LOC_synset_mapping.txt, not the devkit ids; "
            "pass map_clsloc.txt for devkit ids",
            file=sys.stderr,
        )
    output = resolve_path(args.output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, output)
    outside = sum(len(im.get("devkit_boxes_outside", [])) for im in data["images"])
    print(
        f"{output}: {len(data['images'])} images, {len(data['annotations'])} boxes, "
        f"{len(data['categories'])} categories"
        + (f", {outside} boxes outside their image (evaluation only)" if outside else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
