"""COCO error analysis (the cocoapi analyze() breakdown): PR curves C75, C50, Loc, Sim, Oth, BG, FN overall,
per category and per object size, per-class PR curves and a confusion matrix.

Analyze a results file:

    python tools/analyze_coco.py --gt GT.json --results RES.json --iou-type bbox|segm --output DIR

Analyze a model on the config's test set:

    python tools/analyze_coco.py CONFIG --weights CKPT [CKPT ...] [--iou-type segm] --output DIR [key=value ...]

The detections are the evaluation's: several checkpoints are the ResNet paper's ensemble, and
test.box_refinement=true, test.aug.* add its test-time extras, as for tools/eval_coco.py.

DIR receives analysis.json (each curve's area in percent: overall, per size, per category) and the PNGs.
A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
The installed command: ``restransfer analyze ...`` with the same arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..analysis.coco_errors import analyze_coco_errors, read_ground_truth, read_results
from ..analysis.detection_plots import write_analysis
from ..cli import EVAL_MEMORY_HINT, add_weights_argument, deferred_module, note_output, split_weights
from ..config import load_config
from ..evaluation.coco import predictions_to_coco_results

# imported once the arguments and the config are checked (cli.deferred_module)
engine_evaluate = deferred_module("restransfer.engine.evaluate")

MEMORY_HINT = EVAL_MEMORY_HINT


def _parser() -> argparse.ArgumentParser:
    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config whose data.test set is analysed")
    add_weights_argument(p, "checkpoint (CONFIG mode)")
    p.add_argument("--gt", help="COCO annotation json (results-file mode)")
    p.add_argument("--results", help="COCO results json (results-file mode)")
    p.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox", help="boxes or masks")
    p.add_argument("--output", required=True, help="folder for analysis.json and the PNGs")
    p.add_argument("opts", nargs="*", metavar="key=value", help="config overrides (CONFIG mode)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    args.weights, args.opts = split_weights(args.weights, args.opts)
    note_output("--output", args.output)
    if args.config and args.weights and not (args.gt or args.results):
        cfg = load_config(args.config, args.opts)
        # the evaluation's predictions: test.aug, test.box_refinement and several --weights (an ensemble) apply
        dataset, predictions = engine_evaluate.predict_dataset(cfg, args.weights)
        gt, image_ids = dataset.coco.dataset, list(dataset.image_ids)
        results = predictions_to_coco_results(predictions, dataset.label_to_cat_id)
        gt_name, results_name = str(dataset.json_path), f"the detections of {' + '.join(args.weights)}"
    elif args.gt and args.results and not args.config:
        if args.opts:
            parser.error(f"overrides {args.opts} only apply with CONFIG")
        gt, results, image_ids = read_ground_truth(args.gt), read_results(args.results), None
        gt_name, results_name = args.gt, args.results
    else:
        parser.print_usage(sys.stderr)
        print("error: give CONFIG --weights CKPT, or --gt GT.json --results RES.json", file=sys.stderr)
        return 2
    analysis = analyze_coco_errors(
        gt, results, args.iou_type, image_ids=image_ids, gt_name=gt_name, results_name=results_name
    )
    write_analysis(args.output, analysis, gt, results, image_ids)
    overall = analysis.areas()
    print(f"{args.iou_type} error analysis (area under each PR curve, %):")
    print("".join(f"{c:>8}" for c in overall))
    print("".join(f"{'n/a' if v is None else f'{v:.2f}':>8}" for v in overall.values()))
    print(f"analysis: {Path(args.output) / 'analysis.json'}")
    return 0
