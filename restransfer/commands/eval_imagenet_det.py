"""Evaluate ImageNet-DET detections exactly as the ILSVRC devkit's eval_detection.m does.

Submission file against XML ground truth:
    python tools/eval_imagenet_det.py --submission S --annotations ILSVRC/Annotations/DET/val \\
        --image-list ILSVRC/ImageSets/DET/val.txt --synsets map_det.txt [--blacklist B] [--output metrics.json]

A trained model on the config's test set (a json from datasets/prepare_imagenet_det.py); the
submission file and metrics.json go to output_dir:
    python tools/eval_imagenet_det.py CONFIG --weights CKPT [CKPT ...] [key=value ...]
(several checkpoints: the ResNet paper's ensemble; test.box_refinement / test.aug.* add its test-time extras)

A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
``restransfer eval CONFIG --weights CKPT ...`` runs the model mode for an ImageNet-DET test set.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..analysis.run_reports import det_run_report
from ..cli import EVAL_MEMORY_HINT, add_path_options, add_weights_argument, deferred_module, note_output, split_weights
from ..config import load_config
from ..evaluation.coco import write_metrics
from ..evaluation.imagenet_det import evaluate_files, format_table, metrics_dict

# imported once the arguments and the config are checked (cli.deferred_module)
engine_evaluate = deferred_module("restransfer.engine.evaluate")

MEMORY_HINT = EVAL_MEMORY_HINT
# the devkit files that file mode evaluates (option: help), all of them needed there and none with a CONFIG
_FILE_MODE = {
    "submission": "lines '<image_index> <DET_id> <confidence> <xmin> <ymin> <xmax> <ymax>'",
    "annotations": "folder of XML annotations, e.g. ILSVRC/Annotations/DET/val",
    "image_list": "image list '<image> <index>', e.g. ILSVRC/ImageSets/DET/val.txt",
    "synsets": "the devkit's map_det.txt",
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (model mode)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (model mode)")
    add_weights_argument(p, "checkpoint to evaluate (model mode)")
    add_path_options(p, **_FILE_MODE)
    p.add_argument("--blacklist", help="optional devkit blacklist '<image_index> <WNID>'")
    p.add_argument("--output", help="metrics.json path (default: output_dir/metrics.json in model mode)")
    p.add_argument("--no-coco", action="store_true", help="skip the COCO mAP@.5:.95 side by side")
    # intermixed: the documented 'CONFIG --weights CKPT key=value ...' puts options between the positionals
    args = p.parse_intermixed_args(argv)
    args.weights, args.overrides = split_weights(args.weights, args.overrides)
    file_mode = [getattr(args, name) for name in _FILE_MODE]
    if args.config is None:
        if not all(file_mode):
            p.error("give --submission, --annotations, --image-list and --synsets, or a CONFIG with --weights")
    elif any(file_mode):
        p.error("a CONFIG evaluates a model; --submission/--annotations/--image-list/--synsets evaluate a file")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    note_output("--output", args.output)
    if args.config is None:
        result, gt, coco = evaluate_files(
            args.submission,
            args.annotations,
            args.image_list,
            args.synsets,
            args.blacklist,
            with_coco=not args.no_coco,
        )
        print(format_table(result, gt, coco))
        if args.output:
            write_metrics(metrics_dict(result, gt.wnids, coco), args.output)
            print(f"metrics: {args.output}")
            det_run_report(args.output, None, [], result, gt.wnids, gt.names)
        return 0
    cfg = load_config(args.config, args.overrides)
    note_output("output_dir", cfg.output_dir)
    run = engine_evaluate.run_imagenet_det_evaluation(
        cfg, args.weights, blacklist=args.blacklist, metrics_path=args.output, with_coco=not args.no_coco
    )
    print(f"submission file: {run.submission_path}")
    print(format_table(run.result, run.ground_truth, run.coco))
    print(f"metrics: {run.metrics_path}")
    return 0
