"""What the test modules share, importable as ``helpers`` (tests/ is on the test path): the tiny-config
recipe here, tiny detectors and their files in ``helpers.tiny_detectors``, ILSVRC devkit files in
``helpers.imagenet_det_fixtures`` and ``helpers.imagenet_loc_files``. Fixtures live in tests/conftest.py."""

from pathlib import Path
from typing import List

import yaml

REPO = Path(__file__).resolve().parents[2]

# ResNet-18 on the CPU with 3 classes, whatever the config file says
_COMMON = {"model.backbone.depth": 18, "model.backbone.weights": "null", "model.num_classes": 3, "device": "cpu"}
_KINDS = {
    # narrow heads, few proposals and detections at 96-160 px: a full Mask R-CNN forward in well under a
    # second, for the models with calibrated random weights (predictor, export, speed paths)
    "inference": {
        "input.min_size_test": 96,
        "input.max_size_test": 160,
        "model.fpn_out_channels": 64,
        "model.roi_heads.fpn_representation_size": 128,
        "model.roi_heads.mask_conv_dim": 64,
        "model.rpn.pre_nms_top_n_test": 200,
        "model.rpn.post_nms_top_n_test": 100,
        "model.roi_heads.detections_per_img": 20,
    },
    # 64 px images, small anchors, narrower heads still, 2 images a step, two steps without a schedule: a
    # training run (or a tool's) of a few seconds
    "training": {
        "model.fpn_out_channels": 32,
        "model.anchor.sizes": "[8,16,32,64,128]",
        "model.rpn.pre_nms_top_n_train": 64,
        "model.rpn.post_nms_top_n_train": 32,
        "model.rpn.pre_nms_top_n_test": 32,
        "model.rpn.post_nms_top_n_test": 16,
        "model.roi_heads.batch_size_per_image": 16,
        "model.roi_heads.fpn_representation_size": 64,
        "model.roi_heads.mask_conv_dim": 16,
        "model.roi_heads.c4_pooler_resolution": 6,
        "data.num_workers": 0,
        "input.min_size_train": "[64]",
        "input.max_size_train": 64,
        "input.min_size_test": 64,
        "input.max_size_test": 64,
        "solver.ims_per_batch": 2,
        "solver.ims_per_device": "null",
        "solver.max_iter": 2,
        "solver.base_lr": 0.01,
        "solver.warmup_iters": 1,
        "solver.steps": "[]",
        "solver.checkpoint_period": 0,
        "log_period": 1,
    },
}


def tiny_overrides(kind: str = "inference", *overrides: str, **extra) -> List[str]:
    """The one tiny-config recipe, as ``key=value`` overrides to put on top of any config file (or the
    defaults): ``kind`` is "inference" or "training". ``overrides`` ("key=value") and ``extra``
    (``solver__max_iter=4`` for ``solver.max_iter=4``; None is null) replace or add keys, in that order.
    Steps past ``solver.max_iter`` are dropped (a step beyond max_iter is a config error), so a caller that
    shortens a run need not repeat the schedule."""
    items = {**_COMMON, **_KINDS[kind]}
    for item in overrides:
        key, value = item.split("=", 1)
        items[key] = value
    items.update({k.replace("__", "."): "null" if v is None else v for k, v in extra.items()})
    if "solver.max_iter" in items and "solver.steps" in items:
        steps = yaml.safe_load(str(items["solver.steps"])) or []
        kept = [s for s in steps if s <= int(items["solver.max_iter"])]
        if kept != steps:
            items["solver.steps"] = "[" + ",".join(map(str, kept)) + "]"
    return [f"{k}={v}" for k, v in items.items()]
