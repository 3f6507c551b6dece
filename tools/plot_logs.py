#!/usr/bin/env python
"""Training curves of one or more runs: loss terms, learning rate and AP over iterations, runs overlaid.

    python tools/plot_logs.py OUTPUT_DIR [OUTPUT_DIR ...] [--keys total_loss lr bbox/AP] --output curves.png

Each OUTPUT_DIR is a training output_dir (its log.jsonl, and metrics.json for the final AP). Losses are
drawn smoothed with the raw values faint behind. A failure ends with ``error: ...`` and exit status 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.cli import note_output, run_tool


def main(argv=None) -> int:
    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR", help="training output folders")
    p.add_argument("--keys", nargs="+", help="what to plot (default: every loss term, lr and the AP values)")
    p.add_argument("--output", required=True, help="the PNG to write, e.g. curves.png")
    p.add_argument(
        "--x", choices=("iteration", "images"), default="iteration", help="x axis: iterations or images seen"
    )
    p.add_argument("--smooth", type=int, default=5, help="moving-average window in logged points (1: none)")
    args = p.parse_args(argv)
    note_output("--output", args.output)
    from restransfer.analysis.curves import plot_runs

    drawn = plot_runs(args.output_dirs, args.output, keys=args.keys, x=args.x, window=args.smooth)
    for key, runs in drawn.items():
        print(f"{key}: " + ", ".join(f"{name} ({n} points)" for name, n in runs.items()))
    print(f"curves: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
