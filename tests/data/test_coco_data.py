"""CocoDataset and the data builders on a small hand-made COCO folder with every kind of awkward entry."""

from __future__ import annotations

import functools
import io
import json
import logging

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from restransfer.config import load_config
from restransfer.data import build as data_build
from restransfer.data.build import build_test_dataset, build_test_loader, build_train_dataset, build_train_loader
from restransfer.data.coco import CocoDataset
from restransfer.data.image_io import CorruptImageError, read_image
from restransfer.data.shapes import ensure_shapes
from restransfer.data.transforms import build_transforms

H, W = 48, 64


def _png(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _compressed_rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask):
    flat = mask.astype(np.uint8).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


@pytest.fixture()
def coco_dir(tmp_path):
    """images: 1 colour PNG (polygons, RLEs, crowd), 2 grayscale JPEG (clipped and zero-area boxes),
    3 CMYK JPEG, 4 no annotations, 5 missing file, 6 truncated JPEG, 7 only a crowd region."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    _png(img_dir / "color.png", rgb)
    ok, gray = cv2.imencode(".jpg", np.full((H, W), 90, np.uint8))
    (img_dir / "gray.jpg").write_bytes(gray.tobytes())
    buf = io.BytesIO()
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)  # red in CMYK
    (img_dir / "cmyk.jpg").write_bytes(buf.getvalue())
    _png(img_dir / "empty.png", rgb)
    ok, jpg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8))
    (img_dir / "truncated.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    _png(img_dir / "crowd_only.png", rgb)

    rle_c = np.zeros((H, W), bool)
    rle_c[30:40, 5:15] = True
    rle_u = np.zeros((H, W), bool)
    rle_u[2:6, 40:60] = True
    crowd = np.zeros((H, W), bool)
    crowd[20:30, 30:50] = True
    images = [
        {"id": 10, "file_name": "color.png", "width": W, "height": H},
        {"id": 20, "file_name": "gray.jpg", "width": W, "height": H},
        {"id": 30, "file_name": "cmyk.jpg", "width": W, "height": H},
        {"id": 40, "file_name": "empty.png", "width": W, "height": H},
        {"id": 50, "file_name": "missing.png", "width": W, "height": H},
        {"id": 60, "file_name": "truncated.jpg", "width": W, "height": H},
        {"id": 70, "file_name": "crowd_only.png", "width": W, "height": H},
    ]
    anns = [
        # two-part polygon: squares [2,6)x[2,6) and [20,26)x[10,14) (x ranges, y ranges)
        {
            "id": 1,
            "image_id": 10,
            "category_id": 7,
            "bbox": [2, 2, 24, 12],
            "iscrowd": 0,
            "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6], [20, 10, 26, 10, 26, 14, 20, 14]],
        },
        {
            "id": 2,
            "image_id": 10,
            "category_id": 3,
            "bbox": [5, 30, 10, 10],
            "iscrowd": 0,
            "segmentation": _compressed_rle(rle_c),
        },
        {
            "id": 3,
            "image_id": 10,
            "category_id": 7,
            "bbox": [40, 2, 20, 4],
            "iscrowd": 0,
            "segmentation": _uncompressed_rle(rle_u),
        },
        {
            "id": 4,
            "image_id": 10,
            "category_id": 3,
            "bbox": [30, 20, 20, 10],
            "iscrowd": 1,
            "segmentation": _uncompressed_rle(crowd),
        },
        # partly outside (clipped to [50, 40, 64, 48]) and entirely outside (zero area once clipped)
        {
            "id": 5,
            "image_id": 20,
            "category_id": 3,
            "bbox": [50, 40, 30, 30],
            "iscrowd": 0,
            "segmentation": [[50, 40, 63, 40, 63, 47, 50, 47]],
        },
        {"id": 6, "image_id": 20, "category_id": 7, "bbox": [70, 10, 5, 5], "iscrowd": 0, "segmentation": []},
        {
            "id": 7,
            "image_id": 30,
            "category_id": 7,
            "bbox": [1, 1, 10, 10],
            "iscrowd": 0,
            "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]],
        },
        {"id": 8, "image_id": 50, "category_id": 7, "bbox": [1, 1, 10, 10], "iscrowd": 0},
        {
            "id": 9,
            "image_id": 60,
            "category_id": 3,
            "bbox": [1, 1, 10, 10],
            "iscrowd": 0,
            "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]],
        },
        {
            "id": 10,
            "image_id": 70,
            "category_id": 3,
            "bbox": [30, 20, 20, 10],
            "iscrowd": 1,
            "segmentation": _uncompressed_rle(crowd),
        },
    ]
    # categories deliberately unsorted and with gaps
    cats = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    json_path = tmp_path / "ann.json"
    json_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {"json": json_path, "images": img_dir, "rle_c": rle_c, "rle_u": rle_u}


def _index(ds, image_id):
    return ds.image_ids.index(image_id)


def test_missing_paths_name_the_path_and_the_readme(tmp_path, coco_dir):
    with pytest.raises(FileNotFoundError, match=r"nope\.json.*datasets/README\.md"):
        CocoDataset(tmp_path / "nope.json", coco_dir["images"])
    with pytest.raises(FileNotFoundError, match=r"no_images.*datasets/README\.md"):
        CocoDataset(coco_dir["json"], tmp_path / "no_images")


def test_malformed_json_names_the_entry(tmp_path, coco_dir):
    bad = json.loads(coco_dir["json"].read_text())
    bad["annotations"][2]["bbox"] = [1, 2, 3]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad\.json: annotations\[2\]\.bbox"):
        CocoDataset(path, coco_dir["images"])


def test_categories_map_to_contiguous_labels_sorted_by_id(coco_dir):
    ds = CocoDataset(coco_dir["json"], coco_dir["images"])
    assert ds.class_names == ["three", "seven"]
    assert ds.label_to_cat_id == {1: 3, 2: 7}
    assert ds.cat_id_to_label == {3: 1, 7: 2}
    assert len(ds.coco.getAnnIds(iscrowd=True)) == 2  # crowd regions stay for evaluation


def test_missing_image_files_are_reported_and_removed(coco_dir, caplog):
    with caplog.at_level(logging.WARNING):
        ds = CocoDataset(coco_dir["json"], coco_dir["images"])
    assert 50 not in ds.image_ids and len(ds) == 6
    assert any("1 of 7 images" in r.getMessage() and "missing.png" in r.getMessage() for r in caplog.records)


def test_targets_polygons_rles_and_crowd(coco_dir):
    ds = CocoDataset(coco_dir["json"], coco_dir["images"], with_masks=True)
    image, target = ds[_index(ds, 10)]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert target["image_id"] == 10 and target["orig_size"] == (H, W)
    # the crowd annotation (id 4) is not a target
    np.testing.assert_allclose(target["boxes"].numpy(), [[2, 2, 26, 14], [5, 30, 15, 40], [40, 2, 60, 6]])
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [2, 1, 2] and target["labels"].dtype == torch.int64
    masks = target["masks"].numpy()
    assert masks.dtype == np.uint8 and masks.shape == (3, H, W)
    # both polygon parts are in the mask, nothing between them
    assert masks[0, 3, 3] == 1 and masks[0, 12, 22] == 1 and masks[0, 8, 12] == 0
    np.testing.assert_array_equal(masks[1], coco_dir["rle_c"])
    np.testing.assert_array_equal(masks[2], coco_dir["rle_u"])
    assert np.allclose(image[0].numpy(), 200 / 255) and np.allclose(image[1:].numpy(), 0)


def test_grayscale_and_cmyk_jpegs_become_rgb(coco_dir):
    ds = CocoDataset(coco_dir["json"], coco_dir["images"])
    gray, _ = ds[_index(ds, 20)]
    assert gray.shape == (3, H, W)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert abs(float(gray.mean()) * 255 - 90) < 3
    cmyk, _ = ds[_index(ds, 30)]
    r, g, b = (float(c.mean()) * 255 for c in cmyk)
    assert r > 220 and g < 30 and b < 30  # CMYK (0, 100%, 100%, 0) is red


def test_boxes_are_clipped_and_zero_area_ones_dropped(coco_dir):
    ds = CocoDataset(coco_dir["json"], coco_dir["images"], with_masks=True)
    assert ds.num_dropped_boxes == 1
    _, target = ds[_index(ds, 20)]
    np.testing.assert_allclose(target["boxes"].numpy(), [[50, 40, 64, 48]])
    assert target["masks"].shape == (1, H, W)


def test_truncated_image_is_skipped_in_training(coco_dir, caplog):
    ds = CocoDataset(coco_dir["json"], coco_dir["images"], is_train=True)
    i = _index(ds, 60)
    with caplog.at_level(logging.WARNING):
        _, target = ds[i]
    assert target["image_id"] == ds.image_ids[(i + 1) % len(ds)]
    assert ds.num_skipped == 1
    assert any("truncated.jpg" in r.getMessage() for r in caplog.records)


def test_skips_in_dataloader_workers_are_counted_in_the_main_process(coco_dir):
    ds = CocoDataset(coco_dir["json"], coco_dir["images"], is_train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
    ids = [t["image_id"] for _, t in loader]
    assert 60 not in ids and len(ids) == len(ds)
    assert ds.num_skipped == 1


def test_truncated_image_in_test_set_keeps_its_id(coco_dir):
    ds = CocoDataset(coco_dir["json"], coco_dir["images"], is_train=False)
    image, target = ds[_index(ds, 60)]
    assert target["image_id"] == 60 and image.shape == (3, H, W) and float(image.abs().sum()) == 0
    assert ds.num_skipped == 1


def test_filter_empty_removes_images_without_targets(coco_dir):
    ds = CocoDataset(coco_dir["json"], coco_dir["images"], filter_empty=True)
    assert sorted(ds.image_ids) == [10, 20, 30, 60]  # 40 has nothing, 70 only a crowd region
    _, target = ds[_index(ds, 30)]
    np.testing.assert_allclose(target["boxes"].numpy(), [[1, 1, 11, 11]])


def test_image_without_annotations(coco_dir):
    ds = CocoDataset(coco_dir["json"], coco_dir["images"], with_masks=True)
    _, target = ds[_index(ds, 40)]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, H, W)


def test_aspect_ratios_come_from_the_json(tmp_path, coco_dir):
    data = json.loads(coco_dir["json"].read_text())
    data["images"][0]["width"], data["images"][0]["height"] = 30, 60  # not decoded: any size will do
    path = tmp_path / "ar.json"
    path.write_text(json.dumps(data))
    ds = CocoDataset(path, coco_dir["images"])
    ratios = dict(zip(ds.image_ids, ds.aspect_ratios()))
    assert ratios[10] == 0.5 and ratios[20] == W / H


def test_size_mismatch_is_treated_as_unreadable(tmp_path, coco_dir):
    data = json.loads(coco_dir["json"].read_text())
    data["images"][2]["width"] = W + 1  # cmyk.jpg
    path = tmp_path / "mismatch.json"
    path.write_text(json.dumps(data))
    ds = CocoDataset(path, coco_dir["images"], is_train=True)
    _, target = ds[_index(ds, 30)]
    assert target["image_id"] != 30 and ds.num_skipped == 1


def test_training_transforms_resize_flip_and_keep_masks_aligned(coco_dir):
    tf = build_transforms([96], 1000, hflip_prob=1.0, is_train=True)
    ds = CocoDataset(coco_dir["json"], coco_dir["images"], transforms=tf, with_masks=True, is_train=True)
    image, target = ds[(_index(ds, 10), 0)]
    assert image.shape == (3, 96, 128)
    # the compressed-RLE square [5, 15) x [30, 40) scaled by 2 then flipped on width 128
    np.testing.assert_allclose(target["boxes"][1].numpy(), [128 - 30, 60, 128 - 10, 80])
    ys, xs = np.nonzero(target["masks"][1].numpy())
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (98, 118, 60, 80)


def test_read_image_rejects_garbage(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"not an image")
    with pytest.raises(CorruptImageError, match="x.jpg"):
        read_image(p)
    with pytest.raises(CorruptImageError, match="cannot read"):
        read_image(tmp_path / "absent.jpg")


# ------------------------------------------------------------------------------------------ builders


def _cfg(overrides):
    return load_config(None, overrides)


def test_train_datasets_with_different_categories_are_rejected(tmp_path, coco_dir):
    other = json.loads(coco_dir["json"].read_text())
    other["categories"][0]["name"] = "renamed"
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    cfg = _cfg(
        [
            f"data.train=[{{json: {coco_dir['json']}, image_root: {coco_dir['images']}}}, "
            f"{{json: {other_path}, image_root: {coco_dir['images']}}}]"
        ]
    )
    with pytest.raises(ValueError, match=r"ann\.json and .*other\.json have different categories"):
        build_train_dataset(cfg)


def test_unsupported_format_is_rejected(coco_dir):
    cfg = _cfg([f"data.test={{json: {coco_dir['json']}, image_root: {coco_dir['images']}, format: lvis}}"])
    with pytest.raises(ValueError, match="data.test.format: 'lvis' is not supported; use one of .*, voc"):
        build_test_dataset(cfg)


def test_datasets_root_env_and_concatenation(tmp_path, coco_dir, monkeypatch):
    monkeypatch.setenv("RESTRANSFER_DATASETS", str(tmp_path))
    spec = "{json: datasets/ann.json, image_root: datasets/images}"
    cfg = _cfg([f"data.train=[{spec}, {spec}]", "model.arch=mask_rcnn"])
    ds = build_train_dataset(cfg)
    assert len(ds) == 2 * 4  # filter_empty is on by default for training
    assert ds.class_names == ["three", "seven"] and len(ds.aspect_ratios()) == len(ds)
    image, target = ds[(len(ds) - 1, 5)]
    assert "masks" in target and image.shape[0] == 3


def test_shapes_are_generated_when_missing_and_loaders_are_resumable(tmp_path, monkeypatch):
    monkeypatch.setattr(data_build, "ensure_shapes", functools.partial(ensure_shapes, num_train=12, num_val=5))
    root = tmp_path / "shapes"
    cfg = _cfg(
        [
            f"data.train=[{{json: {root}/annotations/train.json, image_root: {root}/train, generate: shapes}}]",
            f"data.test={{json: {root}/annotations/val.json, image_root: {root}/val, generate: shapes}}",
            "model.arch=mask_rcnn",
            "input.min_size_train=[96,128,160]",
            "input.max_size_train=200",
            "input.color_jitter=0.2",
            "solver.ims_per_batch=2",
            "data.num_workers=0",
            "seed=3",
        ]
    )
    full = build_train_loader(cfg)
    rng_state = torch.get_rng_state()
    it = iter(full)
    assert torch.equal(rng_state, torch.get_rng_state())  # starting the loader leaves the training RNG alone
    batches = [next(it) for _ in range(8)]
    resumed = next(iter(build_train_loader(cfg, start_iter=5)))
    for (a_img, a_t), (b_img, b_t) in zip(zip(*batches[5]), zip(*resumed)):
        assert a_t["image_id"] == b_t["image_id"]
        assert torch.equal(a_img, b_img) and torch.equal(a_t["boxes"], b_t["boxes"])
        assert torch.equal(a_t["masks"], b_t["masks"])
    sizes = {tuple(img.shape[1:]) for imgs, _ in batches for img in imgs}
    assert len(sizes) > 1  # the short side is drawn from the list
    test_ds = build_test_dataset(cfg)
    assert len(test_ds) == 5
    wrong = _cfg([f"data.test={{json: {root}/annotations/val.json, image_root: {root}/train, generate: shapes}}"])
    with pytest.raises(ValueError, match=r"data\.test\.image_root: .*train: .* in .*val"):
        build_test_dataset(wrong)
    shards = [[t["image_id"] for _, ts in build_test_loader(cfg, test_ds, r, 2) for t in ts] for r in range(2)]
    assert shards[0] + shards[1] == test_ds.image_ids
