"""ImageNet-DET readers, val1/val2 split, COCO conversion, and the round trip
XML -> COCO json -> predictions -> submission -> devkit evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.imagenet_det_fixtures import NAMES, WNIDS, write_synsets, write_train, write_val, xml_text

from restransfer.boxes import xywh_to_xyxy
from restransfer.data.imagenet_det import (
    DetFormatError,
    balanced_val_split,
    load_split,
    read_annotation,
    read_image_list,
    read_split_list,
    read_synsets,
    read_train_list,
    records_to_coco,
)
from restransfer.evaluation.coco import evaluate_coco, predictions_to_coco_results
from restransfer.evaluation.imagenet_det import (
    coco_box_metrics,
    evaluate_detections,
    evaluate_predictions,
    ground_truth_from_coco,
    load_ground_truth,
    predictions_to_submission,
    read_submission,
    write_submission,
)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ readers


def test_read_synsets_orders_by_id_and_keeps_names_with_spaces(tmp_path):
    p = tmp_path / "map_det.txt"
    p.write_text(f"{WNIDS[1]} 2 golf ball\n\n{WNIDS[0]} 1 accordion\n")
    syn = read_synsets(p)
    assert syn.wnids == (WNIDS[0], WNIDS[1]) and syn.names == ("accordion", "golf ball")
    assert syn.wnid_to_id == {WNIDS[0]: 1, WNIDS[1]: 2}
    p.write_text(f"{WNIDS[0]} 1 a\n{WNIDS[1]} 3 b\n")
    with pytest.raises(DetFormatError, match="without gaps"):
        read_synsets(p)
    p.write_text(f"{WNIDS[0]} 1 a\n{WNIDS[1]} one b\n")
    with pytest.raises(DetFormatError, match=rf"{p}:2: DET id 'one' is not an integer"):
        read_synsets(p)


def test_read_annotation_boxes_labels_and_lines(tmp_path):
    syn = read_synsets(write_synsets(tmp_path / "map_det.txt", 3))
    p = tmp_path / "a.xml"
    p.write_text(xml_text("a", 500, 375, [(WNIDS[2], 10, 20, 30, 40), (WNIDS[0], 0, 0, 499, 374)]))
    ann = read_annotation(p, syn)
    assert (ann.width, ann.height) == (500, 375)
    assert ann.wnids == [WNIDS[2], WNIDS[0]] and ann.labels.tolist() == [3, 1]
    np.testing.assert_array_equal(ann.boxes, [[10, 20, 30, 40], [0, 0, 499, 374]])
    assert ann.lines == [8, 17]  # the <object> lines
    p.write_text(xml_text("a", 500, 375, []))
    empty = read_annotation(p, syn)
    assert empty.boxes.shape == (0, 4) and len(empty.labels) == 0


def test_malformed_xml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.xml"
    text = xml_text("bad", 100, 100, [(WNIDS[0], 1, 2, 3, 4)]).replace("</bndbox>", "</bndbx>")
    p.write_text(text)
    with pytest.raises(DetFormatError, match=rf"{p}:15: malformed XML \(mismatched tag"):
        read_annotation(p)


def test_unknown_wnid_names_file_and_line(tmp_path):
    syn = read_synsets(write_synsets(tmp_path / "map_det.txt", 2))
    p = tmp_path / "x.xml"
    p.write_text(xml_text("x", 100, 100, [(WNIDS[0], 1, 2, 3, 4), ("n99999999", 1, 2, 3, 4)]))
    with pytest.raises(DetFormatError, match=rf"{p}:18: unknown WNID 'n99999999'"):  # the <name> line
        read_annotation(p, syn)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("<xmax>3</xmax>", "<xmax>three</xmax>"), r":13: <xmax> is 'three', not a number"),
        (lambda t: t.replace("<xmax>3</xmax>", "<xmax>0</xmax>"), r":10: bndbox .* has xmax < xmin"),
        (lambda t: t.replace("\t\t<name>n02672831</name>\n", ""), r":8: <object> without <name>"),
        (lambda t: '<!DOCTYPE a [<!ENTITY x "y">]>\n' + t, r":1: DOCTYPE/entity declarations are not allowed"),
        (lambda t: t.replace("annotation>", "annot>"), r":1: root element is <annot>"),
    ],
)
def test_bad_annotation_content_names_file_and_line(tmp_path, edit, message):
    p = tmp_path / "b.xml"
    p.write_text(edit(xml_text("b", 100, 100, [(WNIDS[0], 1, 2, 3, 4)])))
    with pytest.raises(DetFormatError, match=str(p).replace(".", r"\.") + message):
        read_annotation(p)


def test_image_and_train_lists(tmp_path):
    p = tmp_path / "val.txt"
    p.write_text("a 1\nb 2\n\nc 5\n")
    names, idx = read_image_list(p)
    assert names == ["a", "b", "c"] and idx.tolist() == [1, 2, 5]
    p.write_text("a\nb\n")
    assert read_image_list(p)[1].tolist() == [1, 2]  # no index column: the line number
    p.write_text("a 1\nb 1\n")
    with pytest.raises(DetFormatError, match=rf"{p}:2: image index 1 repeats line 1"):
        read_image_list(p)
    p.write_text("a 1\nb 2 x\n")
    with pytest.raises(DetFormatError, match=rf"{p}:2: expected '<image> \[<index>\]', got 3 fields"):
        read_image_list(p)
    t = tmp_path / "train_1.txt"
    t.write_text("d/x 1\nd/y -1\nd/z 0\n")
    names, flags = read_train_list(t)
    assert names == ["d/x", "d/y", "d/z"] and flags.tolist() == [1, -1, 0]
    t.write_text("d/x 1\nd/y 2\n")
    with pytest.raises(DetFormatError, match=rf"{t}:2: flag 2 must be"):
        read_train_list(t)
    s = tmp_path / "val1.txt"
    s.write_text("a 1\nzz 7\n")
    with pytest.raises(DetFormatError, match=rf"{s}:2: image 'zz' is not in the val image list"):
        read_split_list(s, {"a", "b", "c"})


# ------------------------------------------------------------------------------------- val1 / val2


def _random_val(seed, n=300, k=6):
    rng = np.random.default_rng(seed)
    names = [f"ILSVRC2012_val_{i:08d}" for i in range(1, n + 1)]
    # skewed class frequencies, some images without objects
    classes = [list(rng.choice(k, size=rng.integers(0, 4), p=[0.4, 0.25, 0.15, 0.1, 0.07, 0.03]) + 1) for _ in names]
    return names, classes


def test_balanced_split_is_deterministic_complete_and_balanced():
    names, classes = _random_val(0)
    v1, v2 = balanced_val_split(names, classes)
    assert sorted(v1 + v2) == names and not set(v1) & set(v2)
    assert abs(len(v1) - len(v2)) <= 2
    s1, s2 = set(v1), set(v2)
    for c in range(1, 7):
        n1 = sum(c in cs for n, cs in zip(names, classes) if n in s1)
        n2 = sum(c in cs for n, cs in zip(names, classes) if n in s2)
        assert abs(n1 - n2) <= 2, (c, n1, n2)
    assert any(not cs for cs in classes) and any(not cs for n, cs in zip(names, classes) if n in s2)
    # The input order does not matter, only names and classes do.
    perm = np.random.default_rng(1).permutation(len(names))
    w1, w2 = balanced_val_split([names[i] for i in perm], [classes[i] for i in perm])
    assert set(w1) == s1 and set(w2) == s2


# ------------------------------------------------------------------------------- splits and json


def _layout(tmp_path):
    """A tiny ILSVRC folder: 3 classes, 6 val images (one without objects), 4 train images."""
    root = tmp_path / "ILSVRC"
    val = {
        "ILSVRC2012_val_00000001": (500, 375, [(WNIDS[0], 10, 20, 109, 219), (WNIDS[1], 0, 0, 19, 19)]),
        "ILSVRC2012_val_00000002": (300, 200, [(WNIDS[2], 5, 5, 299, 199)]),
        "ILSVRC2012_val_00000003": (300, 200, []),
        "ILSVRC2012_val_00000004": (640, 480, [(WNIDS[0], 100, 100, 100, 100), (WNIDS[0], 200, 10, 339, 99)]),
        "ILSVRC2012_val_00000005": (640, 480, [(WNIDS[1], 30, 40, 50, 60), (WNIDS[2], 1, 1, 600, 400)]),
        "ILSVRC2012_val_00000006": (320, 240, [(WNIDS[1], 0, 0, 319, 239)]),
    }
    write_val(root, val)
    train = {
        "ILSVRC2013_train/n02672831/n02672831_1": (200, 100, [(WNIDS[0], 3, 4, 50, 60)]),
        "ILSVRC2013_train/n02691156/n02691156_7": (200, 100, [(WNIDS[1], 0, 0, 199, 99)]),
        "ILSVRC2014_train_0000/ILSVRC2014_train_00000001": (200, 100, [(WNIDS[2], 8, 8, 30, 30)]),
        "ILSVRC2014_train_0000/ILSVRC2014_train_00000002": (200, 100, []),
    }
    flags = {
        "ILSVRC2013_train/n02672831/n02672831_1": [1, -1, -1],
        "ILSVRC2013_train/n02691156/n02691156_7": [-1, 1, 0],
        "ILSVRC2014_train_0000/ILSVRC2014_train_00000001": [0, -1, 1],
        "ILSVRC2014_train_0000/ILSVRC2014_train_00000002": [-1, -1, -1],  # negative only: left out
    }
    write_train(root, train, 3, flags)
    syn_path = write_synsets(root / "devkit" / "data" / "map_det.txt", 3)
    return root, read_synsets(syn_path)


def test_splits_and_coco_json(tmp_path):
    root, syn = _layout(tmp_path)
    train = load_split(root, "train", syn)
    assert [r.name for r in train] == sorted(r.name for r in train) and len(train) == 3
    assert all(r.index is None and r.subset == "train" for r in train)
    val = load_split(root, "val", syn)
    assert [r.index for r in val] == [1, 2, 3, 4, 5, 6]
    v1, v2 = load_split(root, "val1", syn), load_split(root, "val2", syn)
    assert sorted(r.name for r in v1 + v2) == [r.name for r in val]
    assert {r.name for r in v1}.isdisjoint(r.name for r in v2)
    both = load_split(root, "train+val1", syn)
    assert [r.name for r in both] == [r.name for r in train] + [r.name for r in v1]

    coco = records_to_coco(both, syn)
    assert coco["categories"] == [{"id": i + 1, "name": NAMES[i], "wnid": WNIDS[i]} for i in range(3)]
    assert [im["id"] for im in coco["images"]] == list(range(1, len(both) + 1))
    first = coco["images"][0]
    assert first["file_name"] == "train/ILSVRC2013_train/n02672831/n02672831_1.JPEG"
    assert first["ilsvrc_name"] == "ILSVRC2013_train/n02672831/n02672831_1" and "ilsvrc_index" not in first
    assert (first["width"], first["height"]) == (200, 100)
    assert coco["annotations"][0]["bbox"] == [3.0, 4.0, 48.0, 57.0]  # inclusive 3..50 is 48 pixels wide
    val_images = [im for im in coco["images"] if "ilsvrc_index" in im]
    assert [im["ilsvrc_index"] for im in val_images] == [r.index for r in v1]
    assert all(im["file_name"] == f"val/{im['ilsvrc_name']}.JPEG" for im in val_images)


def test_split_lists_are_used_when_given(tmp_path):
    root, syn = _layout(tmp_path)
    lst = tmp_path / "val1.txt"
    lst.write_text("ILSVRC2012_val_00000002 1\nILSVRC2012_val_00000005 2\n")
    assert [r.index for r in load_split(root, "val1", syn, val1_list=lst)] == [2, 5]
    assert [r.index for r in load_split(root, "val2", syn, val1_list=lst)] == [1, 3, 4, 6]
    assert [r.index for r in load_split(root, "val2", syn, val2_list=lst)] == [2, 5]


def test_missing_annotation_is_reported(tmp_path):
    root, syn = _layout(tmp_path)
    (root / "Annotations" / "DET" / "val" / "ILSVRC2012_val_00000004.xml").unlink()
    with pytest.raises(DetFormatError, match="ILSVRC2012_val_00000004.xml: annotation file missing"):
        load_split(root, "val", syn)


# -------------------------------------------------------------------------------------- round trip


def _predictions_from_json(coco, rng):
    """Perfect per-image predictions (shared convention) made from the json's own annotations."""
    by_image = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        by_image[a["image_id"]].append(a)
    preds = []
    for image_id, anns in by_image.items():
        boxes = xywh_to_xyxy([a["bbox"] for a in anns]).astype(np.float32)
        preds.append(
            {
                "image_id": image_id,
                "boxes": boxes.reshape(-1, 4),
                "scores": rng.random(len(anns)).astype(np.float32),
                "labels": np.asarray([a["category_id"] for a in anns], dtype=np.int64),
            }
        )
    return preds


