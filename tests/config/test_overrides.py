"""How config values combine: mappings merge, lists replace, a dataset entry is replaced whole, in
``key=value`` overrides and ``_base_`` files alike; and the datasets README's example on the demo config."""

import json
import shutil
from pathlib import Path

import pytest

from restransfer.classification.config import load_cls_config
from restransfer.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo_shapes_mask_rcnn_r18.yaml"


def test_a_dataset_entry_override_replaces_the_base_entry_whole():
    cfg = load_config(DEMO, ["data.test={json: a.json, image_root: imgs}"])
    assert cfg.data.test.json == "a.json" and cfg.data.test.image_root == "imgs"
    assert cfg.data.test.generate is None and cfg.data.test.format == "coco"  # nothing left of the shapes entry
    # the other data keys are untouched
    assert cfg.data.train[0].generate == "shapes" and cfg.data.num_workers == 1


def test_one_key_of_an_entry_is_changed_by_naming_it():
    cfg = load_config(DEMO, ["data.test.image_root=imgs"])
    assert cfg.data.test.image_root == "imgs"
    assert cfg.data.test.json == "datasets/shapes/annotations/val.json" and cfg.data.test.generate == "shapes"


def test_a_mapping_above_an_entry_merges_down_to_the_entry_and_replaces_it():
    cfg = load_config(DEMO, ["data={test: {json: a.json, image_root: imgs}, num_workers: 0}"])
    assert cfg.data.test.generate is None and cfg.data.test.json == "a.json"
    assert cfg.data.num_workers == 0 and cfg.data.train[0].generate == "shapes"
    assert cfg.model.arch == "mask_rcnn"


def test_lists_replace_and_mappings_merge():
    cfg = load_config(
        DEMO, ["data.train=[{json: t.json, image_root: i}]", "solver={base_lr: 0.01}", "input.min_size_train=[96]"]
    )
    assert len(cfg.data.train) == 1 and cfg.data.train[0].json == "t.json" and cfg.data.train[0].generate is None
    assert cfg.solver.base_lr == 0.01 and cfg.solver.max_iter == 1150  # solver's other keys kept
    assert list(cfg.input.min_size_train) == [96]
    cfg = load_config(DEMO, ["data.test=null"])
    assert cfg.data.test is None


def test_a_child_file_replaces_dataset_entries_and_merges_the_rest(tmp_path):
    (tmp_path / "child.yaml").write_text(
        f"_base_: {DEMO}\n"
        "data:\n  test: {json: mine/val.json, image_root: mine/images}\n  num_workers: 0\n"
        "solver: {base_lr: 0.01}\n"
    )
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.data.test.json == "mine/val.json" and cfg.data.test.generate is None
    assert cfg.data.train[0].generate == "shapes" and cfg.data.num_workers == 0
    assert cfg.solver.base_lr == 0.01 and cfg.solver.max_iter == 1150
    # and a grandchild over the child: the same rules along the whole chain
    (tmp_path / "grandchild.yaml").write_text("_base_: child.yaml\ndata:\n  train: [{json: t.json, image_root: i}]\n")
    cfg = load_config(tmp_path / "grandchild.yaml", ["data.test.name=mine"])
    assert cfg.data.test.json == "mine/val.json" and cfg.data.test.name == "mine"
    assert [s.json for s in cfg.data.train] == ["t.json"] and cfg.data.train[0].generate is None


def test_an_unknown_key_inside_a_replacing_entry_is_still_named():
    with pytest.raises(ValueError, match="jsn"):
        load_config(DEMO, ["data.test={jsn: a.json, image_root: imgs}"])


def test_classification_entries_are_replaced_whole_too(tmp_path):
    base = tmp_path / "cls.yaml"
    base.write_text("data:\n  test: {image_root: val, format: imagenet_val, labels: LOC_val_solution.csv}\n")
    cfg = load_cls_config(base, ["data.test={image_root: test_folders, format: imagefolder}"])
    assert cfg.data.test.labels is None and cfg.data.test.format == "imagefolder"


def test_the_datasets_readme_example_trains_and_evaluates_on_the_demo_config(shapes, tmp_path, monkeypatch):
    """The README's command on COCO data of one's own (here the shapes set renamed: train.json, val.json and
    one JPEGImages folder, 5 categories), shortened to 2 iterations: it trains, evaluates, and logs the
    dataset entries it used."""
    from restransfer.engine import train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "JPEGImages").mkdir()
    for split in ("train", "val"):
        data = json.loads((shapes / "annotations" / f"{split}.json").read_text())
        for image in data["images"]:
            shutil.copy(shapes / split / image["file_name"], tmp_path / "JPEGImages" / f"{split}_{image['file_name']}")
            image["file_name"] = f"{split}_{image['file_name']}"
        data["categories"] += [
            {"id": 4, "name": "star", "supercategory": "shape"},
            {"id": 5, "name": "ring", "supercategory": "shape"},
        ]
        (tmp_path / f"{split}.json").write_text(json.dumps(data))
    as_written = [
        "model.arch=faster_rcnn",
        "model.num_classes=5",
        "data.train=[{json: train.json, image_root: JPEGImages}]",
        "data.test={json: val.json, image_root: JPEGImages}",
    ]
    short = [
        "solver.max_iter=2",
        "solver.warmup_iters=1",
        "solver.precision=fp32",
        "data.num_workers=0",
        "input.min_size_train=[64]",
        "input.max_size_train=64",
        "input.min_size_test=64",
        "input.max_size_test=64",
        f"output_dir={tmp_path / 'out'}",
    ]
    metrics = train(load_config(DEMO, as_written + short))
    assert set(metrics["bbox"]["per_category"]) == {"circle", "triangle", "square", "star", "ring"}
    assert (tmp_path / "out" / "metrics.json").is_file()
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "data.train[0]: {format: coco, image_root: JPEGImages, json: train.json}" in log
    assert "data.test: {format: coco, image_root: JPEGImages, json: val.json}" in log
    assert "pre-flight: test set val.json: 4 images, 5 classes (circle, triangle, square, star, ring)" in log
