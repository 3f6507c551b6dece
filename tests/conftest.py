"""What the test modules share: the tiny-config recipe, the synthetic shapes set (and its COCO layout), the
one-thread setting of the small-model modules. ``pytest -m "not slow"`` skips the end-to-end runs."""
import os
import shutil
from typing import List

import pytest
import torch
import yaml

# the suite runs on 2 cores; keep intra-op threads bounded and results reproducible, and share the cores
# among pytest-xdist's workers when it runs them in parallel
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

# ResNet-18 on the CPU with 3 classes, whatever the config file says
_COMMON = {"model.backbone.depth": 18, "model.backbone.weights": "null", "model.num_classes": 3, "device": "cpu"}
_KINDS = {
    # narrow heads, few proposals and detections at 96-160 px: a full Mask R-CNN forward in well under a
    # second, for the models with calibrated random weights (predictor, export, speed paths)
    "inference": {
        "input.min_size_test": 96, "input.max_size_test": 160, "model.fpn_out_channels": 64,
        "model.roi_heads.fpn_representation_size": 128, "model.roi_heads.mask_conv_dim": 64,
        "model.rpn.pre_nms_top_n_test": 200, "model.rpn.post_nms_top_n_test": 100,
        "model.roi_heads.detections_per_img": 20,
    },
    # 64 px images, small anchors, narrower heads still, 2 images a step, two steps without a schedule: a
    # training run (or a tool's) of a few seconds
    "training": {
        "model.fpn_out_channels": 32, "model.anchor.sizes": "[8,16,32,64,128]",
        "model.rpn.pre_nms_top_n_train": 64, "model.rpn.post_nms_top_n_train": 32,
        "model.rpn.pre_nms_top_n_test": 32, "model.rpn.post_nms_top_n_test": 16,
        "model.roi_heads.batch_size_per_image": 16, "model.roi_heads.fpn_representation_size": 64,
        "model.roi_heads.mask_conv_dim": 16, "model.roi_heads.c4_pooler_resolution": 6,
        "data.num_workers": 0, "input.min_size_train": "[64]", "input.max_size_train": 64,
        "input.min_size_test": 64, "input.max_size_test": 64,
        "solver.ims_per_batch": 2, "solver.ims_per_device": "null", "solver.max_iter": 2, "solver.base_lr": 0.01,
        "solver.warmup_iters": 1, "solver.steps": "[]", "solver.checkpoint_period": 0, "log_period": 1,
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


@pytest.fixture(name="tiny_overrides", scope="session")
def _tiny_overrides():
    """:func:`tiny_overrides`, for the test functions."""
    return tiny_overrides


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """One synthetic shapes set for the session: 8 train and 4 val images of 64 px, COCO jsons in
    ``annotations/{train,val}.json``."""
    from restransfer.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=8, num_val=4, image_size=64, seed=3)
    return root


@pytest.fixture(scope="session")
def coco_root(shapes, tmp_path_factory):
    """The shapes set in COCO's layout, ``<root>/coco/{annotations/instances_{train,val}2017.json,
    train2017/, val2017/}``: what ``configs/coco_*`` read with ``RESTRANSFER_DATASETS=<root>``."""
    root = tmp_path_factory.mktemp("datasets")
    (root / "coco" / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copytree(shapes / split, root / "coco" / f"{split}2017")
        shutil.copy(shapes / "annotations" / f"{split}.json", root / "coco" / "annotations" / f"instances_{split}2017.json")
    return root


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests on one intra-op thread (``pytestmark = pytest.mark.usefixtures("single_thread")``).
    Small models gain nothing from a second thread but OpenMP barriers, and when the two cores are shared
    with other processes each barrier can wait for a scheduler time slice: a tiny Mask R-CNN forward takes
    1.5 s on two threads, 0.04 s on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
