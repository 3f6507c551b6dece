"""A tiny COCO-layout dataset folder for the tests that run the tools as a user does."""
import shutil
from pathlib import Path

from restransfer.data.shapes import generate_shapes


def make_coco_layout(tmp_path_factory, num_train: int, num_val: int) -> Path:
    """``<root>/coco/{annotations/instances_{train,val}2017.json, train2017/, val2017/}`` from a shapes set
    of 64 px images: what ``configs/coco_*`` read with ``RESTRANSFER_DATASETS=<root>``."""
    shapes = tmp_path_factory.mktemp("shapes")
    generate_shapes(shapes, num_train=num_train, num_val=num_val, image_size=64, seed=5)
    root = tmp_path_factory.mktemp("datasets")
    (root / "coco" / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copytree(shapes / split, root / "coco" / f"{split}2017")
        shutil.copy(shapes / "annotations" / f"{split}.json", root / "coco" / "annotations" / f"instances_{split}2017.json")
    return root
