"""Run a detector on images and draw the results.

    python tools/demo.py CONFIG --weights W --input IMG_OR_DIR --output DIR [--threshold 0.5] [key=value ...]

Writes one PNG per input image into DIR (boxes, class names with scores, translucent instance masks)
and DIR/predictions.json: the detections in COCO results format, with ``image_id`` the position of
the image in DIR/images.json (a COCO ``images`` list: id, file_name, height, width) and
``category_id`` the label 1..K (DIR/categories.json names them). A failure ends with ``error: ...``
and exit status 2 (``--debug`` shows the traceback).
The installed command: ``restransfer predict CONFIG --weights W --input IMG_OR_DIR --output DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from ..cli import deferred_module, model_parser, note_output
from ..data.image_io import find_images

# imported once the arguments are checked (cli.deferred_module)
demo = deferred_module("restransfer.inference.demo")
predictor_module = deferred_module("restransfer.inference.predictor")

MEMORY_HINT = (
    "lower --batch-size (default test.ims_per_batch) or the image size (input.min_size_test, input.max_size_test)"
)


def _parser() -> argparse.ArgumentParser:
    p = model_parser(__doc__)
    p.add_argument("--input", required=True, help="an image file or a folder of images (searched recursively)")
    p.add_argument("--output", required=True, help="folder for the drawn PNGs and predictions.json")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum score of a drawn detection (default 0.5)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default test.ims_per_batch)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    note_output("--output", args.output)
    images = find_images(args.input, exclude=args.output)
    predictor = predictor_module.Predictor(
        args.config,
        weights=args.weights,
        device=args.device,
        threshold=args.threshold,
        batch_size=args.batch_size,
        overrides=args.opts,
    )
    summary = demo.run_demo(
        predictor, images, args.output, root=Path(args.input) if Path(args.input).is_dir() else None
    )
    print(json.dumps(summary))
    return 0
