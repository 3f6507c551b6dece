#!/usr/bin/env python
"""Inference or training speed of a config's detector against torchvision's identical network.

    python tools/benchmark.py configs/torchvision/mask_rcnn_r50_fpn.yaml model.backbone.depth=101 --iters 3
    python tools/benchmark.py CONFIG --dtype fp32,bf16       # fp32 and bf16 (test.precision)
    python tools/benchmark.py CONFIG --train --iters 3       # forward + backward + SGD step
    python tools/benchmark.py CONFIG --device cuda --dtype fp16

Both models get the same weights (random and calibrated unless --weights or model.weights is given) and
the same synthetic image; their runs alternate. See restransfer/benchmark.py for what is measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from restransfer.benchmark import as_json, format_report, run_benchmark
from restransfer.cli import config_from_args, model_parser, run_tool


def _parser() -> argparse.ArgumentParser:
    p = model_parser(__doc__, "detector checkpoint (default: model.weights, else calibrated random weights)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="fp32", metavar="fp32|bf16|fp16[,...]",
                   help="precision of our model, or several separated by commas (fp32,bf16), timed in the same "
                        "interleaved runs; torchvision's model runs fp32 on CPU, autocast at the first one on CUDA")
    p.add_argument("--train", action="store_true", help="time a training step instead of inference")
    p.add_argument("--iters", type=int, default=5, help="timed runs per model (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per model first (default 1)")
    p.add_argument("--size", type=int, nargs=2, default=(800, 1067), metavar=("H", "W"),
                   help="input image size (default 800 1067; inference resizes to input.min_size_test)")
    p.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's choice)")
    p.add_argument("--no-reference", action="store_true", help="skip torchvision's model")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="training on channels_last activations (default: on CUDA, or as solver.channels_last says)")
    p.add_argument("--json", help="also write the results here")
    return p


def main(argv=None) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch < 1:
        print("error: --iters and --batch must be at least 1, --warmup at least 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    result = run_benchmark(cfg, device=args.device, precision=args.dtype.split(","), train=args.train, iters=args.iters,
                           warmup=args.warmup, size=tuple(args.size), batch=args.batch,
                           reference=not args.no_reference, channels_last=args.channels_last)
    print(format_report(result), end="")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(as_json(result), indent=1, default=str) + "\n", encoding="utf-8")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower --batch or --size"))
