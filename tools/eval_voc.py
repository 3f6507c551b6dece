"""Evaluate PASCAL VOC detections exactly as the devkit's VOCevaldet.m does (mAP@.5, plus AP at IoU .5:.95).

The devkit's results files (DIR holds comp4_det_<image set>_<class>.txt, one per class, lines
'<image id> <confidence> <xmin> <ymin> <xmax> <ymax>' in 1-based pixels; a class without a file has no
detections) against the XML ground truth:
    python tools/eval_voc.py --results DIR --annotations VOCdevkit/VOC2007/Annotations \\
        --image-set VOCdevkit/VOC2007/ImageSets/Main/test.txt [--metric voc2007|area] [--output metrics.json]

A trained model on the config's test set (data.test: {format: voc, root, year, split}); metrics.json,
report.html and the results files (output_dir/results/VOC<year>/Main/, as the evaluation server takes them)
go to output_dir:
    python tools/eval_voc.py CONFIG --weights CKPT [CKPT ...] [--metric voc2007|area] [key=value ...]
(several checkpoints: the ResNet paper's ensemble; test.box_refinement / test.aug.* add its test-time extras)

--metric: voc2007 (11-point, the VOC 2007 devkit) or area (VOC 2010+); default by year: voc2007 for VOC2007
annotations, area otherwise. A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.cli import EVAL_MEMORY_HINT, add_weights_argument, note_output, run_tool, split_weights
from restransfer.data.voc import VOC_CLASSES
from restransfer.evaluation.metrics_file import write_metrics
from restransfer.evaluation.voc import METRICS, default_metric, evaluate_voc, format_table, metrics_dict
from restransfer.evaluation.voc_io import load_ground_truth, read_results


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (model mode)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (model mode)")
    add_weights_argument(p, "checkpoint to evaluate (model mode)")
    p.add_argument("--results", help="folder of results files comp4_det_<image set>_<class>.txt")
    p.add_argument("--annotations", help="folder of XML annotations, e.g. VOCdevkit/VOC2007/Annotations")
    p.add_argument("--image-set", help="image-set list, e.g. VOCdevkit/VOC2007/ImageSets/Main/test.txt")
    p.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="class names in label order (default: the devkit's 20 PASCAL classes)",
    )
    p.add_argument("--metric", choices=METRICS, help="AP rule (default: voc2007 for VOC2007, else area)")
    p.add_argument("--output", help="metrics.json path (default: output_dir/metrics.json in model mode)")
    # intermixed: the documented 'CONFIG --weights CKPT key=value ...' puts options between the positionals
    args = p.parse_intermixed_args(argv)
    args.weights, args.overrides = split_weights(args.weights, args.overrides)
    file_mode = [args.results, args.annotations, args.image_set]
    if args.config is None:
        if not all(file_mode):
            p.error("give --results, --annotations and --image-set, or a CONFIG with --weights")
    elif any(file_mode) or args.classes:
        p.error("a CONFIG evaluates a model; --results/--annotations/--image-set/--classes evaluate files")
    return args


def _file_mode(args: argparse.Namespace) -> int:
    from restransfer.analysis.run_reports import voc_run_report

    classes = tuple(args.classes) if args.classes else VOC_CLASSES
    gt = load_ground_truth(args.annotations, args.image_set, classes)
    dets = read_results(args.results, gt)
    year = next((p.name[3:] for p in Path(args.annotations).resolve().parents if p.name.startswith("VOC")), None)
    result = evaluate_voc(gt, dets, args.metric or default_metric(year))
    metrics = metrics_dict(result, classes)
    print(
        f"{len(dets)} detections on {gt.num_images} images ({int((~gt.difficult).sum())} objects, "
        f"{int(gt.difficult.sum())} difficult)"
    )
    print(format_table(metrics))
    if args.output:
        write_metrics(metrics, args.output)
        print(f"metrics: {args.output}")
        voc_run_report(args.output, None, [], result, classes)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    note_output("--output", args.output)
    if args.config is None:
        return _file_mode(args)
    from restransfer.config import load_config
    from restransfer.engine.evaluate import evaluate

    overrides = list(args.overrides) + ([f"test.voc_metric={args.metric}"] if args.metric else [])
    cfg = load_config(args.config, overrides)
    note_output("--output" if args.output else "output_dir", args.output or cfg.output_dir)
    run = evaluate(cfg, args.weights, evaluator="voc", metrics_path=args.output, echo=True, report=True)
    if run is not None:
        print(f"metrics: {run.evaluator.metrics_path}")
        if run.evaluator.results_dir is not None:
            print(f"results files: {run.evaluator.results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint=EVAL_MEMORY_HINT))
