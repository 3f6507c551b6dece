"""Train an image classifier (ImageNet-arch ResNet or the paper's CIFAR networks) from a YAML config.

Usage:
    python tools/train_cls.py CONFIG [--resume | --restart] [--debug] [key=value ...]
    torchrun --nproc_per_node=N tools/train_cls.py CONFIG [...]

``solver.ims_per_batch`` is the total batch of one optimizer step over all processes. The checkpoints
(``output_dir/model_final.pth``) are backbone weights for the detectors: ``model.backbone.weights=PATH``.
A failure ends with ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
``restransfer train CONFIG ...`` runs this for a classification config.
"""

from typing import Optional, Sequence

from .. import distributed
from ..classification.config import load_cls_config
from ..classification.train import train_classifier
from ..cli import note_output, parse_training_args, training_parser

MEMORY_HINT = (
    "lower the images per forward pass (solver.{batch_key}; gradient accumulation "
    "keeps solver.ims_per_batch) or input.crop / input.scale_max"
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = training_parser(
        "Train a ResNet classifier from a YAML config.",
        config_help="YAML config file (see configs/imagenet_cls_r101.yaml)",
    )
    args = parse_training_args(parser, argv)
    cfg = load_cls_config(args.config, args.overrides)
    note_output("output_dir", cfg.output_dir)

    try:
        train_classifier(cfg, resume=args.resume, restart=args.restart)
    finally:
        distributed.cleanup()
    return 0
