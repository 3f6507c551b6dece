"""Partly broken annotation data: training skips it with warnings, evaluation refuses it by name,
ILSVRC XML readers reject non-finite coordinates, and image paths stay inside the image folder."""

from __future__ import annotations

import json
import logging
import math

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from helpers.imagenet_det_fixtures import WNIDS as DET_WNIDS
from helpers.imagenet_det_fixtures import xml_text as det_xml_text
from helpers.imagenet_loc_files import make_classes, write_kaggle_solution, write_map_clsloc
from helpers.imagenet_loc_files import xml_text as loc_xml_text

from restransfer.config import load_config
from restransfer.data.build import build_test_dataset, build_train_dataset
from restransfer.data.coco import CocoDataset, rle_counts, segmentation_problem
from restransfer.data.imagenet_det import DetFormatError, read_annotation
from restransfer.data.imagenet_loc import LocFormatError, read_kaggle_solution, read_loc_xml, read_synsets
from restransfer.evaluation.coco import ENGINES, evaluate_coco, evaluate_predictions, masks_to_rle

H, W = 48, 64


def _square(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def _runs(mask):
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ([0] if flat[0] else []) + runs


def _poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


# Every broken kind: (name, kind, annotation fields replacing a good annotation's).
_good_rle = _rle(_square(4, 12, 4, 20))
BROKEN = {
    "garbage RLE string": ("RLE", {"segmentation": {"size": [H, W], "counts": "zz~~garbage"}}),
    "negative RLE counts": ("RLE", {"segmentation": {"size": [H, W], "counts": [100, -40, H * W - 60]}}),
    "RLE counts not summing to h*w": ("RLE", {"segmentation": {"size": [H, W], "counts": [100, 40, 60]}}),
    "compressed RLE of another size": (
        "RLE",
        {"segmentation": {"size": [H, W], "counts": _rle(_square(1, 3, 1, 3, 20, 20))["counts"]}},
    ),
    "RLE without size": ("RLE", {"segmentation": {"counts": _good_rle["counts"]}}),
    "NaN box": ("box", {"bbox": [float("nan"), 2, 10, 10]}),
    "Infinity box": ("box", {"bbox": [2, 2, float("inf"), float("inf")]}),
    "2-point polygon": ("polygon", {"segmentation": [[2, 2, 30, 30]]}),
}


def _png(path):
    cv2.imwrite(str(path), np.full((H, W, 3), 120, np.uint8))


def _write_json(path, data):
    # json.dumps writes NaN and Infinity as the literals that Python's json module reads back.
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def broken_dir(tmp_path):
    """Image i (id 100 + i) holds a good annotation (id 2i + 1, a polygon) and one broken one (id 2i + 2)
    of kind BROKEN[i]; image "only_broken.png" (id 999) holds only a broken annotation (id 999)."""
    root = tmp_path / "images"
    root.mkdir()
    images, anns, good = [], [], {}
    for i, (name, (_, fields)) in enumerate(BROKEN.items()):
        file_name = f"img{i}.png"
        _png(root / file_name)
        img_id = 100 + i
        images.append({"id": img_id, "file_name": file_name, "width": W, "height": H})
        x0 = 10 + 3 * i
        anns.append(
            {
                "id": 2 * i + 1,
                "image_id": img_id,
                "category_id": 1,
                "bbox": [x0, 20, 10, 8],
                "iscrowd": 0,
                "area": 80,
                "segmentation": _poly(x0, 20, x0 + 10, 28),
            }
        )
        good[img_id] = [x0, 20, x0 + 10, 28]
        anns.append(
            {
                "id": 2 * i + 2,
                "image_id": img_id,
                "category_id": 1,
                "bbox": [4, 4, 16, 8],
                "iscrowd": 0,
                "area": 128,
                "segmentation": _good_rle,
                **fields,
            }
        )
    _png(root / "only_broken.png")
    images.append({"id": 999, "file_name": "only_broken.png", "width": W, "height": H})
    anns.append(
        {
            "id": 999,
            "image_id": 999,
            "category_id": 1,
            "bbox": [1, 1, 5, 5],
            "iscrowd": 0,
            "area": 25,
            "segmentation": [[1, 1, 6, 6]],
        }
    )
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    return {"json": _write_json(tmp_path / "broken.json", data), "images": root, "good": good, "data": data}


# ------------------------------------------------------------------------------------------- training


def test_rle_string_decoder_matches_pycocotools():
    rng = np.random.default_rng(0)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8) if t % 2 else _square(0, h // 2, w // 3, w, h, w)
        rle = _rle(mask)
        assert rle_counts(rle["counts"]).tolist() == _runs(mask)
        assert segmentation_problem(rle, h, w) is None
    big = np.zeros((3000, 4000), np.uint8)
    big[-1, -1] = 1  # runs beyond 2**23 need long groups
    assert rle_counts(_rle(big)["counts"]).tolist() == [3000 * 4000 - 1, 1]
    for garbage in ("", "abc", "~~", "é"):
        assert rle_counts(garbage) is None


def test_training_skips_each_broken_annotation_and_keeps_the_good_ones(broken_dir, caplog):
    with caplog.at_level(logging.WARNING):
        ds = CocoDataset(broken_dir["json"], broken_dir["images"], with_masks=True, is_train=True)
    assert ds.broken_annotations == {"box": 2, "polygon": 2, "RLE": 5}
    assert sorted(ds.image_ids) == sorted(broken_dir["good"])  # image 999 had nothing usable
    assert ds.num_targets == len(BROKEN)
    for i, img_id in enumerate(sorted(broken_dir["good"])):
        _, target = ds[ds.image_ids.index(img_id)]
        np.testing.assert_allclose(target["boxes"].numpy(), [broken_dir["good"][img_id]])
        assert target["masks"].shape == (1, H, W) and int(target["masks"].sum()) > 0
    messages = [r.getMessage() for r in caplog.records]
    for i in range(len(BROKEN)):
        assert any(f"broken.json: annotation {2 * i + 2} of image {100 + i} (img{i}.png)" in m for m in messages)
    assert any("annotation 999 of image 999 (only_broken.png)" in m for m in messages)
    summary = [m for m in messages if "broken annotations skipped" in m]
    assert len(summary) == 1
    assert "9 broken annotations skipped (2 box, 2 polygon, 5 RLE)" in summary[0]
    assert "1 images have no other annotation and are left out" in summary[0]


def test_test_set_keeps_an_image_whose_annotations_are_all_broken(broken_dir):
    ds = CocoDataset(broken_dir["json"], broken_dir["images"], with_masks=True, is_train=False)
    assert 999 in ds.image_ids
    _, target = ds[ds.image_ids.index(999)]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, H, W)


