"""Convert an ImageNet-DET split (ILSVRC2015 layout) to a COCO-format json.

    python datasets/prepare_imagenet_det.py --split val2 [--root datasets/ILSVRC] [--synsets map_det.txt]
        [--val1-list val1.txt] [--val2-list val2.txt] [--output FILE.json] [--list-output FILE.txt]

Splits: train (images positive for at least one class in ImageSets/DET/train_<k>.txt), val, val1,
val2, train+val1. Without split lists, val1/val2 come from a deterministic class-balanced split of
val.txt (see restransfer.data.imagenet_det.balanced_val_split). For splits with val images, the
image list ("<image> <index>") is written next to the json, for tools/eval_imagenet_det.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.config import resolve_path
from restransfer.data.imagenet_det import (
    SPLITS,
    DetFormatError,
    load_split,
    read_synsets,
    records_to_coco,
    write_image_list,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--root", default="datasets/ILSVRC", help="the ILSVRC folder with Data/, Annotations/, ImageSets/")
    p.add_argument("--synsets", help="the devkit's map_det.txt (default: ROOT/devkit/data/map_det.txt)")
    p.add_argument("--val1-list", help="val1 image list (e.g. R-CNN's val1.txt); first token of each line")
    p.add_argument("--val2-list", help="val2 image list (e.g. R-CNN's val2.txt)")
    p.add_argument("--output", help="json path (default: ROOT/annotations/imagenet_det_<split>.json)")
    p.add_argument("--list-output", help="image list path for val images (default: the json path with .txt)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(resolve_path(args.root))
    synsets = Path(resolve_path(args.synsets)) if args.synsets else root / "devkit" / "data" / "map_det.txt"
    if not synsets.is_file():
        print(
            f"error: class list {synsets} not found; pass --synsets path/to/map_det.txt "
            "(data/map_det.txt of the ILSVRC devkit)",
            file=sys.stderr,
        )
        return 2
    tag = args.split.replace("+", "_")
    output = Path(resolve_path(args.output)) if args.output else root / "annotations" / f"imagenet_det_{tag}.json"
    try:
        syn = read_synsets(synsets)
        records = load_split(root, args.split, syn, args.val1_list, args.val2_list)
    except (DetFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    coco = records_to_coco(records, syn, description=f"ImageNet-DET {args.split} ({root})")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    os.replace(tmp, output)
    n_val = sum(r.index is not None for r in records)
    print(f"{args.split}: {len(coco['images'])} images ({n_val} val), {len(coco['annotations'])} objects -> {output}")
    if n_val:
        image_list = Path(resolve_path(args.list_output)) if args.list_output else output.with_suffix(".txt")
        write_image_list(image_list, records)
        print(f"image list ({n_val} val images) -> {image_list}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
