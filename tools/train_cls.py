"""Train an image classifier (ImageNet-arch ResNet or the paper's CIFAR networks) from a YAML config.

Usage:
    python tools/train_cls.py CONFIG [--resume | --restart] [--debug] [key=value ...]
    torchrun --nproc_per_node=N tools/train_cls.py CONFIG [...]

``solver.ims_per_batch`` is the total batch of one optimizer step over all processes. The checkpoints
(``output_dir/model_final.pth``) are backbone weights for the detectors: ``model.backbone.weights=PATH``.
A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
"""
import sys
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.cli import note_output, parse_training_args, run_tool, training_parser
from restransfer.classification.config import load_cls_config


def main(argv=None) -> int:
    parser = training_parser("Train a ResNet classifier from a YAML config.",
                             config_help="YAML config file (see configs/imagenet_cls_r101.yaml)")
    args = parse_training_args(parser, argv)
    cfg = load_cls_config(args.config, args.overrides)
    note_output("output_dir", cfg.output_dir)

    from restransfer.classification.train import train_classifier
    from restransfer import distributed

    try:
        train_classifier(cfg, resume=args.resume, restart=args.restart)
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint="lower the images per forward pass (solver.{batch_key}; gradient accumulation "
                                        "keeps solver.ims_per_batch) or input.crop / input.scale_max"))
