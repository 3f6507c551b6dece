"""Image classification: pretraining the backbone (ImageNet-arch ResNets and the paper's CIFAR networks),
center / 10-crop / fully-convolutional testing, and the plain-versus-residual degradation study."""

from .cifar import CifarResNet
from .config import build_classifier, load_cls_config
from .evaluate import evaluate_classifier, run_cls_evaluation, topk_errors
from .train import train_classifier

__all__ = [
    "CifarResNet",
    "build_classifier",
    "load_cls_config",
    "evaluate_classifier",
    "run_cls_evaluation",
    "topk_errors",
    "train_classifier",
]
