"""ImageNet CLS-LOC readers (devkit and Kaggle layouts) and the COCO conversion, on files made here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.imagenet_loc_files import (
    make_classes,
    write_devkit,
    write_kaggle_solution,
    write_loc_synset_mapping,
    write_map_clsloc,
    xml_text,
)

from restransfer.data.imagenet_loc import (
    LocFormatError,
    convert_split,
    ground_truth_from_coco,
    read_blacklist,
    read_devkit_annotations,
    read_ground_truth_labels,
    read_kaggle_solution,
    read_loc_xml,
    read_synsets,
    to_coco,
)

WNIDS, NAMES, DEVKIT_ORDER = make_classes(6)
BY_WNID = dict(zip(WNIDS, NAMES))


@pytest.fixture
def class_files(tmp_path):
    return (
        write_map_clsloc(tmp_path / "map_clsloc.txt", DEVKIT_ORDER, BY_WNID),
        write_loc_synset_mapping(tmp_path / "LOC_synset_mapping.txt", WNIDS, BY_WNID),
    )


def _images():
    a, b = DEVKIT_ORDER[0], DEVKIT_ORDER[3]
    return [
        {
            "name": "ILSVRC2012_val_00000002",
            "labels": [b],
            "objects": [(b, (5, 6, 40, 30)), (b, (0, 0, 199, 99))],
            "width": 200,
            "height": 100,
        },
        {
            "name": "ILSVRC2012_val_00000001",
            "labels": [a],
            "objects": [(a, (10, 20, 49, 79))],
            "width": 64,
            "height": 80,
        },
        {
            "name": "ILSVRC2012_val_00000003",
            "labels": [a, b],
            "objects": [(a, (1, 1, 8, 8)), (b, (2, 2, 9, 9))],
            "width": 32,
            "height": 32,
        },
    ]


def test_class_lists_are_matched_by_wnid_not_position(class_files):
    devkit, kaggle = (read_synsets(p) for p in class_files)
    assert devkit.source == "map_clsloc" and kaggle.source == "loc_synset_mapping"
    assert devkit.wnids == tuple(DEVKIT_ORDER) and kaggle.wnids == tuple(WNIDS)
    assert devkit.wnids != kaggle.wnids and set(devkit.wnids) == set(kaggle.wnids)
    w = DEVKIT_ORDER[2]
    assert devkit.label(w) == 3 and kaggle.label(w) == WNIDS.index(w) + 1
    assert kaggle.names[0] == f"{BY_WNID[WNIDS[0]]}, alt name"


@pytest.mark.parametrize(
    "text, message",
    [
        ("n00000001 1 a\nn00000002 x b\n", r":2: devkit id 'x' is not an integer"),
        ("n00000001 1 a\nn0000002 2 b\n", r":2: 'n0000002' is not a WNID"),
        ("n00000001 1 a\nn00000001 2 b\n", r":2: WNID n00000001 already listed on line 1"),
        ("n00000001 1 a\nn00000002 3 b\n", r"ids must be 1..2 without gaps, but \[2\] are missing"),
    ],
)
def test_malformed_map_clsloc_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "map_clsloc.txt"
    path.write_text(text)
    with pytest.raises(LocFormatError, match=rf"map_clsloc.txt.*{message}"):
        read_synsets(path)


def test_xml_reader_and_unknown_wnid_with_line(tmp_path, class_files):
    synsets = read_synsets(class_files[0])
    img = _images()[0]
    path = tmp_path / "x.xml"
    path.write_text(xml_text(img))
    rec = read_loc_xml(path, synsets)
    assert (rec.name, rec.width, rec.height, rec.labels) == ("x", 200, 100, (img["labels"][0],))
    assert rec.boxes.tolist() == [[5, 6, 40, 30], [0, 0, 199, 99]]
    text = xml_text(img).replace(img["objects"][1][0], "n99999999")
    path.write_text(text)
    line = text.splitlines().index("\t\t<name>n99999999</name>") + 1
    with pytest.raises(LocFormatError, match=rf"x.xml:{line}: unknown WNID 'n99999999'; it is not in"):
        read_loc_xml(path, synsets)
    text = xml_text(img).replace("<ymax>30</ymax>", "<ymax>3O</ymax>")
    path.write_text(text)
    line = text.splitlines().index("\t\t\t<ymax>3O</ymax>") + 1
    with pytest.raises(LocFormatError, match=rf"x.xml:{line}: <ymax> is '3O', not a number"):
        read_loc_xml(path, synsets)
    path.write_text("<annotation>\n<size>\n</annotation>\n")
    with pytest.raises(LocFormatError, match=r"x.xml:3: malformed XML"):
        read_loc_xml(path, synsets)


def test_devkit_and_kaggle_readers_give_the_same_ground_truth(tmp_path, class_files):
    devkit_syn, kaggle_syn = (read_synsets(p) for p in class_files)
    images = _images()
    xml_dir, gt = write_devkit(tmp_path, images, DEVKIT_ORDER)
    devkit = read_devkit_annotations(xml_dir, devkit_syn, ground_truth=gt)
    kaggle = read_kaggle_solution(write_kaggle_solution(tmp_path / "LOC_val_solution.csv", images), kaggle_syn)
    assert [im.name for im in devkit] == [im.name for im in kaggle] == sorted(im["name"] for im in images)
    for d, k in zip(devkit, kaggle):
        assert d.labels == k.labels and d.box_wnids == k.box_wnids
        np.testing.assert_array_equal(d.boxes, k.boxes)
        assert d.file_name == k.file_name == f"val/{d.name}.JPEG"
    assert (devkit[0].width, devkit[0].height, kaggle[0].width) == (64, 80, None)


def test_ground_truth_file_errors(tmp_path, class_files):
    synsets = read_synsets(class_files[0])
    path = tmp_path / "gt.txt"
    path.write_text("1\n2\n7\n")
    with pytest.raises(LocFormatError, match=r"gt.txt:3: class id 7 is not in"):
        read_ground_truth_labels(path, synsets)
    path.write_text("1\nx\n")
    with pytest.raises(LocFormatError, match=r"gt.txt:2: 'x' is not a class id"):
        read_ground_truth_labels(path, synsets)
    path.write_text("1\n2\n")
    assert read_ground_truth_labels(path, synsets) == [(DEVKIT_ORDER[0],), (DEVKIT_ORDER[1],)]
    with pytest.raises(LocFormatError, match="2 lines, but there are 3 annotation files"):
        read_ground_truth_labels(path, synsets, 3)


@pytest.mark.parametrize(
    "row, message",
    [
        ("ILSVRC2012_val_00000002,{w} 1 2 3", r"3: 4 fields; each box needs 5"),
        ("ILSVRC2012_val_00000002,n99999999 1 2 3 4", r"3: WNID 'n99999999' is not in"),
        ("ILSVRC2012_val_00000002,{w} 1 2 3 z", r"3: coordinate 'z' is not a number"),
        ("ILSVRC2012_val_00000001,{w} 1 2 3 4", r"3: ImageId ILSVRC2012_val_00000001 appears twice"),
        ("ILSVRC2012_val_00000002,", r"3: image ILSVRC2012_val_00000002 has no box"),
    ],
)
def test_malformed_kaggle_solution_names_file_and_line(tmp_path, class_files, row, message):
    synsets = read_synsets(class_files[1])
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text(
        f"ImageId,PredictionString\nILSVRC2012_val_00000001,{WNIDS[0]} 1 2 3 4 \n{row.format(w=WNIDS[1])}\n"
    )
    with pytest.raises(LocFormatError, match=rf"LOC_val_solution.csv:{message}"):
        read_kaggle_solution(path, synsets)


def test_blacklist_reader(tmp_path):
    path = tmp_path / "bl.txt"
    path.write_text("3\n1\n")
    assert read_blacklist(path, 3).tolist() == [0, 2]
    path.write_text("3\n4\n")
    with pytest.raises(LocFormatError, match=r"bl.txt:2: image index 4 is outside 1..3"):
        read_blacklist(path, 3)
    path.write_text("1\n1\n")
    with pytest.raises(LocFormatError, match=r"bl.txt:2: image index 1 already listed on line 1"):
        read_blacklist(path, 3)


def test_coco_conversion_boxes_categories_and_round_trip(tmp_path, class_files):
    synsets = read_synsets(class_files[0])
    images = _images()
    images[0]["objects"].append((images[0]["labels"][0], (250, 10, 260, 20)))  # entirely outside the 200x100 image
    xml_dir, gt = write_devkit(tmp_path, images, DEVKIT_ORDER)
    data = convert_split("val", synsets, tmp_path / "no_images_needed", annotations=xml_dir, ground_truth=gt)
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5, 6]
    assert [c["wnid"] for c in data["categories"]] == DEVKIT_ORDER  # ids are devkit ids
    assert [im["id"] for im in data["images"]] == [1, 2, 3]
    first = data["images"][0]
    assert (first["name"], first["file_name"], first["width"], first["height"]) == (
        "ILSVRC2012_val_00000001",
        "val/ILSVRC2012_val_00000001.JPEG",
        64,
        80,
    )
    anns = data["annotations"]
    # devkit (10, 20, 49, 79) inclusive = 40 x 60 pixels at (10, 20)
    assert anns[0]["bbox"] == [10, 20, 40, 60] and anns[0]["area"] == 2400 and anns[0]["category_id"] == 1
    # (0, 0, 199, 99) ends exactly at the 200 x 100 border: not clipped; one past the border would be
    assert anns[2]["bbox"] == [0, 0, 200, 100]
    assert data["images"][1]["devkit_boxes_outside"] == [{"category_id": 4, "devkit_bbox": [250, 10, 260, 20]}]
    assert data["images"][2]["labels"] == [1, 4]
    back, back_syn = ground_truth_from_coco(json.loads(json.dumps(data)))
    original = read_devkit_annotations(xml_dir, synsets, ground_truth=gt)
    assert back_syn.wnids == synsets.wnids
    for a, b in zip(back, original):
        assert (a.name, a.labels, sorted(a.box_wnids)) == (b.name, b.labels, sorted(b.box_wnids))
        assert sorted(map(tuple, a.boxes)) == sorted(map(tuple, b.boxes))


def test_boxes_past_the_border_are_clipped_for_training_only(class_files):
    from restransfer.data.imagenet_loc import LocImage

    synsets = read_synsets(class_files[0])
    img = LocImage("a", "val/a.JPEG", (WNIDS[0],), (WNIDS[0],), np.array([[-1.0, 5, 64, 80]]), width=64, height=80)
    data = to_coco([img], synsets)
    assert data["annotations"][0]["bbox"] == [0, 5, 64, 75]
    assert data["annotations"][0]["devkit_bbox"] == [-1, 5, 64, 80]
    back, _ = ground_truth_from_coco(data)
    assert back[0].boxes.tolist() == [[-1, 5, 64, 80]]


def test_thousand_categories(tmp_path):
    wnids, names, order = make_classes(1000, seed=1)
    synsets = read_synsets(write_map_clsloc(tmp_path / "map_clsloc.txt", order, dict(zip(wnids, names))))
    data = to_coco([], synsets)
    assert len(data["categories"]) == 1000
    assert data["categories"][999] == {"id": 1000, "name": dict(zip(wnids, names))[order[999]], "wnid": order[999]}


def _kaggle_train(tmp_path, class_files):
    """Kaggle train layout: 3 images with boxes in the solution, 2 more without boxes in the class folders."""
    root = tmp_path / "Data" / "CLS-LOC"
    a, b = WNIDS[0], WNIDS[1]
    sizes = {f"{a}_1": (40, 30), f"{a}_2": (50, 20), f"{a}_3": (16, 16), f"{b}_1": (24, 48), f"{b}_7": (33, 21)}
    for name, (w, h) in sizes.items():
        folder = root / "train" / name.split("_")[0]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{name}.JPEG"), np.zeros((h, w, 3), np.uint8))
    boxed = [
        {"name": f"{a}_2", "objects": [(a, (0, 0, 9, 9))]},
        {"name": f"{b}_1", "objects": [(b, (1, 2, 23, 47))]},
        {"name": f"{a}_1", "objects": [(a, (3, 4, 5, 6)), (a, (0, 0, 39, 29))]},
    ]
    return root, write_kaggle_solution(tmp_path / "LOC_train_solution.csv", boxed), sizes


def test_kaggle_train_conversion_drops_or_keeps_unboxed_images(tmp_path, class_files):
    synsets = read_synsets(class_files[1])
    root, solution, sizes = _kaggle_train(tmp_path, class_files)
    data = convert_split("train", synsets, root, solution=solution)
    assert [im["file_name"] for im in data["images"]] == [
        f"train/{WNIDS[0]}/{WNIDS[0]}_1.JPEG",
        f"train/{WNIDS[0]}/{WNIDS[0]}_2.JPEG",
        f"train/{WNIDS[1]}/{WNIDS[1]}_1.JPEG",
    ]
    assert [(im["width"], im["height"]) for im in data["images"]] == [sizes[im["name"]] for im in data["images"]]
    assert len(data["annotations"]) == 4
    kept = convert_split("train", synsets, root, solution=solution, keep_unboxed=True)
    assert len(kept["images"]) == 5 and len(kept["annotations"]) == 4
    extra = {im["name"]: im for im in kept["images"]}
    assert extra[f"{WNIDS[1]}_7"]["labels"] == [synsets.label(WNIDS[1])]
    assert (extra[f"{WNIDS[1]}_7"]["width"], extra[f"{WNIDS[1]}_7"]["height"]) == (33, 21)


def test_missing_image_for_its_size_is_reported(tmp_path, class_files):
    synsets = read_synsets(class_files[1])
    solution = write_kaggle_solution(
        tmp_path / "LOC_val_solution.csv", [{"name": "ILSVRC2012_val_00000001", "objects": [(WNIDS[0], (0, 0, 9, 9))]}]
    )
    with pytest.raises(LocFormatError, match=r"ILSVRC2012_val_00000001.JPEG: cannot read the image size"):
        convert_split("val", synsets, tmp_path, solution=solution)


def test_prepare_script_writes_the_json(tmp_path, class_files):
    root, solution, _ = _kaggle_train(tmp_path, class_files)
    spec = importlib.util.spec_from_file_location(
        "prepare", Path(__file__).parents[2] / "datasets" / "prepare_imagenet_loc.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "ann" / "train.json"
    assert (
        tool.main(
            [
                "--split",
                "train",
                "--synsets",
                str(class_files[1]),
                "--solution",
                str(solution),
                "--image-root",
                str(root),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert len(data["images"]) == 3 and len(data["categories"]) == 6
    assert data["info"]["category_ids"] == "loc_synset_mapping"
    (tmp_path / "bad.csv").write_text("ImageId,PredictionString\nx,n99999999 1 2 3 4\n")
    assert (
        tool.main(
            [
                "--split",
                "val",
                "--synsets",
                str(class_files[1]),
                "--solution",
                str(tmp_path / "bad.csv"),
                "--image-root",
                str(root),
                "--output",
                str(out),
            ]
        )
        == 2
    )
