#!/usr/bin/env python
"""Inference or training speed of a config's detector against torchvision's identical network.

    python tools/benchmark.py configs/torchvision/mask_rcnn_r50_fpn.yaml model.backbone.depth=101 --iters 3
    python tools/benchmark.py CONFIG --dtype fp32,bf16       # fp32 and bf16 (test.precision)
    python tools/benchmark.py CONFIG --train --iters 3       # forward + backward + SGD step
    python tools/benchmark.py CONFIG --reference eager,compile   # also torchvision + torch.compile
    python tools/benchmark.py CONFIG --device cuda --dtype fp16
    python tools/benchmark.py CONFIG --data --workers 1,2    # the training data loader's images/s

All models get the same weights (random and calibrated unless --weights or model.weights is given) and
the same synthetic image; their runs alternate in one process. Afterwards each model's peak memory is
measured in fresh processes of its own (--memory fresh; the median of --memory-repeats, default 3): VmHWM
minus the RSS once model, optimizer and inputs exist (max_memory_allocated on CUDA). See
restransfer/benchmark/model.py for what is measured.
--data times the config's training loader instead (decode, augment, collate) with 0 and N workers, on
data.train or, when that is missing, on generated COCO-sized JPEGs (restransfer/benchmark/data.py).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from restransfer.benchmark import (
    as_json,
    format_loader_report,
    format_report,
    loader_report_json,
    run_benchmark,
    run_loader_benchmark,
)
from restransfer.cli import add_size_argument, config_from_args, model_parser, run_tool
from restransfer.errors import ConfigError
from restransfer.fileio import atomic_write_text


def _parser() -> argparse.ArgumentParser:
    p = model_parser(__doc__, "detector checkpoint (default: model.weights, else calibrated random weights)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype",
        default="fp32",
        metavar="fp32|bf16|fp16[,...]",
        help="precision of our model, or several separated by commas (fp32,bf16; inference only), timed "
        "in the same interleaved runs; torchvision's model runs as --reference-dtype says",
    )
    p.add_argument("--train", action="store_true", help="time a training step instead of inference")
    p.add_argument(
        "--iters",
        type=int,
        default=5,
        help="timed runs per model (default 5); with --data, timed rounds per worker count",
    )
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed runs per model first (default 1); with --data, untimed rounds"
    )
    add_size_argument(p, "input image size (default 800 1067; inference resizes to input.min_size_test)")
    p.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's choice)")
    p.add_argument(
        "--reference",
        metavar="eager,compile",
        help="torchvision references to time (default: eager): eager, the model as it is; compile, the "
        "same model with only its backbone + FPN wrapped in torch.compile, as a user would do "
        "(model.backbone = torch.compile(model.backbone)); its compile time is reported apart, "
        "with the time per image amortized over compilation + 100 calls",
    )
    p.add_argument(
        "--reference-dtype",
        metavar="fp32|bf16|fp16[,...]",
        help="precision(s) of the torchvision references (autocast); default: inference fp32 on CPU and "
        "the first --dtype on CUDA, training the --dtype",
    )
    p.add_argument("--no-reference", action="store_true", help="skip torchvision's model")
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compile reference (default inductor, what a user gets; aot_eager "
        "or eager trace the same graphs in seconds without generating code: the timing is then not inductor's)",
    )
    p.add_argument(
        "--memory",
        choices=("fresh", "off"),
        default="fresh",
        help="fresh (default): after the timing, each model's peak memory in a fresh process of its own; "
        "off: no memory figures",
    )
    p.add_argument(
        "--memory-repeats",
        type=int,
        default=3,
        metavar="N",
        help="fresh processes per model for the memory figures, which are their medians (default 3: one "
        "process's peak RSS varies by tens of percent with how the C heap is laid out)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="training on channels_last activations, ours and the references alike (default: on CUDA, or as "
        "solver.channels_last says)",
    )
    p.add_argument("--json", help="also write the results here")
    data = p.add_argument_group("data loader (--data)")
    data.add_argument(
        "--data", action="store_true", help="time the config's training data loader (images/s) instead of a model"
    )
    data.add_argument(
        "--workers",
        metavar="N[,N...]",
        help="worker counts to time besides 0 (in-process), e.g. 1,2 (default: data.num_workers)",
    )
    data.add_argument("--images", type=int, default=64, help="images per timed round (default 64)")
    return p


# model-timing options that mean nothing for --data, with how to name them in an error
_MODEL_ONLY = {
    "weights": "--weights",
    "device": "--device",
    "dtype": "--dtype",
    "train": "--train",
    "size": "--size",
    "batch": "--batch",
    "no_reference": "--no-reference",
    "channels_last": "--channels-last",
    "reference": "--reference",
    "reference_dtype": "--reference-dtype",
    "memory": "--memory",
    "memory_repeats": "--memory-repeats",
    "compile_backend": "--compile-backend",
}


def _worker_counts(text: str):
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 0:
        raise ConfigError(f"--workers {text!r}: give worker counts >= 0 separated by commas, e.g. --workers 1,2")
    return counts


def _data_main(args, parser: argparse.ArgumentParser) -> int:
    given = [flag for dest, flag in _MODEL_ONLY.items() if getattr(args, dest) != parser.get_default(dest)]
    if given:
        print(
            f"error: --data times the data loader only; drop {', '.join(given)} (model benchmark options)",
            file=sys.stderr,
        )
        return 2
    if args.images < 1:
        print("error: --images must be at least 1", file=sys.stderr)
        return 2
    cfg = config_from_args(args)
    try:
        workers = _worker_counts(args.workers) if args.workers else [int(cfg.data.num_workers)]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run_loader_benchmark(
        cfg, workers=workers, images_per_round=args.images, rounds=args.iters, warmup=args.warmup
    )
    print(format_loader_report(result), end="")
    if args.json:
        atomic_write_text(args.json, json.dumps(loader_report_json(result), indent=1) + "\n")
        print(f"results: {args.json}")
    return 0


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch < 1:
        print("error: --iters and --batch must be at least 1, --warmup at least 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data:
        return _data_main(args, parser)
    if args.workers is not None or args.images != parser.get_default("images"):
        print("error: --workers and --images are options of --data (the data-loader benchmark)", file=sys.stderr)
        return 2
    if args.no_reference and args.reference:
        print("error: --no-reference and --reference contradict each other; give one", file=sys.stderr)
        return 2
    reference = False if args.no_reference else (args.reference or "eager")
    ref_dtype = args.reference_dtype.split(",") if args.reference_dtype else None
    cfg = config_from_args(args)
    result = run_benchmark(
        cfg,
        device=args.device,
        precision=args.dtype.split(","),
        train=args.train,
        iters=args.iters,
        warmup=args.warmup,
        size=tuple(args.size),
        batch=args.batch,
        reference=reference,
        reference_precision=ref_dtype,
        memory=args.memory,
        memory_repeats=args.memory_repeats,
        compile_backend=args.compile_backend,
        channels_last=args.channels_last,
    )
    print(format_report(result), end="")
    if args.json:
        atomic_write_text(args.json, json.dumps(as_json(result), indent=1, default=str) + "\n")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower --batch or --size"))