def test_xml_to_json_to_predictions_to_submission_gives_map_100(tmp_path):
    root, syn = _layout(tmp_path)
    out = tmp_path / "ann" / "val2.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "datasets" / "prepare_imagenet_det.py"),
            "--split",
            "val2",
            "--root",
            str(root),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    coco = json.loads(out.read_text())
    image_list = out.with_suffix(".txt")
    assert image_list.is_file()

    preds = _predictions_from_json(coco, np.random.default_rng(0))
    sub = predictions_to_submission(preds, coco)
    sub_path = tmp_path / "submission.txt"
    write_submission(sub_path, sub)

    gt_xml = load_ground_truth(root / "Annotations" / "DET" / "val", image_list, syn)
    back = read_submission(sub_path, gt_xml.image_ids, len(syn))
    # Boxes come back as the XML's integers, bit for bit.
    np.testing.assert_array_equal(np.sort(back.boxes, axis=0), np.sort(gt_xml.boxes, axis=0))
    res = evaluate_detections(gt_xml, back)
    valid = ~np.isnan(res.ap)
    assert valid.sum() >= 2 and (res.ap[valid] == 1.0).all() and res.mean_ap == 1.0

    # The json-only path used after inference gives the same, with COCO AP 100 beside it.
    res2, gt_json, coco_metrics = evaluate_predictions(preds, coco, submission_path=tmp_path / "s2.txt")
    assert res2.mean_ap == 1.0 and coco_metrics == {"AP": 100.0, "AP50": 100.0}
    np.testing.assert_array_equal(gt_json.boxes, gt_xml.boxes)
    np.testing.assert_array_equal(gt_json.obj_image_ids, gt_xml.obj_image_ids)
    assert (tmp_path / "s2.txt").read_text() == sub_path.read_text()


