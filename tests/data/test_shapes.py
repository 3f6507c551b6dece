"""The synthetic shapes set: determinism, valid COCO, masks that match boxes, learnable images."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from restransfer.data.coco import CocoDataset
from restransfer.data.shapes import ensure_shapes, generate_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    paths = generate_shapes(root, num_train=24, num_val=6, image_size=128, seed=0)
    return root, paths


def test_layout_and_determinism(shapes, tmp_path):
    root, paths = shapes
    assert paths["train"] == root / "annotations" / "train.json" and paths["val"].is_file()
    assert len(list((root / "train").glob("*.png"))) == 24 and len(list((root / "val").glob("*.png"))) == 6
    again = generate_shapes(tmp_path / "again", num_train=24, num_val=6, image_size=128, seed=0)
    assert again["train"].read_bytes() == paths["train"].read_bytes()
    assert (tmp_path / "again/train/000007.png").read_bytes() == (root / "train/000007.png").read_bytes()
    other = generate_shapes(tmp_path / "other", num_train=3, num_val=1, image_size=128, seed=1)
    assert (tmp_path / "other/train/000001.png").read_bytes() != (root / "train/000001.png").read_bytes()
    assert (
        json.loads(other["train"].read_text())["annotations"]
        != json.loads(paths["train"].read_text())["annotations"][:3]
    )


def test_annotations_are_consistent_visible_parts(shapes):
    root, paths = shapes
    data = json.loads(paths["train"].read_text())
    assert [c["name"] for c in data["categories"]] == ["circle", "triangle", "square"]
    per_image = {}
    for ann in data["annotations"]:
        rle = ann["segmentation"]
        mask = mask_util.decode(rle)
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
        assert max(ann["bbox"][2:]) <= 61
        per_image.setdefault(ann["image_id"], []).append(mask)
    assert set(per_image) == {img["id"] for img in data["images"]}
    assert all(1 <= len(m) <= 4 for m in per_image.values())
    assert any(len(m) >= 3 for m in per_image.values())
    for masks in per_image.values():
        # visible parts never overlap: later objects cut what they hide out of earlier ones
        assert np.stack(masks).sum(axis=0).max() == 1


def test_objects_stand_out_from_a_textured_background(shapes):
    root, paths = shapes
    ds = CocoDataset(paths["val"], root / "val", with_masks=True)
    contrasts = []
    for i in range(len(ds)):
        image, target = ds[i]
        img = image.permute(1, 2, 0).numpy() * 255
        union = target["masks"].numpy().any(axis=0)
        assert img[~union].std(axis=0).min() > 8  # not a flat background
        for m in target["masks"].numpy().astype(bool):
            ring = cv2.dilate(m.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~union
            contrasts.append(np.linalg.norm(img[m].mean(axis=0) - img[ring].mean(axis=0)))
    assert np.mean(contrasts) > 100


def test_rejects_unknown_classes_and_tiny_images(tmp_path):
    with pytest.raises(ValueError, match="hexagon"):
        generate_shapes(tmp_path, 1, 1, classes=["circle", "hexagon"])
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes(tmp_path, 1, 1, image_size=32)


def test_star_class(tmp_path):
    paths = generate_shapes(tmp_path, 6, 1, seed=2, classes=["circle", "triangle", "square", "star"])
    data = json.loads(paths["train"].read_text())
    assert len(data["categories"]) == 4 and all(1 <= a["category_id"] <= 4 for a in data["annotations"])


def test_ensure_shapes_generates_only_when_missing(tmp_path):
    paths = ensure_shapes(tmp_path, num_train=2, num_val=1)
    stamp = paths["train"].stat().st_mtime_ns
    (tmp_path / "train" / "000001.png").unlink()
    assert ensure_shapes(tmp_path, num_train=2, num_val=1) == paths
    assert paths["train"].stat().st_mtime_ns == stamp and not (tmp_path / "train" / "000001.png").exists()
    paths["val"].unlink()
    ensure_shapes(tmp_path, num_train=2, num_val=1)
    assert (tmp_path / "train" / "000001.png").exists()
