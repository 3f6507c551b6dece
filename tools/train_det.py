"""Train (or evaluate) a detector from a YAML config.

Usage:
    python tools/train_det.py CONFIG [--resume] [--eval-only] [key=value ...]
    torchrun --nproc_per_node=N tools/train_det.py CONFIG [...]

Overrides are YAML-typed: ``solver.max_iter=2000 "solver.steps=[1500,1800]" model.backbone.depth=50``.
"""
import argparse
import sys

from restransfer.config import ConfigError, load_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train a Faster/Mask R-CNN from a YAML config.")
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    parser.add_argument("--eval-only", action="store_true",
                        help="only evaluate model.weights (or the last checkpoint of output_dir) on data.test")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from restransfer.engine import distributed
    from restransfer.engine.checkpoint import Checkpointer
    from restransfer.engine.inference import evaluate_model
    from restransfer.engine.logger import setup_logging
    from restransfer.engine.trainer import train

    try:
        if args.eval_only:
            device = distributed.resolve_device(cfg.device)
            distributed.init_distributed(device)
            setup_logging(cfg.output_dir, distributed.get_rank())
            weights = cfg.model.weights or (str(Checkpointer(cfg.output_dir).last() or "") or None)
            if cfg.data.test is None:
                print("error: --eval-only needs data.test in the config", file=sys.stderr)
                return 2
            evaluate_model(cfg, weights=weights)
        else:
            train(cfg, resume=args.resume)
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
