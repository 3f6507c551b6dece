"""Train (or evaluate) a detector from a YAML config.

Usage:
    python tools/train_det.py CONFIG [--resume | --restart] [--eval-only] [--debug] [key=value ...]
    torchrun --nproc_per_node=N tools/train_det.py CONFIG [...]

Overrides are YAML-typed: ``solver.max_iter=2000 "solver.steps=[1500,1800]" model.backbone.depth=50``.
A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
``restransfer train CONFIG ...`` runs this for a detection config.
"""

from typing import Optional, Sequence

from ..cli import TRAIN_MEMORY_HINT, deferred_module, note_output, parse_training_args, training_parser
from ..config import load_config

# imported once the arguments and the config are checked (cli.deferred_module)
distributed = deferred_module("restransfer.distributed")
trainer = deferred_module("restransfer.engine.trainer")

MEMORY_HINT = TRAIN_MEMORY_HINT


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = training_parser("Train a Faster/Mask R-CNN from a YAML config.")
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate model.weights (or the last checkpoint of output_dir) on data.test",
    )
    args = parse_training_args(parser, argv)
    if args.eval_only and (args.resume or args.restart):
        parser.error("--eval-only trains nothing: leave out --resume/--restart")
    cfg = load_config(args.config, args.overrides)
    note_output("output_dir", cfg.output_dir)

    try:
        if args.eval_only:
            trainer.evaluate_only(cfg)
        else:
            trainer.train(cfg, resume=args.resume, restart=args.restart)
    finally:
        distributed.cleanup()
    return 0