def test_without_masks_only_boxes_are_judged(broken_dir):
    ds = CocoDataset(broken_dir["json"], broken_dir["images"], with_masks=False, is_train=True)
    assert ds.broken_annotations == {"box": 2, "polygon": 0, "RLE": 0}
    assert ds.num_targets == 2 * len(BROKEN) + 1 - 2


def test_dataloader_worker_survives_broken_annotations(broken_dir):
    ds = CocoDataset(broken_dir["json"], broken_dir["images"], with_masks=True, is_train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
    seen = {t["image_id"]: t for _, t in loader}
    assert set(seen) == set(broken_dir["good"])
    assert all(len(t["boxes"]) == 1 and t["masks"].shape == (1, H, W) for t in seen.values())
    assert ds.num_skipped == 0


def _cfg(*overrides):
    return load_config(None, list(overrides))


def test_json_without_annotations_is_an_error_and_an_empty_list_is_a_test_set(tmp_path, broken_dir):
    data = dict(broken_dir["data"])
    del data["annotations"]
    missing = _write_json(tmp_path / "image_info.json", data)
    with pytest.raises(ValueError, match=r"image_info\.json: annotations: missing"):
        CocoDataset(missing, broken_dir["images"])
    with pytest.raises(ValueError, match=r"image_info\.json: annotations: missing"):
        build_train_dataset(_cfg(f"data.train=[{{json: {missing}, image_root: {broken_dir['images']}}}]"))
    empty = _write_json(tmp_path / "empty.json", {**data, "annotations": []})
    test_set = build_test_dataset(_cfg(f"data.test={{json: {empty}, image_root: {broken_dir['images']}}}"))
    assert len(test_set) == len(data["images"])
    with pytest.raises(ValueError, match=r"empty\.json has no usable (training images|annotations)"):
        build_train_dataset(
            _cfg(f"data.train=[{{json: {empty}, image_root: {broken_dir['images']}}}]", "data.filter_empty=false")
        )


def test_training_with_only_broken_annotations_is_an_error(tmp_path, broken_dir):
    data = dict(broken_dir["data"])
    data["annotations"] = [a for a in data["annotations"] if a["id"] % 2 == 0 or a["id"] == 999]
    path = _write_json(tmp_path / "all_broken.json", data)
    with pytest.raises(ValueError, match=r"all_broken\.json has no usable"):
        build_train_dataset(
            _cfg(
                f"data.train=[{{json: {path}, image_root: {broken_dir['images']}}}]",
                "model.arch=mask_rcnn",
                "data.filter_empty=false",
            )
        )


# ---------------------------------------------------------------------------------------------- paths


@pytest.fixture()
def escaping_dir(tmp_path):
    root = tmp_path / "data" / "images"
    (root / "sub").mkdir(parents=True)
    _png(root / "inside.png")
    _png(tmp_path / "data" / "outside.png")
    _png(tmp_path / "absolute.png")
    names = {1: "inside.png", 2: "../outside.png", 3: str(tmp_path / "absolute.png"), 4: "sub/../inside.png"}
    data = {
        "images": [{"id": i, "file_name": n, "width": W, "height": H} for i, n in names.items()],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0} for i in names
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    return {"json": _write_json(tmp_path / "paths.json", data), "images": root}


def test_paths_outside_the_image_root_are_refused(escaping_dir, caplog):
    with caplog.at_level(logging.WARNING):
        ds = CocoDataset(escaping_dir["json"], escaping_dir["images"], is_train=True)
    assert ds.image_ids == [1, 4]  # "sub/../inside.png" stays inside
    refusals = [r.getMessage() for r in caplog.records if "allow_outside_root" in r.getMessage()]
    assert len(refusals) == 1
    assert "2 of 4 images" in refusals[0] and "../outside.png" in refusals[0] and "absolute.png" in refusals[0]


def test_allow_outside_root_reads_them(escaping_dir):
    ds = CocoDataset(escaping_dir["json"], escaping_dir["images"], allow_outside_root=True)
    assert ds.image_ids == [1, 2, 3, 4]
    image, target = ds[ds.image_ids.index(2)]
    assert image.shape == (3, H, W) and abs(float(image.mean()) * 255 - 120) < 1 and target["image_id"] == 2
    spec = f"{{json: {escaping_dir['json']}, image_root: {escaping_dir['images']}}}"
    assert build_test_dataset(_cfg(f"data.test={spec}")).image_ids == [1, 4]
    assert build_test_dataset(_cfg(f"data.test={spec}", "data.allow_outside_root=true")).image_ids == [1, 2, 3, 4]
    assert len(build_train_dataset(_cfg(f"data.train=[{spec}]", "data.allow_outside_root=true"))) == 4


# ------------------------------------------------------------------------------------------ evaluation


def _eval_gt(extra_ann=None):
    gt = {
        "images": [
            {"id": 1, "width": W, "height": H, "file_name": "a.png"},
            {"id": 2, "width": W, "height": H, "file_name": "b.png"},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 5,
                "bbox": [4, 4, 16, 8],
                "area": 128,
                "iscrowd": 0,
                "segmentation": _good_rle,
            },
            {
                "id": 2,
                "image_id": 2,
                "category_id": 5,
                "bbox": [10, 20, 10, 8],
                "area": 80,
                "iscrowd": 0,
                "segmentation": _poly(10, 20, 20, 28),
            },
        ],
        "categories": [{"id": 5, "name": "thing"}, {"id": 6, "name": "other"}],
    }
    if extra_ann is not None:
        gt["annotations"].append(
            {
                "id": 7,
                "image_id": 2,
                "category_id": 5,
                "bbox": [30, 30, 8, 8],
                "area": 64,
                "iscrowd": 0,
                "segmentation": _poly(30, 30, 38, 38),
                **extra_ann,
            }
        )
    return gt


