#!/usr/bin/env python
"""What torch.compile (solver.compile, test.compile) gives the config's model, compile time included.

    python tools/benchmark_compile.py configs/demo_shapes_mask_rcnn_r18.yaml --train --iters 20
    python tools/benchmark_compile.py CONFIG --train --dtype bf16 --size 256 256
    python tools/benchmark_compile.py CONFIG --images 200 input.min_size_test=256 input.max_size_test=427
    python tools/benchmark_compile.py CONFIG --images 200 --variants plain,plain+compile,optimized,optimized+compile

--train times training steps eagerly and with the backbone compiled (dynamic shapes), alternating, and reports
the compile time and after how many steps compiling has paid for itself. Without it, --images N images with
COCO's size distribution (short side 480-640, width/height 0.5-2) go through each variant in turn: plain
(test.optimize false) or optimized (BN folding, our fused layers, channels_last), eager or +compile. It reports
images/s over the whole run (compile time included), the steady time per image, the distinct padded input
shapes and how many calls compiled. Weights are random (calibrated for inference); the inductor cache starts
empty unless TORCHINDUCTOR_CACHE_DIR is set. See restransfer/benchmark/compile.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import torch

try:
    import restransfer  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.benchmark.compile import INFERENCE_VARIANTS, run_compile_inference, run_compile_training
from restransfer.cli import add_size_argument, run_tool
from restransfer.config import load_config
from restransfer.devices import resolve_device, resolve_precision
from restransfer.errors import ConfigError
from restransfer.fileio import atomic_write_text


def _parser() -> argparse.ArgumentParser:
    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config of the model")
    p.add_argument("opts", nargs="*", metavar="key=value", help="config overrides, e.g. input.min_size_test=256")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--train", action="store_true", help="time training steps instead of inference")
    p.add_argument(
        "--dtype",
        default=None,
        help="training: autocast precision (default: solver.precision, auto resolved); inference runs test.precision",
    )
    p.add_argument("--iters", type=int, default=10, help="--train: timed steps per model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="--train: untimed steps first (default 2)")
    add_size_argument(p, "--train: synthetic image size (default: input.max_size_train square)", default=None)
    p.add_argument("--batch", type=int, default=None, help="--train: images per step (default solver.ims_per_batch)")
    p.add_argument("--images", type=int, default=200, help="inference: images of COCO's sizes (default 200)")
    p.add_argument(
        "--variants",
        default="optimized,optimized+compile",
        help=f"inference: comma-separated, of {', '.join(INFERENCE_VARIANTS)}",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's choice)")
    p.add_argument("--json", help="also write the results here")
    return p


def _train_report(out) -> str:
    c = out["config"]
    lines = [
        f"{c['arch']} {c['head']} R{c['depth']} training step on {c['device']} ({c['machine']}), "
        f"{c['threads']} threads, {c['batch']} x {c['image_size'][0]}x{c['image_size'][1]}, {c['precision']}, "
        f"channels_last {c['channels_last']}",
        f"load average {out['environment']['load_average_before']} -> {out['environment']['load_average_after']}",
    ]
    for name, m in out["measurements"].items():
        step = m.latency_median * c["batch"]
        extra = f"  compile {m.compile_s:.1f} s over {m.compile_calls} step(s)" if m.compile_s is not None else ""
        lines.append(
            f"  {name:28s} step {step:7.3f} s (p25 {m.latency_p25 * c['batch']:.3f}, "
            f"p75 {m.latency_p75 * c['batch']:.3f}){extra}"
        )
    even = out["break_even_steps"]
    lines.append(
        f"compiled / eager speed {out['speedup']:.3f}x; "
        + (f"compiling pays after {even} steps" if even else "compiling never pays (the step is not faster)")
    )
    lines.append(f"compiled: {out['compile_events']}")
    return "\n".join(lines) + "\n"


def _inference_report(out) -> str:
    c = out["config"]
    shapes = out["input_shapes"]
    lines = [
        f"{c['arch']} {c['head']} R{c['depth']} inference on {c['device']} ({c['machine']}), {c['threads']} "
        f"threads, {c['num_images']} images of COCO's sizes resized to {c['min_size_test']} "
        f"(max {c['max_size_test']}), {c['precision']}",
        f"load average {out['environment']['load_average_before']} -> {out['environment']['load_average_after']}",
        f"{len(shapes)} distinct padded input shapes (multiples of {c['size_divisibility']}): "
        + " ".join(f"{h}x{w}" for h, w in shapes),
    ]
    for name, r in out["runs"].items():
        lines.append(
            f"  {name:18s} {r.images_per_s:6.2f} images/s over the run ({r.total_s:.1f} s), "
            f"steady {r.latency_median * 1000:.0f} ms/image (backbone {r.backbone_median * 1000:.0f} ms), "
            f"compile {r.compile_s:.1f} s, "
            f"{r.compiling_calls} compiling call(s) ({r.recompiles} recompile(s)), {r.graphs} graph(s), "
            f"{r.graph_breaks} graph break(s)"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = _parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.iters < 1 or args.warmup < 0 or args.images < 1:
        raise ConfigError("--iters and --images must be at least 1, --warmup at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, list(args.opts))
    if args.train:
        precision = args.dtype or str(cfg.solver.precision)
        if precision == "auto":
            precision = resolve_precision("auto", resolve_device(args.device))
        size = tuple(args.size) if args.size else (cfg.input.max_size_train,) * 2
        out = run_compile_training(
            cfg,
            device=args.device,
            precision=precision,
            iters=args.iters,
            warmup=args.warmup,
            size=size,
            batch=args.batch,
        )
        print(_train_report(out), end="")
        data = {**out, "measurements": {k: asdict(v) for k, v in out["measurements"].items()}}
    else:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        out = run_compile_inference(cfg, num_images=args.images, variants=variants, device=args.device)
        print(_inference_report(out), end="")
        data = {**out, "runs": {k: {**asdict(v), "recompiles": v.recompiles} for k, v in out["runs"].items()}}
    if args.json:
        atomic_write_text(args.json, json.dumps(data, indent=1, default=str) + "\n")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower --images, --batch or the image size"))