def test_coco_numbers_from_xml_and_submission_equal_coco_eval_on_the_json(tmp_path):
    root, syn = _layout(tmp_path)
    records = load_split(root, "val2", syn)  # json image ids 1..n differ from the val.txt indices
    coco = records_to_coco(records, syn)
    assert [im["id"] for im in coco["images"]] != [im["ilsvrc_index"] for im in coco["images"]]
    rng = np.random.default_rng(2)
    preds = _predictions_from_json(coco, rng)
    for p in preds:  # imperfect boxes and a false detection per image
        jittered = p["boxes"] + rng.normal(0, 3, p["boxes"].shape)
        p["boxes"] = np.concatenate([jittered, [[0, 0, 30, 30]]]).astype(np.float32)
        p["scores"] = np.append(p["scores"], 0.3).astype(np.float32)
        p["labels"] = np.append(p["labels"], 1)
    ours = coco_box_metrics(ground_truth_from_coco(coco), predictions_to_submission(preds, coco))
    label_to_cat = {c["id"]: c["id"] for c in coco["categories"]}
    ref = evaluate_coco(coco, predictions_to_coco_results(preds, label_to_cat), ("bbox",), engine="pycocotools")["bbox"]
    assert ours["AP"] == pytest.approx(ref["AP"], abs=1e-9) and ours["AP50"] == pytest.approx(ref["AP50"], abs=1e-9)
    assert 0 < ours["AP"] <= ours["AP50"] < 100  # a non-trivial case