def _good_results():
    return [
        {"image_id": 1, "category_id": 5, "bbox": [4, 4, 16, 8], "score": 0.9, "segmentation": _good_rle},
        {
            "image_id": 2,
            "category_id": 5,
            "bbox": [10, 20, 10, 8],
            "score": 0.8,
            "segmentation": masks_to_rle(_square(20, 28, 10, 20)[None])[0],
        },
    ]


def _errors(gt, results, iou_types):
    """The ValueError message of each engine (they must raise before running)."""
    messages = []
    for engine in ENGINES:
        with pytest.raises(ValueError) as info:
            evaluate_coco(gt, results, iou_types, engine=engine)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    return messages[0]


def test_good_inputs_evaluate_with_both_engines(tmp_path):
    gt_path = _write_json(tmp_path / "gt.json", _eval_gt())
    for engine in ENGINES:
        m = evaluate_coco(gt_path, _good_results(), ("bbox", "segm"), engine=engine)
        assert m["bbox"]["AP"] == pytest.approx(100.0) and m["segm"]["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_ground_truth_is_a_named_error(tmp_path, case):
    kind, fields = BROKEN[case]
    gt_path = _write_json(tmp_path / "gt.json", _eval_gt(fields))
    iou_types = ("bbox",) if kind == "box" else ("segm",)
    message = _errors(gt_path, _good_results(), iou_types)
    assert f"{gt_path}: annotations[2] (id 7, image 2): " in message
    assert ("bbox" if kind == "box" else kind) in message


RESULT_BREAKS = {
    "NaN box": ("bbox", {"bbox": [float("nan"), 4, 16, 8]}, "non-finite"),
    "Infinity box": ("bbox", {"bbox": [4, 4, float("inf"), 8]}, "non-finite"),
    "NaN score": ("bbox", {"score": float("nan")}, "score nan is not a finite number"),
    "garbage RLE string": ("segm", {"segmentation": {"size": [H, W], "counts": "zz~~garbage"}}, "malformed"),
    "RLE without size": ("segm", {"segmentation": {"counts": _good_rle["counts"]}}, "size"),
    "RLE of another size": (
        "segm",
        {"segmentation": _rle(_square(1, 3, 1, 3, 20, 20))},
        r"differs from the image's [48, 64]",
    ),
    "RLE size lying": (
        "segm",
        {"segmentation": {"size": [H, W], "counts": _rle(_square(1, 3, 1, 3, 20, 20))["counts"]}},
        "summing to 400",
    ),
    "uncompressed RLE": (
        "segm",
        {"segmentation": {"size": [H, W], "counts": _runs(_square(4, 12, 4, 20))}},
        "compressed RLE",
    ),
    "polygon": ("segm", {"segmentation": _poly(4, 4, 20, 12)}, "compressed RLE"),
}


@pytest.mark.parametrize("case", list(RESULT_BREAKS))
def test_broken_results_are_a_named_error(tmp_path, case):
    iou_type, fields, what = RESULT_BREAKS[case]
    results = _good_results()
    results.append({**results[1], **fields})
    res_path = _write_json(tmp_path / "res.json", results)
    message = _errors(_eval_gt(), res_path, (iou_type,))
    assert f"{res_path}: results[2] (image 2): " in message and what in message


def test_unknown_result_categories_are_named():
    results = _good_results()
    results += [{**results[0], "category_id": 42}, {**results[1], "category_id": 17}, {**results[1], "category_id": 42}]
    message = _errors(_eval_gt(), results, ("bbox",))
    assert "category ids that the ground truth does not have: [17, 42] (first at results[2])" in message


def test_unknown_result_images_are_named():
    message = _errors(_eval_gt(), [{**_good_results()[0], "image_id": 77}], ("bbox",))
    assert "image ids that the ground truth does not have (first: [77]" in message


def test_empty_results_need_allow_empty(tmp_path):
    res_path = _write_json(tmp_path / "res.json", [])
    message = _errors(_eval_gt(), res_path, ("bbox",))
    assert f"{res_path}: no detections to evaluate" in message
    for engine in ENGINES:
        m = evaluate_coco(_eval_gt(), [], ("bbox",), engine=engine, allow_empty=True)["bbox"]
        assert m["AP"] == 0.0 and m["per_category"]["thing"] == 0.0 and math.isnan(m["per_category"]["other"])


def test_only_the_evaluated_images_ground_truth_is_judged():
    gt = _eval_gt(BROKEN["NaN box"][1])  # on image 2
    for engine in ENGINES:
        m = evaluate_coco(gt, _good_results()[:1], ("bbox",), engine=engine, image_ids=[1])["bbox"]
        assert m["AP"] == pytest.approx(100.0)


def test_evaluating_a_dataset_names_its_json_and_allows_no_detections(broken_dir, escaping_dir, caplog):
    broken = CocoDataset(broken_dir["json"], broken_dir["images"], with_masks=True)
    nothing = {"image_id": 100, "boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    first_broken = r"annotations\[1\] \(id 2, image 100\): RLE counts string is malformed"
    with pytest.raises(ValueError, match=rf"{broken_dir['json']}: {first_broken}"):
        evaluate_predictions(broken, [nothing], iou_types=("bbox", "segm"))
    good = CocoDataset(escaping_dir["json"], escaping_dir["images"])
    with caplog.at_level(logging.WARNING):
        m = evaluate_predictions(good, [{**nothing, "image_id": 1}])["bbox"]
    assert m["AP"] == 0.0 and any("detected nothing on the 2 test images" in r.getMessage() for r in caplog.records)


def test_ground_truth_without_annotations_is_an_error(tmp_path):
    gt = _eval_gt()
    del gt["annotations"]
    gt_path = _write_json(tmp_path / "gt.json", gt)
    message = _errors(gt_path, _good_results(), ("bbox",))
    assert f"{gt_path}: annotations: missing" in message
    assert "has no 'annotations' list" in _errors(gt, _good_results(), ("bbox",))


# -------------------------------------------------------------------------------------- ILSVRC XML


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_det_xml_non_finite_coordinate_names_file_and_line(tmp_path, value):
    path = tmp_path / "d.xml"
    text = det_xml_text("d", 100, 100, [(DET_WNIDS[0], 1, 2, 30, 40)])
    path.write_text(text.replace("<ymax>40</ymax>", f"<ymax>{value}</ymax>"))
    line = text.splitlines().index("\t\t\t<ymax>40</ymax>") + 1
    with pytest.raises(DetFormatError, match=rf"d\.xml:{line}: <ymax> is '{value}', not a finite number"):
        read_annotation(path)


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_clsloc_xml_and_csv_non_finite_coordinates_are_errors(tmp_path, value):
    wnids, names, order = make_classes(3)
    synsets = read_synsets(write_map_clsloc(tmp_path / "map_clsloc.txt", order, dict(zip(wnids, names))))
    img = {
        "name": "ILSVRC2012_val_00000001",
        "labels": [order[0]],
        "objects": [(order[0], (5, 6, 40, 30))],
        "width": 64,
        "height": 48,
    }
    text = loc_xml_text(img)
    path = tmp_path / "x.xml"
    path.write_text(text.replace("<xmin>5</xmin>", f"<xmin>{value}</xmin>"))
    line = text.splitlines().index("\t\t\t<xmin>5</xmin>") + 1
    with pytest.raises(LocFormatError, match=rf"x\.xml:{line}: <xmin> is '{value}', not a finite number"):
        read_loc_xml(path, synsets)
    csv_path = write_kaggle_solution(
        tmp_path / "LOC_val_solution.csv", [{**img, "objects": [(order[0], (value, 6, 40, 30))]}]
    )
    with pytest.raises(LocFormatError, match=rf"LOC_val_solution\.csv:2: coordinate '{value}' is not a finite"):
        read_kaggle_solution(csv_path, synsets)


BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [\n<!ENTITY a "ha">\n'
    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">\n<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">\n]>\n'
    "<annotation><filename>&c;</filename></annotation>\n"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/passwd">]>\n'
    "<annotation><filename>&secret;</filename></annotation>\n"
)


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_ilsvrc_xml_with_entities_is_refused_by_both_tasks(tmp_path, text):
    wnids, names, order = make_classes(3)
    synsets = read_synsets(write_map_clsloc(tmp_path / "map_clsloc.txt", order, dict(zip(wnids, names))))
    path = tmp_path / "e.xml"
    path.write_text(text)
    with pytest.raises(LocFormatError, match=r"e\.xml:2: DOCTYPE/entity declarations are not allowed"):
        read_loc_xml(path, synsets)
    with pytest.raises(DetFormatError, match=r"e\.xml:2: DOCTYPE/entity declarations are not allowed"):
        read_annotation(path)
