"""Check a PASCAL VOC folder and, optionally, convert image sets to COCO-format json.

    python datasets/prepare_voc.py [--root datasets/VOCdevkit] [--sets 2007:trainval 2012:trainval 2007:test]
        [--classes NAME ...] [--output-dir DIR] [--check-only]

Every listed image set is read through the toolkit's VOC reader (safe XML; a malformed file, a NaN or a box
outside its image is an error naming file and line), and its image files are checked to exist. Then, unless
--check-only, each set becomes DIR/voc<year>_<set>.json (default DIR: ROOT/annotations), with ``file_name``
relative to ROOT, so that a COCO-format entry reads it:

    {json: datasets/VOCdevkit/annotations/voc2007_test.json, image_root: datasets/VOCdevkit}

Difficult objects are kept with ``"difficult": 1`` and ``"iscrowd": 1``: every COCO-format tool (the toolkit,
pycocotools, detectron2, MMDetection) then neither trains on them nor counts them in evaluation, which is what
VOC does; the ``difficult`` attribute keeps the exact flag, which ``test.evaluator: voc`` reads to give the
devkit's numbers from the json. ``truncated`` is kept as an attribute.

The toolkit reads the VOC folder directly too (``format: voc`` entries); the json is for those who prefer it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.cli import note_output, run_tool
from restransfer.config import resolve_path
from restransfer.data.voc import VOC_CLASSES, VocFormatError, load_voc_split, records_to_coco
from restransfer.evaluation.metrics_file import write_json


def _set(text: str):
    year, sep, split = text.partition(":")
    if not sep or not year.isdigit() or not split:
        raise argparse.ArgumentTypeError(f"{text!r}: expected YEAR:IMAGESET, e.g. 2007:test")
    return int(year), split


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="datasets/VOCdevkit", help="the VOCdevkit folder (holding VOC2007/, VOC2012/)")
    p.add_argument(
        "--sets",
        nargs="+",
        type=_set,
        default=[(2007, "trainval"), (2012, "trainval"), (2007, "test")],
        metavar="YEAR:SET",
        help="image sets to read (default: 2007:trainval 2012:trainval 2007:test)",
    )
    p.add_argument(
        "--classes", nargs="+", metavar="NAME", help="class names in label order (default: the 20 PASCAL classes)"
    )
    p.add_argument("--output-dir", help="where the jsons go (default: ROOT/annotations)")
    p.add_argument("--check-only", action="store_true", help="read and check, write nothing")
    args = p.parse_args(argv)
    root = Path(resolve_path(args.root))
    classes = tuple(args.classes) if args.classes else VOC_CLASSES
    out_dir = Path(resolve_path(args.output_dir)) if args.output_dir else root / "annotations"
    if not args.check_only:
        note_output("--output-dir", out_dir)
    for year, split in args.sets:
        records = load_voc_split(root, year, split, classes)
        missing = [r.file_name for r in records if not (root / r.file_name).is_file()]
        if missing:
            raise VocFormatError(
                f"{root}: {len(missing)} of {len(records)} images of VOC{year} {split} are missing "
                f"(first: {missing[0]}); re-extract the image archive"
            )
        data = records_to_coco(records, classes, description=f"PASCAL VOC{year} {split} ({root})")
        n_diff = sum(a["difficult"] for a in data["annotations"])
        line = (
            f"VOC{year} {split}: {len(records)} images, {len(data['annotations'])} objects ({n_diff} difficult, "
            f"{sum(a['truncated'] for a in data['annotations'])} truncated)"
        )
        if not args.check_only:
            path = write_json(data, out_dir / f"voc{year}_{split}.json")
            line += f" -> {path}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
