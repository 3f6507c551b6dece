#!/usr/bin/env python
"""Export a detector to TorchScript (traced) or ONNX.

    python tools/export.py CONFIG --weights W --format torchscript --output model.pt [--size H W]
    python tools/export.py CONFIG --weights W --format onnx --output model.onnx [--size H W] [--dynamic] [--verify]

The file takes one float RGB image (3, H, W) in [0, 1] of the export size (any size with --dynamic)
and returns boxes, scores, labels (and masks). restransfer/inference/export.py documents what is fixed at export
time and how dynamic sizes behave. A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows
the traceback).
"""
from __future__ import annotations

import argparse
import sys

from restransfer.cli import config_from_args, model_parser, note_output, run_tool
from restransfer.inference.export import export_onnx, export_torchscript, verify_export
from restransfer.models import build_model


def _parser() -> argparse.ArgumentParser:
    p = model_parser(__doc__)
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--output", required=True, help="file to write (.pt for TorchScript, .onnx for ONNX)")
    p.add_argument("--size", type=int, nargs=2, default=(800, 1067), metavar=("H", "W"),
                   help="input image size of the export (default 800 1067)")
    p.add_argument("--dynamic", action="store_true", help="accept other image sizes too (see restransfer/inference/export.py)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--verify", action="store_true",
                   help="compare the file's detections with the eager model's on a synthetic image")
    return p


def main(argv=None) -> int:
    args = _parser().parse_intermixed_args(argv)
    note_output("--output", args.output)
    cfg = config_from_args(args)
    if not cfg.model.weights:
        print("warning: no --weights or model.weights: exporting an untrained model", file=sys.stderr)
    model = build_model(cfg).eval()
    size = tuple(args.size)
    if args.format == "torchscript":
        path = export_torchscript(model, args.output, size=size, dynamic=args.dynamic)
    else:
        path = export_onnx(model, args.output, size=size, opset=args.opset, dynamic=args.dynamic)
    print(f"wrote {path}")
    if args.verify:
        sizes = [size] + ([(size[0] * 3 // 4, size[1])] if args.dynamic else [])
        ok = True
        for s in sizes:
            report = verify_export(model, path, s)
            ok &= report["agreement"] == 1.0
            print(f"{s[0]}x{s[1]}: {report['detections']} detections, agreement {100 * report['agreement']:.1f}%, "
                  f"max box difference {report['max_box_difference_px']:.2e} px, "
                  f"max score difference {report['max_score_difference']:.2e}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="export at a smaller --size"))
