"""COCO evaluation: AP (mAP@.5:.95), AP50 (mAP@.5), AP75, APs/m/l and per-category AP.

Evaluate a model on the config's test set:

    python tools/eval_coco.py CONFIG --weights CKPT [--output metrics.json] [key=value ...]

Several checkpoints (--weights A B C) evaluate the ResNet paper's ensemble; test.box_refinement=true,
test.aug.min_sizes=[...], test.aug.flip=true and test.aug.merge=union|maxout add its test-time extras.

Evaluate an existing COCO results file:

    python tools/eval_coco.py --gt GT.json --results RES.json --iou-type bbox [segm] [--output metrics.json]
                              [--allow-empty]

--allow-empty scores a results file without detections (a model that found nothing): every metric with
ground truth is then 0, and the output says so; without it an empty file is an error.

A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
``restransfer eval CONFIG --weights CKPT ...`` runs the CONFIG mode for a COCO test set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..analysis.run_reports import coco_files_report
from ..cli import EVAL_MEMORY_HINT, add_weights_argument, deferred_module, note_output, split_weights
from ..config import load_config
from ..evaluation.coco import ENGINES, evaluate_coco, format_metrics_table, load_results, write_metrics

# imported once the arguments and the config are checked (cli.deferred_module)
engine_evaluate = deferred_module("restransfer.engine.evaluate")

MEMORY_HINT = EVAL_MEMORY_HINT


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog="Give either CONFIG with --weights, or --gt with --results.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML config whose data.test set is evaluated")
    add_weights_argument(p, "checkpoint to evaluate (CONFIG mode)")
    p.add_argument("--gt", help="COCO annotation json (results-file mode)")
    p.add_argument("--results", help="COCO results json (results-file mode)")
    p.add_argument(
        "--iou-type",
        nargs="+",
        choices=("bbox", "segm"),
        default=None,
        help="what to evaluate (default: bbox; in CONFIG mode bbox plus segm for mask models)",
    )
    p.add_argument("--output", help="metrics json (default in CONFIG mode: OUTPUT_DIR/metrics.json)")
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="results-file mode: score an empty results file (every metric with ground truth is 0)",
    )
    p.add_argument(
        "--engine",
        choices=("auto",) + ENGINES,
        default="auto",
        help="COCOeval implementation (same numbers; auto picks the fastest installed)",
    )
    p.add_argument("opts", nargs="*", metavar="key=value", help="config overrides (CONFIG mode)")
    return p


def _config_mode(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, args.opts)
    note_output("--output" if args.output else "output_dir", args.output or cfg.output_dir)
    metrics_path = Path(args.output) if args.output else Path(cfg.output_dir) / "metrics.json"
    results_path = metrics_path.with_name("coco_instances_results.json")
    metrics = engine_evaluate.run_coco_evaluation(
        cfg,
        args.weights,
        iou_types=args.iou_type,
        engine=args.engine,
        metrics_path=metrics_path,
        results_path=results_path,
    )
    print(f"metrics: {metrics_path}\nresults: {results_path}")
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    args.weights, args.opts = split_weights(args.weights, args.opts)
    if args.config and args.weights:
        metrics = _config_mode(args)
    elif args.gt and args.results and not args.config:
        if args.opts:
            parser.error(f"overrides {args.opts} only apply with CONFIG")
        note_output("--output", args.output)
        results = load_results(args.results)
        metrics = evaluate_coco(
            args.gt,
            results,
            args.iou_type or ("bbox",),
            engine=args.engine,
            allow_empty=args.allow_empty,
            results_name=args.results,
        )
        if not results:
            print(f"{args.results} holds no detections: every metric with ground truth is 0 (--allow-empty)")
        if args.output:
            write_metrics(metrics, args.output)
            print(f"metrics: {args.output}")
            coco_files_report(args.output, metrics, args.gt, args.results)
    else:
        parser.print_usage(sys.stderr)
        print("error: give CONFIG --weights CKPT, or --gt GT.json --results RES.json", file=sys.stderr)
        return 2
    print(format_metrics_table(metrics), end="")
    return 0
