"""PASCAL VOC data: the box convention at the file boundary, the XML reader and its errors, image sets, the
dataset and its config entries, the generated VOC-layout set and the COCO conversion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from restransfer.boxes import inclusive_iou, voc_to_xyxy, xywh_to_xyxy, xyxy_to_voc, xyxy_to_xywh
from restransfer.data.coco import CocoDataset
from restransfer.data.voc import (
    VOC_CLASSES,
    VocFormatError,
    load_voc_split,
    read_image_set,
    read_voc_annotation,
    records_to_coco,
)
from restransfer.data.voc_dataset import VocDataset
from restransfer.data.voc_shapes import generate_voc_shapes
from restransfer.errors import DataError
from restransfer.evaluation.voc_io import ground_truth_from_coco, load_ground_truth

REPO = Path(__file__).resolve().parents[2]
SHAPES = ("circle", "triangle", "square")


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit"
    generate_voc_shapes(root, num_trainval=24, num_test=12, image_size=96, seed=1)
    return root


# ------------------------------------------------------------------------------------------ boxes


def test_voc_boxes_round_trip_exactly():
    rng = np.random.default_rng(0)
    xy = rng.integers(1, 400, (500, 2))
    voc = np.concatenate([xy, xy + rng.integers(0, 100, (500, 2))], axis=1).astype(np.float64)
    internal = voc_to_xyxy(voc)
    # xmin_0based = xmin - 1, ymin likewise; xmax_exclusive = xmax: width = xmax - xmin + 1
    assert np.array_equal(internal[:, :2], voc[:, :2] - 1) and np.array_equal(internal[:, 2:], voc[:, 2:])
    assert np.array_equal(internal[:, 2] - internal[:, 0], voc[:, 2] - voc[:, 0] + 1)
    assert np.array_equal(xyxy_to_voc(internal), voc)
    # through the COCO json's [x, y, w, h] and back, exactly
    assert np.array_equal(xyxy_to_voc(xywh_to_xyxy(xyxy_to_xywh(voc_to_xyxy(voc)))), voc)
    # a whole 500 x 375 image
    assert voc_to_xyxy([1, 1, 500, 375]).tolist() == [[0, 0, 500, 375]]
    # the devkit's +1 IoU on VOC boxes is the plain IoU of the converted boxes
    a, b = voc[:50], voc[50:100]
    plain = box_iou(torch.from_numpy(voc_to_xyxy(a)), torch.from_numpy(voc_to_xyxy(b))).numpy()
    devkit = inclusive_iou(a[:, None], b[None])
    assert np.allclose(np.where(devkit < 0, 0, devkit), plain, atol=1e-12)


# -------------------------------------------------------------------------------------------- XML


def xml(
    objects: str,
    size: str = "<size>\n<width>500</width>\n<height>375</height>\n<depth>3</depth>\n</size>\n",
    head: str = "",
) -> str:
    return f"{head}<annotation>\n<filename>000001.jpg</filename>\n{size}{objects}</annotation>\n"


def obj(name="dog", box=(48, 240, 195, 371), difficult="0", truncated="1", extra="") -> str:
    flags = "".join(
        f"<{t}>{v}</{t}>\n" for t, v in (("truncated", truncated), ("difficult", difficult)) if v is not None
    )
    coords = "".join(f"<{k}>{v}</{k}>\n" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box) if v is not None)
    return f"<object>\n<name>{name}</name>\n<pose>Left</pose>\n{flags}{extra}<bndbox>\n{coords}</bndbox>\n</object>\n"


def test_reads_devkit_xml_with_flags(tmp_path):
    p = tmp_path / "000001.xml"
    p.write_text(
        xml(
            obj()
            + obj("person", (8, 12, 352, 498 - 123), difficult="1", truncated=None)
            + obj("cat", (1, 1, 500, 375), difficult=None, truncated="0")
        )
    )
    a = read_voc_annotation(p)
    assert (a.width, a.height, a.filename) == (500, 375, "000001.jpg")
    assert a.names == ["dog", "person", "cat"] and a.labels.tolist() == [12, 15, 8]
    assert a.boxes.tolist() == [[48, 240, 195, 371], [8, 12, 352, 375], [1, 1, 500, 375]]
    assert a.difficult.tolist() == [False, True, False]  # an absent <difficult> is 0, as VOCreadrecxml.m reads it
    assert a.truncated.tolist() == [True, False, False]
    assert a.lines == [8, 20, 31]


# VOCinit.m's class list, as the devkit writes it
DEVKIT_CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person pottedplant "
    "sheep sofa train tvmonitor"
)


def test_class_names_are_the_devkits_order():
    assert VOC_CLASSES == tuple(DEVKIT_CLASSES.split())


@pytest.mark.parametrize(
    "text, message",
    [
        (xml(obj(box=(48, "nan", 195, 371))), r"000001.xml:15: <ymin> is 'nan', not a finite number"),
        (xml(obj(box=(48, 240, "inf", 371))), r"000001.xml:16: <xmax> is 'inf', not a finite number"),
        (xml(obj(box=(48, 240, 195, None))), r"000001.xml:13: missing <ymax>"),
        (xml(obj(box=(48, 240, 501, 371))), r"000001.xml:13: bndbox .* not inside the 500x375 image"),
        (xml(obj(box=(0, 240, 195, 371))), r"000001.xml:13: bndbox .* not inside"),
        (xml(obj(box=(195, 240, 48, 371))), r"000001.xml:13: bndbox .* not inside"),
        (xml(obj(), size=""), r"000001.xml:1: missing <size>"),
        (xml(obj(), size="<size>\n<width>500</width>\n</size>\n"), r"000001.xml:3: missing <height>"),
        (xml(obj("unicorn")), r"000001.xml:9: unknown class 'unicorn'"),
        (xml(obj().replace("<name>dog</name>\n", "")), r"000001.xml:8: <object> without <name>"),
        (xml(obj(difficult="2")), r"000001.xml:12: <difficult> is '2'; expected 0 or 1"),
        (xml(obj()).replace("</bndbox>", "</bnd>"), r"000001.xml:18: malformed XML"),
        (
            xml(obj(), head='<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY x "y">]>\n'),
            r"000001.xml:2: DOCTYPE/entity declarations are not allowed",
        ),
    ],
)
def test_xml_errors_name_file_and_line(tmp_path, text, message):
    p = tmp_path / "000001.xml"
    p.write_text(text)
    with pytest.raises(DataError, match=message):
        read_voc_annotation(p)


def test_object_without_bndbox(tmp_path):
    p = tmp_path / "000001.xml"
    p.write_text(xml("<object>\n<name>dog</name>\n</object>\n"))
    with pytest.raises(VocFormatError, match=r"000001.xml:8: <object> without <bndbox>"):
        read_voc_annotation(p)


def test_image_sets(tmp_path):
    p = tmp_path / "test.txt"
    p.write_text("000001\n\n000004\n")
    assert read_image_set(p) == ["000001", "000004"]
    p.write_text("000001  1\n")
    with pytest.raises(VocFormatError, match=r"test.txt:1: .* one image id per line"):
        read_image_set(p)
    p.write_text("000001\n000002\n000001\n")
    with pytest.raises(VocFormatError, match=r"test.txt:3: image '000001' repeats line 1"):
        read_image_set(p)
    with pytest.raises(VocFormatError, match="image-set list not found"):
        read_image_set(tmp_path / "nothing.txt")


# ---------------------------------------------------------------------------------- generated set, dataset


def test_generated_set_has_the_voc_layout_and_flags(voc_root, tmp_path):
    ydir = voc_root / "VOC2007"
    assert read_image_set(ydir / "ImageSets" / "Main" / "trainval.txt")[:2] == ["000001", "000002"]
    assert read_image_set(ydir / "ImageSets" / "Main" / "test.txt")[0] == "000025"
    records = load_voc_split(voc_root, 2007, "trainval", SHAPES) + load_voc_split(voc_root, 2007, "test", SHAPES)
    assert all((voc_root / r.file_name).is_file() and r.file_name.startswith("VOC2007/JPEGImages/") for r in records)
    difficult = np.concatenate([r.annotation.difficult for r in records])
    truncated = np.concatenate([r.annotation.truncated for r in records])
    assert difficult.any() and truncated.any() and not difficult.all()
    # deterministic
    again = tmp_path / "again"
    generate_voc_shapes(again, num_trainval=2, num_test=1, image_size=96, seed=1)
    assert (again / "VOC2007/Annotations/000002.xml").read_bytes() == (ydir / "Annotations/000002.xml").read_bytes()


def test_dataset_leaves_difficult_objects_out_of_training_by_default(voc_root):
    plain = VocDataset(voc_root, 2007, "trainval", classes=SHAPES)
    with_difficult = VocDataset(voc_root, 2007, "trainval", classes=SHAPES, use_difficult=True)
    records = plain.records
    n_objects = sum(len(r.annotation.labels) for r in records)
    n_difficult = sum(int(r.annotation.difficult.sum()) for r in records)
    assert n_difficult > 0
    assert plain.num_targets == n_objects - n_difficult and with_difficult.num_targets == n_objects
    assert plain.class_names == list(SHAPES) and plain.label_to_cat_id == {1: 1, 2: 2, 3: 3}
    # a sample's targets are the XML's non-difficult boxes, converted
    i = next(k for k, r in enumerate(records) if r.annotation.difficult.any())
    image, target = plain[i]
    ann = records[i].annotation
    keep = ~ann.difficult
    assert image.shape == (3, 96, 96) and target["image_id"] == i + 1
    assert np.array_equal(target["boxes"].numpy(), voc_to_xyxy(ann.boxes[keep]).astype(np.float32))
    assert target["labels"].tolist() == ann.labels[keep].tolist()
    # the COCO dict keeps every object, difficult ones as ignored regions
    anns = plain.coco.dataset["annotations"]
    assert all(a["iscrowd"] == a["difficult"] for a in anns) and len(anns) == n_objects
    assert all(a["iscrowd"] == 0 for a in with_difficult.coco.dataset["annotations"])


def test_config_entries_build_several_year_split_pairs(voc_root):
    from restransfer.config import load_config
    from restransfer.data.build import build_test_dataset, build_train_dataset

    entry = f"format: voc, root: {voc_root}, year: 2007, classes: [circle, triangle, square]"
    cfg = load_config(
        None,
        [
            f"data.train=[{{{entry}, split: trainval}}, {{{entry}, split: test}}]",
            f"data.test={{{entry}, split: test}}",
            "model.num_classes=3",
        ],
    )
    train = build_train_dataset(cfg)
    test = build_test_dataset(cfg)
    assert len(train) == len(train.datasets[0]) + len(train.datasets[1]) and len(train.datasets[1]) <= 12
    assert isinstance(test, VocDataset) and test.split == "test" and len(test) == 12
    cfg.data.voc_use_difficult = True
    assert build_train_dataset(cfg).datasets[0].num_targets > train.datasets[0].num_targets
    bad = load_config(None, ["data.test={format: voc, year: 2007, split: test}"])
    with pytest.raises(ValueError, match=r"data.test: a format voc entry names root, year and split.*missing: root"):
        build_test_dataset(bad)


def test_generate_voc_shapes_from_a_config_entry(tmp_path):
    from restransfer.config import load_config
    from restransfer.data.build import build_test_dataset

    root = tmp_path / "VOCdevkit"
    cfg = load_config(
        REPO / "configs" / "demo_voc_shapes.yaml",
        [
            f"data.test={{format: voc, root: {root}, year: 2007, split: test, generate: voc_shapes, "
            "classes: [circle, triangle, square]}"
        ],
    )
    assert build_test_dataset(cfg).class_names == list(SHAPES)
    assert (root / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").is_file()


# ------------------------------------------------------------------------------------------ conversion


def test_prepare_voc_writes_coco_json_that_keeps_the_devkit_ground_truth(voc_root, tmp_path):
    out = tmp_path / "ann"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "datasets" / "prepare_voc.py"),
            "--root",
            str(voc_root),
            "--sets",
            "2007:test",
            "--classes",
            *SHAPES,
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    path = out / "voc2007_test.json"
    assert "VOC2007 test: 12 images" in proc.stdout
    data = json.loads(path.read_text())
    assert {"difficult", "truncated", "iscrowd"} <= set(data["annotations"][0])
    assert data["images"][0]["voc_id"] == "000025" and data["images"][0]["file_name"] == "VOC2007/JPEGImages/000025.jpg"
    ds = CocoDataset(path, voc_root)
    assert len(ds) == 12
    # the ground truth read back from the json is the XML's, exactly
    from_json = ground_truth_from_coco(data)
    from_xml = load_ground_truth(
        voc_root / "VOC2007" / "Annotations", voc_root / "VOC2007" / "ImageSets" / "Main" / "test.txt", SHAPES
    )
    assert from_json.image_names == from_xml.image_names
    for field in ("obj_image", "labels", "boxes", "difficult"):
        assert np.array_equal(getattr(from_json, field), getattr(from_xml, field)), field
    bad = subprocess.run(
        [
            sys.executable,
            str(REPO / "datasets" / "prepare_voc.py"),
            "--root",
            str(voc_root),
            "--sets",
            "2007:test",
            "--check-only",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown class '" in bad.stderr  # the default is the 20 PASCAL classes


def test_records_to_coco_boxes():
    from restransfer.data.voc import VocAnnotation, VocRecord

    ann = VocAnnotation(
        "x.xml",
        None,
        100,
        50,
        ["dog"],
        np.array([12]),
        np.array([[1.0, 2, 10, 50]]),
        np.array([True]),
        np.array([False]),
        [3],
    )
    data = records_to_coco([VocRecord("2012", "2008_000001", "VOC2012/JPEGImages/2008_000001.jpg", ann)])
    a = data["annotations"][0]
    assert a["bbox"] == [0.0, 1.0, 10.0, 49.0] and a["area"] == 490.0 and a["iscrowd"] == 1 and a["difficult"] == 1
    assert data["categories"][11] == {"id": 12, "name": "dog"} and len(data["categories"]) == 20
