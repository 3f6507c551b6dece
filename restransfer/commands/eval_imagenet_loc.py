"""Evaluate ImageNet CLS-LOC localization with the ILSVRC devkit's numbers (``eval_clsloc.m``).

Submission files:
    python tools/eval_imagenet_loc.py --submission loc.txt \\
        --annotations ILSVRC/Annotations/CLS-LOC/val \\
        --ground-truth LOC_devkit/data/ILSVRC2015_clsloc_validation_ground_truth.txt \\
        --synsets LOC_devkit/data/map_clsloc.txt \\
        [--blacklist LOC_devkit/data/ILSVRC2015_clsloc_validation_blacklist.txt] [--output metrics.json]
    python tools/eval_imagenet_loc.py --submission loc.csv \\
        --solution LOC_val_solution.csv --synsets LOC_synset_mapping.txt [--output metrics.json]

A detector checkpoint (runs inference on the config's test set, writes both submissions and metrics.json):
    python tools/eval_imagenet_loc.py configs/imagenet_loc_faster_rcnn_r101.yaml --weights CKPT \\
        [--mode classifier --classifier-scores val_logits.npy] [key=value ...]

A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
``restransfer eval CONFIG --weights CKPT ...`` runs the detector mode for a CLS-LOC test set.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

from ..analysis.run_reports import loc_files_report
from ..cli import EVAL_MEMORY_HINT, add_path_options, add_weights_argument, deferred_module, note_output, split_weights
from ..config import load_config
from ..evaluation.coco import write_metrics
from ..evaluation.imagenet_loc import evaluate_files
from ..evaluation.imagenet_loc_guesses import load_classifier_scores

# imported once the arguments and the config are checked (cli.deferred_module)
engine_evaluate = deferred_module("restransfer.engine.evaluate")
inference_classifier = deferred_module("restransfer.inference.classifier")

MEMORY_HINT = EVAL_MEMORY_HINT
# the options naming the ground truth (devkit or Kaggle files) and how many guesses count: file mode's
# evaluation and its report take the same ones
_GROUND_TRUTH_OPTIONS = ("synsets", "annotations", "ground_truth", "solution", "blacklist", "max_guesses")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="config file (detector mode); omit to evaluate --submission")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    add_path_options(
        p,
        submission="devkit text submission or Kaggle CSV (ImageId,PredictionString)",
        gt_class_submission="submission made with the ground-truth class; reported as gt_class_loc_error",
        annotations="devkit validation XML folder (ILSVRC/Annotations/CLS-LOC/val)",
        ground_truth="ILSVRC2015_clsloc_validation_ground_truth.txt",
        solution="Kaggle LOC_val_solution.csv (instead of --annotations)",
        synsets="map_clsloc.txt (labels = devkit ids) or LOC_synset_mapping.txt",
    )
    p.add_argument("--blacklist", help="ILSVRC2015_clsloc_validation_blacklist.txt (1-based image indices)")
    p.add_argument("--output", help="write metrics.json here")
    p.add_argument("--max-guesses", type=int, default=5, help="guesses per image that count (default 5)")
    add_weights_argument(p, "detector checkpoint (config mode)")
    p.add_argument(
        "--mode",
        default="classifier",
        choices=("detector", "classifier", "gt_class"),
        help="how guesses are made from the detections (config mode)",
    )
    p.add_argument("--classifier-scores", help="(N, C) classifier scores, .npy or text, rows in dataset order")
    p.add_argument(
        "--classifier-synsets",
        help="class list in the classifier's column order (default: sorted WNIDs, torchvision/timm order)",
    )
    p.add_argument(
        "--classifier-weights",
        help="ResNet ImageNet weights (file, torchvision://..., timm://...) "
        "or a tools/train_cls.py checkpoint (its depth, style, classes and pixel convention are "
        "its own; trained on the train/<wnid> folders its columns are the sorted WNIDs) to compute "
        "classifier scores instead of --classifier-scores",
    )
    p.add_argument(
        "--classifier-depth",
        type=int,
        default=101,
        help="ResNet depth of --classifier-weights (a train_cls checkpoint says its own)",
    )
    p.add_argument("--classifier-style", default="pytorch", choices=("pytorch", "caffe"))
    # intermixed: the documented 'CONFIG --weights CKPT key=value ...' puts options between the positionals
    args = p.parse_intermixed_args(argv)
    args.weights, args.overrides = split_weights(args.weights, args.overrides)

    note_output("--output", args.output)
    if args.config is None:
        metrics = _evaluate_submission(p, args)
    else:
        metrics = _evaluate_config(p, args)
    _print(metrics)
    if args.output:
        write_metrics(metrics, args.output)
        print(f"metrics: {args.output}")
        if args.config is None:
            loc_files_report(args.output, metrics, args.submission, **_ground_truth_files(args))
    return 0


def _evaluate_submission(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    if not args.submission or not args.synsets:
        p.error("give --submission and --synsets (or a config file)")
    if (args.annotations is None) == (args.solution is None):
        p.error("give either --annotations (with --ground-truth) or --solution")
    return evaluate_files(args.submission, gt_class_submission=args.gt_class_submission, **_ground_truth_files(args))


def _ground_truth_files(args: argparse.Namespace) -> Dict[str, Any]:
    """The file-mode options that say what a submission is scored against, as the keyword arguments of
    :func:`~restransfer.evaluation.imagenet_loc.evaluate_files` and of its report."""
    return {name: getattr(args, name) for name in _GROUND_TRUTH_OPTIONS}


def _evaluate_config(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, args.overrides)
    note_output("output_dir", cfg.output_dir)
    scores = load_classifier_scores(args.classifier_scores) if args.classifier_scores else None
    classifier = None
    if args.mode == "classifier" and scores is None:
        if not args.classifier_weights:
            p.error("--mode classifier needs --classifier-scores or --classifier-weights")
        classifier = inference_classifier.load_classifier(
            args.classifier_depth, args.classifier_weights, style=args.classifier_style
        )
    return engine_evaluate.run_imagenet_loc_evaluation(
        cfg,
        args.weights,
        mode=args.mode,
        classifier_scores=scores,
        classifier=classifier,
        classifier_synsets=args.classifier_synsets,
        blacklist=args.blacklist,
    )


def _print(metrics: dict) -> None:
    for key in ("top1_cls_error", "top5_cls_error", "top1_loc_error", "top5_loc_error", "gt_class_loc_error"):
        if key in metrics:
            print(f"{key:>20s}: {metrics[key]:6.2f} %")
