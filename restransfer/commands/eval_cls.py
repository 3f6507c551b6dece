"""Top-1 and top-5 classification error of a checkpoint on the config's data.test.

Usage:
    python tools/eval_cls.py CONFIG --weights W [--crops center|10crop|fcn] [--scales 224 256 384 480 640]
                             [--output metrics.json] [key=value ...]

``center``: the central crop of the image resized to input.test_size; ``10crop``: the four corners, the
center and their flips (the paper's 10-crop testing); ``fcn``: the whole image at every shorter side in
``--scales`` and its flip, scores averaged (the paper's fully-convolutional multi-scale testing).
``metrics.json`` (default ``output_dir/metrics.json``) holds ``top1_error`` and ``top5_error`` in percent.
A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
``restransfer eval CONFIG --weights W ...`` runs this for a classification config.
"""

import argparse
from typing import Optional, Sequence

from ..classification.config import CROPS, load_cls_config
from ..classification.evaluate import run_cls_evaluation
from ..cli import note_output

MEMORY_HINT = "lower test.ims_per_batch, or the fcn --scales"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Classification error (top-1, top-5) of a checkpoint.")
    parser.add_argument("config", help="YAML config whose data.test is evaluated")
    parser.add_argument(
        "--weights",
        required=True,
        help="a train_cls checkpoint (or ResNet ImageNet weights: file, torchvision://, timm://)",
    )
    parser.add_argument("--crops", choices=CROPS, default=None, help="testing mode (default: test.crops)")
    parser.add_argument(
        "--scales", type=int, nargs="+", default=None, help="shorter sides of fcn testing (default: test.scales)"
    )
    parser.add_argument("--output", help="metrics json (default: OUTPUT_DIR/metrics.json)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)
    if args.scales and (args.crops or "") != "fcn":
        parser.error("--scales applies to --crops fcn only")
    if args.scales and min(args.scales) < 1:
        parser.error(f"--scales: sizes must be positive, got {args.scales}")
    cfg = load_cls_config(args.config, args.overrides)
    note_output("--output" if args.output else "output_dir", args.output or cfg.output_dir)

    metrics = run_cls_evaluation(cfg, args.weights, mode=args.crops, scales=args.scales, output=args.output)
    print(
        f"{metrics['crops']} testing, {metrics['num_images']} images: top-1 error {metrics['top1_error']:.2f}%  "
        f"top-5 error {metrics['top5_error']:.2f}%"
    )
    return 0
