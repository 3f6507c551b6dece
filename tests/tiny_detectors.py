"""Small detectors with calibrated random weights for the predictor, export and speed-path tests."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pytest
import torch
from restransfer.benchmark import randomize_weights, synthetic_batch
from restransfer.config import dump_config, load_config
from restransfer.models import build_model

REPO = Path(__file__).resolve().parents[1]
TORCHVISION_MASK = REPO / "configs" / "torchvision" / "mask_rcnn_r50_fpn.yaml"

# ResNet-18, narrow heads, few proposals and detections: a full Mask R-CNN forward in well under a second
TINY = [
    "model.backbone.depth=18",
    "model.num_classes=3",
    "input.min_size_test=96",
    "input.max_size_test=160",
    "model.fpn_out_channels=64",
    "model.roi_heads.fpn_representation_size=128",
    "model.roi_heads.mask_conv_dim=64",
    "model.rpn.pre_nms_top_n_test=200",
    "model.rpn.post_nms_top_n_test=100",
    "model.roi_heads.detections_per_img=20",
]


# C4 runs res5 once per proposal (~0.8 GFLOP each for ResNet-18): fewer proposals keep it fast
C4 = ["model.head=c4", "model.rpn.post_nms_top_n_test=20"]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run a module's tests on one intra-op thread. These models are so small that a second thread only
    adds OpenMP barriers, and when the two cores are shared with other processes each barrier can wait
    for a scheduler time slice: a tiny Mask R-CNN forward takes 1.5 s on two threads, 0.04 s on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(*extra: str, arch: str = "mask_rcnn"):
    return load_config(TORCHVISION_MASK, TINY + [f"model.arch={arch}"] + list(extra))


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