def test_predictions_for_unknown_images_are_an_error(tmp_path):
    root, syn = _layout(tmp_path)
    coco = records_to_coco(load_split(root, "train+val1", syn), syn)
    pred = {"image_id": 999, "boxes": np.zeros((1, 4)), "scores": np.ones(1), "labels": np.ones(1, dtype=np.int64)}
    with pytest.raises(ValueError, match="prediction 0: image_id 999 is not an image"):
        predictions_to_submission([pred], coco)
    pred["image_id"] = 1  # a train image: no val index to submit
    with pytest.raises(ValueError, match="has no ilsvrc_index"):
        predictions_to_submission([pred], coco)
    with pytest.raises(ValueError, match="has no ilsvrc_index"):
        ground_truth_from_coco(coco)


def test_config_has_valid_keys_and_paper_settings(tmp_path):
    from restransfer.config import load_config

    cfg = load_config(REPO / "configs" / "imagenet_det_faster_rcnn_r101.yaml")
    assert cfg.model.num_classes == 200 and cfg.model.backbone.depth == 101
    assert [d.format for d in cfg.data.train] == ["imagenet_det", "imagenet_det"]
    assert cfg.data.train[1].json.endswith("val1.json") and cfg.data.test.json.endswith("val2.json")
    assert cfg.input.min_size_train == [600] and cfg.input.min_size_test == 600
    assert (
        cfg.solver.base_lr == 0.008
        and cfg.solver.ims_per_batch == 8
        and cfg.solver.ims_per_device == 1
        and cfg.solver.steps == [240000]
        and cfg.solver.max_iter == 320000
    )
