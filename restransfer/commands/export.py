"""Export a detector to TorchScript (traced) or ONNX.

    python tools/export.py CONFIG --weights W --format onnx --output model.onnx [--verify] [--verify-sizes 96x128,...]
    python tools/export.py CONFIG --weights W --format torchscript --output model.pt [--static --size H W]

The file takes one float RGB image (3, H, W) in [0, 1] of any size (of --size only, with --static) and
returns boxes, scores, labels (and masks). ONNX is written by torch.export where it can capture the model,
else by the TorchScript-based exporter, and the output says why (--exporter picks one). --verify runs the
file (ONNX Runtime, torch.jit.load) and the PyTorch model on synthetic images of 96x128, 128x128 and 160x224
(--verify-sizes) and prints how many detections agree (same label, IoU > 0.99, score within 1e-3); any
disagreement is an error. restransfer/inference/export.py documents what is fixed at export time.
A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
The installed command: ``restransfer export CONFIG --weights W --format onnx --output model.onnx``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..cli import add_size_argument, config_from_args, model_parser, note_output
from ..inference.export import (
    EXPORTERS,
    VERIFY_SIZES,
    describe_verification,
    export_model,
    require_agreement,
    verify_export_sizes,
)
from ..models import build_model

MEMORY_HINT = "export at a smaller --size"


def _parser() -> argparse.ArgumentParser:
    p = model_parser(__doc__)
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--output", required=True, help="file to write (.pt for TorchScript, .onnx for ONNX)")
    add_size_argument(
        p, "example image size the graph is recorded on; the one size accepted with --static (default 800 1067)"
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--dynamic", action="store_true", help="any image size (the default; kept for old scripts)")
    shape.add_argument("--static", action="store_true", help="accept images of --size only")
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="auto",
        help="ONNX exporter: torch.export where it can capture the model, else the TorchScript-based one "
        "(auto, the default), or only one of them",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; at least 18 with torch.export)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare the file's detections with the PyTorch model's at several image sizes",
    )
    p.add_argument(
        "--verify-sizes",
        type=_sizes,
        metavar="HxW[,HxW...]",
        help="image sizes for --verify (implies it; default " + ",".join(f"{h}x{w}" for h, w in VERIFY_SIZES) + ")",
    )
    return p


def _sizes(text: str):
    sizes = []
    for item in text.split(","):
        h, sep, w = item.strip().lower().partition("x")
        if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
            raise argparse.ArgumentTypeError(f"expected sizes as HxW[,HxW...], e.g. 96x128,160x224, got {text!r}")
        sizes.append((int(h), int(w)))
    return sizes


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    note_output("--output", args.output)
    cfg = config_from_args(args)
    if not cfg.model.weights:
        print("warning: no --weights or model.weights: exporting an untrained model", file=sys.stderr)
    model = build_model(cfg).eval()
    size = tuple(args.size)
    result = export_model(
        model, args.output, args.format, size=size, dynamic=not args.static, opset=args.opset, exporter=args.exporter
    )
    print(result.describe())
    if args.verify or args.verify_sizes:
        reports = verify_export_sizes(model, result.path, [size] if args.static else args.verify_sizes or VERIFY_SIZES)
        for report in reports:
            print(describe_verification(report))
        require_agreement(reports)  # ExportMismatchError: "error: ...", exit status 2
    return 0
