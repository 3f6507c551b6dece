"""The plain-versus-residual study: train networks on the same data and draw the paper's figure.

Usage:
    python tools/degradation.py CONFIG_A [CONFIG_B ...] --output DIR [--depths 8 32] [key=value ...]

Every CONFIG is trained as it is into DIR/<plain|resnet>-<depth>/, or with ``--depths`` as a plain and a
residual net at each depth. DIR/degradation.png shows training error (dashed) and test error (bold) against
iterations, plain nets left and residual nets right; DIR/curves.json holds the curves and DIR/table.md the
final errors. Runs already finished in DIR are not trained again. Example (the embedded demo, a few minutes
on a 2-core CPU):

    python tools/degradation.py configs/demo_degradation.yaml --depths 8 32 --output output/demo_degradation

A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
"""

import argparse
import sys
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.cli import note_output, run_tool


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train plain and residual nets and draw training/test error.")
    parser.add_argument("configs", nargs="+", help="classification YAML configs (key=value overrides may follow)")
    parser.add_argument("--output", required=True, help="folder of the runs, the figure, curves.json and table.md")
    parser.add_argument(
        "--depths",
        type=int,
        nargs="+",
        default=(),
        help="train every config as a plain and a residual net at each of these depths",
    )
    args = parser.parse_intermixed_args(argv)
    configs = [c for c in args.configs if "=" not in c]
    overrides = [c for c in args.configs if "=" in c]
    if not configs:
        parser.error("give at least one config file")
    note_output("--output", args.output)

    from restransfer.classification.degradation import plan_runs, run_study
    from restransfer.engine.logger import setup_logging

    setup_logging(args.output)
    runs = plan_runs(configs, args.output, depths=args.depths, overrides=overrides)
    run_study(runs, args.output, title=", ".join(Path(c).name for c in configs))
    print(f"figure: {Path(args.output) / 'degradation.png'}")
    print((Path(args.output) / "table.md").read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower solver.ims_per_device or test.ims_per_batch"))
