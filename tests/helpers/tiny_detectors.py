"""Small detectors with calibrated random weights for the predictor, export and speed-path tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from helpers import tiny_overrides
from restransfer.benchmark import randomize_weights, synthetic_batch
from restransfer.config import dump_config, load_config
from restransfer.models import build_model

REPO = Path(__file__).resolve().parents[2]
TORCHVISION_MASK = REPO / "configs" / "torchvision" / "mask_rcnn_r50_fpn.yaml"

# C4 runs res5 once per proposal (~0.8 GFLOP each for ResNet-18): fewer proposals keep it fast
C4 = ["model.head=c4", "model.rpn.post_nms_top_n_test=20"]


def tiny_config(*extra: str, arch: str = "mask_rcnn"):
    """torchvision's Mask R-CNN config made tiny (the suite's "inference" recipe), as ``arch``."""
    return load_config(TORCHVISION_MASK, tiny_overrides("inference", f"model.arch={arch}", *extra))


def tiny_model(*extra: str, arch: str = "mask_rcnn", size=(96, 128), seed: int = 0):
    """A calibrated random detector (eval mode) and the image it was calibrated on."""
    torch.manual_seed(seed)
    cfg = tiny_config(*extra, arch=arch)
    model = build_model(cfg).eval()
    images, _ = synthetic_batch(size, 1, seed=seed)
    randomize_weights(model, images)
    return cfg, model, images


def write_checkpoint(tmp_path: Path, model, class_names: Sequence[str]) -> Path:
    """A training-style checkpoint: {"model": state_dict, "iteration", "class_names"}."""
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict(), "iteration": 10, "class_names": list(class_names)}, path)
    return path


def write_config(tmp_path: Path, extra: Sequence[str] = (), arch: str = "mask_rcnn") -> Path:
    """The tiny config as a standalone YAML file (overrides folded in)."""
    path = tmp_path / "tiny.yaml"
    dump_config(tiny_config(*extra, arch=arch), path)
    return path
