#!/usr/bin/env python
"""The ResNet paper's Table 9 (appendix B) for trained models, on the config's test set (COCO protocol).

    python tools/ablation.py CONFIG --weights W [--context-weights C] [--ensemble-weights W2 ...] \\
        [--scales 96 128 160] [--no-flip] [--merge union|maxout] [--output DIR] [--rows ...] [key=value ...]

Rows, each adding to the one before as in the paper:

* baseline: W as trained;
* + box refinement: test.box_refinement=true (regressed boxes scored again, NMS 0.3, box voting);
* + context: C, a model of the same config trained with model.roi_heads.global_context=true (with refinement);
* + multi-scale testing: the previous row's model at test.aug.min_sizes=--scales (and flipped) merged by --merge;
* ensemble: W and the --ensemble-weights, with refinement and multi-scale testing (global context is a
  property of the models: an ensemble shares one config, so this row uses models without it).

Each row prints box AP, AP50 (mask AP when the model predicts masks) and seconds per image of the
whole prediction step (building the models, reading the images, inference); ``ablation.json`` and each
row's metrics and results go under --output (default output_dir/ablation). Rows already in an
``ablation.json`` there and not run again are kept, so rows can be added as their models finish training.
"""

import argparse
import json
import sys
from pathlib import Path

from restransfer.cli import EVAL_MEMORY_HINT, note_output, run_tool

ROWS = ("baseline", "refinement", "context", "multiscale", "ensemble")
TITLES = {
    "baseline": "baseline",
    "refinement": "+ box refinement",
    "context": "+ context",
    "multiscale": "+ multi-scale testing",
    "ensemble": "ensemble",
}


def _rows(args):
    """(key, weights, overrides) of each row to run."""
    refine = ["test.box_refinement=true"]
    scales = [
        "test.aug.min_sizes=[" + ",".join(str(s) for s in args.scales) + "]",
        f"test.aug.flip={'false' if args.no_flip else 'true'}",
        f"test.aug.merge={args.merge}",
    ]
    context = ["model.roi_heads.global_context=true"]
    best, best_extra = ([args.context_weights], context) if args.context_weights else (args.weights, [])
    rows = {
        "baseline": (args.weights, []),
        "refinement": (args.weights, refine),
        "multiscale": (best, best_extra + refine + scales),
    }
    if args.context_weights:
        rows["context"] = ([args.context_weights], context + refine)
    if args.ensemble_weights:
        rows["ensemble"] = (args.weights + args.ensemble_weights, refine + scales)
    return [(k, *rows[k]) for k in ROWS if k in rows and k in args.rows]


def _format(results) -> str:
    lines = ["| row | models | box AP | box AP50 | mask AP | mask AP50 | s/image |", "|---|---|---|---|---|---|---|"]
    for r in results:
        segm = r["metrics"].get("segm", {})
        mask = f"{segm['AP']:.1f} | {segm['AP50']:.1f}" if segm else "- | -"
        lines.append(
            f"| {TITLES[r['row']]} | {len(r['weights'])} | {r['metrics']['bbox']['AP']:.1f} | "
            f"{r['metrics']['bbox']['AP50']:.1f} | {mask} | {r['seconds_per_image']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML config of the models (its data.test is evaluated)")
    p.add_argument(
        "--weights",
        nargs="+",
        required=True,
        help="the baseline model (several: the first is the baseline, the rest join the ensemble)",
    )
    p.add_argument("--context-weights", help="a model trained with model.roi_heads.global_context=true")
    p.add_argument("--ensemble-weights", nargs="+", default=[], help="more models for the ensemble row")
    p.add_argument("--scales", nargs="+", type=int, default=[96, 128, 160], help="test scales (short side)")
    p.add_argument("--no-flip", action="store_true", help="multi-scale testing without the flipped views")
    p.add_argument("--merge", choices=("union", "maxout"), default="union")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run (default: all given)")
    p.add_argument("--output", help="folder for ablation.json and the rows' metrics (default output_dir/ablation)")
    p.add_argument("opts", nargs="*", metavar="key=value", help="config overrides for every row")
    args = p.parse_intermixed_args(argv)
    args.ensemble_weights = args.weights[1:] + args.ensemble_weights
    args.weights = args.weights[:1]

    from restransfer.config import load_config
    from restransfer.engine.evaluate import evaluate
    from restransfer.evaluation.metrics_file import write_metrics

    base = load_config(args.config, args.opts)
    out = Path(args.output or Path(base.output_dir) / "ablation")
    note_output("--output", out)
    previous = out / "ablation.json"
    kept = {r["row"]: r for r in json.loads(previous.read_text(encoding="utf-8"))} if previous.is_file() else {}
    results = []
    for key, weights, overrides in _rows(args):
        cfg = load_config(args.config, list(args.opts) + overrides)
        # the COCO protocol run of eval_coco.py (metrics.json and coco_results.json in the row's folder), no report
        run = evaluate(
            cfg, weights, evaluator="coco", metrics_path=out / key / "metrics.json", report=False, progress=False
        )
        metrics, images = run.metrics, len(run.evaluator.predictions)
        seconds = run.seconds / max(1, images)
        results.append(
            {
                "row": key,
                "weights": [str(w) for w in weights],
                "overrides": overrides,
                "metrics": {t: {k: v for k, v in m.items() if k != "per_category"} for t, m in metrics.items()},
                "seconds_per_image": seconds,
                "images": images,
            }
        )
        print(f"{TITLES[key]}: box AP {metrics['bbox']['AP']:.2f}, {seconds:.3f} s/image", flush=True)
    done = {r["row"] for r in results}
    results = sorted(results + [r for k, r in kept.items() if k not in done], key=lambda r: ROWS.index(r["row"]))
    write_metrics(results, out / "ablation.json")
    print(_format(results))
    print(f"ablation: {out / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint=EVAL_MEMORY_HINT))
