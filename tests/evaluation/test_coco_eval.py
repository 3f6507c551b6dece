"""COCO evaluation: both engines equal pycocotools, result conversion, metric files, the command line."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from restransfer.benchmark.coco_eval import max_metric_difference, synthetic_eval_set
from restransfer.evaluation.coco import (
    ENGINES,
    evaluate_coco,
    evaluate_predictions,
    format_metrics_table,
    masks_to_rle,
    predictions_to_coco_results,
    write_metrics,
)

REPO = Path(__file__).resolve().parents[2]


def _reference(gt_dict, results, iou_type):
    """pycocotools run directly, with detectron2's per-category AP, as the ground truth for the engines."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_dict)
        gt.createIndex()
        res = copy.deepcopy(results)
        if iou_type == "segm":
            for r in res:
                r.pop("bbox", None)
        dt = gt.loadRes(res)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = {c["id"]: c["name"] for c in gt_dict["categories"]}
    per_cat = {}
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        p = p[p > -1]
        per_cat[names[cat]] = float(p.mean()) * 100 if p.size else math.nan
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    out = {k: (ev.stats[i] * 100 if ev.stats[i] >= 0 else math.nan) for i, k in enumerate(keys)}
    out["per_category"] = per_cat
    return out


@pytest.fixture(scope="module")
def eval_set():
    # more detections per image than maxDets=100, crowd regions, all area ranges, tied scores
    return synthetic_eval_set(num_images=40, dets_per_image=110, num_categories=5, with_masks=True, seed=3)


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_equal_pycocotools(eval_set, engine):
    gt, results = eval_set
    assert any(a["iscrowd"] for a in gt["annotations"])
    metrics = evaluate_coco(gt, results, ("bbox", "segm"), engine=engine)
    reference = {t: _reference(gt, results, t) for t in ("bbox", "segm")}
    assert max_metric_difference(metrics, reference) <= 1e-9
    assert 5 < metrics["bbox"]["AP"] < 95 and not math.isnan(metrics["bbox"]["APl"])
    assert math.isnan(metrics["bbox"]["per_category"]["class_4"])  # no ground truth for it


def test_inputs_are_not_modified(eval_set):
    gt, results = eval_set
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    evaluate_coco(gt, results, ("bbox", "segm"), engine="pycocotools")
    evaluate_coco(gt, results, ("bbox",), engine="faster_coco_eval")
    assert gt == gt_before and results == results_before


def _tiny_gt():
    return {
        "images": [
            {"id": 1, "width": 200, "height": 200, "file_name": "a.jpg"},
            {"id": 2, "width": 200, "height": 200, "file_name": "b.jpg"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [0, 0, 150, 150], "area": 22500, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [160, 160, 30, 30], "area": 900, "iscrowd": 1},
        ],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "unseen"}],
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_hand_checked_values_and_empty_results(engine):
    gt = _tiny_gt()
    # perfect small box, the large one missed; a detection on the crowd region is ignored
    results = [
        {"image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 2, "category_id": 5, "bbox": [161, 161, 28, 28], "score": 0.8},
    ]
    m = evaluate_coco(gt, results, engine=engine)["bbox"]
    assert m["APs"] == pytest.approx(100.0) and m["APl"] == pytest.approx(0.0)
    assert math.isnan(m["APm"])  # no medium ground truth: pycocotools' -1
    assert m["AP50"] == pytest.approx(50.495049504950494)  # recall 0.5: 51 of 101 points at precision 1
    assert math.isnan(m["per_category"]["unseen"])
    empty = evaluate_coco(gt, [], engine=engine, allow_empty=True)["bbox"]
    assert empty["AP"] == 0.0 and empty["APs"] == 0.0 and math.isnan(empty["APm"])
    assert empty["per_category"] == {"cat": 0.0, "unseen": pytest.approx(math.nan, nan_ok=True)}


@pytest.mark.parametrize("engine", ENGINES)
def test_mask_results_use_the_mask_area_not_the_box_area(engine):
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 10, 10],
                "area": 100,
                "iscrowd": 0,
                "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]],
            }
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    masks = np.zeros((2, 100, 100), np.uint8)
    masks[0, 10:20, 10:20] = 1
    masks[1, 60:70, 60:70] = 1
    rles = masks_to_rle(masks)
    # the false positive has a small mask but a huge box: as a small detection it halves APs
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10], "score": 0.5, "segmentation": rles[0]},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.9, "segmentation": rles[1]},
    ]
    assert evaluate_coco(gt, results, ("segm",), engine=engine)["segm"]["APs"] == pytest.approx(50.0)


def test_segm_without_mask_ground_truth_is_an_error():
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id 1, image 1\) has no segmentation"):
        evaluate_coco(_tiny_gt(), [], ("segm",))


def test_results_for_unknown_images_are_rejected():
    with pytest.raises(ValueError, match=r"image ids .*\[77\]"):
        evaluate_coco(_tiny_gt(), [{"image_id": 77, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1.0}])


def test_image_subset():
    results = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20], "score": 0.9}]
    assert evaluate_coco(_tiny_gt(), results, image_ids=[1])["bbox"]["AP"] == pytest.approx(100.0)


def test_masks_to_rle_thresholds_probabilities():
    probs = torch.zeros(2, 1, 6, 8)
    probs[0, 0, 1:3, 2:5] = 0.7
    probs[0, 0, 4, 4] = 0.5  # not above the threshold
    probs[1, 0, :, 7] = 0.99
    rles = masks_to_rle(probs)
    assert all(isinstance(r["counts"], str) and r["size"] == [6, 8] for r in rles)
    decoded = mask_util.decode(rles).transpose(2, 0, 1)
    np.testing.assert_array_equal(decoded, (probs[:, 0] > 0.5).numpy())
    assert masks_to_rle(np.zeros((0, 6, 8))) == []


def test_predictions_round_trip_through_pycocotools_loadres():
    gt = _tiny_gt()
    mask = np.zeros((2, 200, 200), np.float32)
    mask[0, 10:30, 12:40] = 1.0
    mask[1, 50:60, 50:55] = 0.9
    preds = [
        {
            "image_id": 1,
            "boxes": np.array([[12, 10, 40, 30], [50, 50, 55, 60]], np.float32),
            "scores": np.array([0.9, 0.3], np.float32),
            "labels": np.array([1, 2]),
            "masks": masks_to_rle(mask),
        },
        {
            "image_id": 2,
            "boxes": np.zeros((0, 4), np.float32),
            "scores": np.zeros(0, np.float32),
            "labels": np.zeros(0, np.int64),
            "masks": [],
        },
    ]
    results = predictions_to_coco_results(preds, {1: 5, 2: 9})
    assert [r["category_id"] for r in results] == [5, 9]
    assert results[0]["bbox"] == [12.0, 10.0, 28.0, 20.0]
    results = json.loads(json.dumps(results))  # json-ready
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(results))
    ann = dt.loadAnns(dt.getAnnIds(imgIds=[1], catIds=[5]))[0]
    np.testing.assert_array_equal(dt.annToMask(ann), mask[0] > 0.5)
    with pytest.raises(ValueError, match="label 3"):
        predictions_to_coco_results([{**preds[0], "labels": np.array([1, 3])}], {1: 5, 2: 9})


def test_write_metrics_is_strict_json_and_table_is_rounded(tmp_path):
    metrics = evaluate_coco(_tiny_gt(), [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20], "score": 0.9}])
    path = write_metrics(metrics, tmp_path / "out" / "metrics.json")
    loaded = json.loads(path.read_text())
    assert loaded["bbox"]["APm"] is None and loaded["bbox"]["AP"] == metrics["bbox"]["AP"]
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]
    table = format_metrics_table(metrics)
    assert "AP50" in table and "unseen" in table and f"{metrics['bbox']['AP']:.2f}" in table


def test_evaluate_predictions_writes_results_and_metrics(tmp_path):
    class Dataset:  # the attributes evaluate_predictions uses
        coco = COCO()
        label_to_cat_id = {1: 5, 2: 9}
        image_ids = [1, 2]

    with contextlib.redirect_stdout(io.StringIO()):
        Dataset.coco.dataset = _tiny_gt()
        Dataset.coco.createIndex()
    preds = [
        {
            "image_id": 2,
            "boxes": np.array([[0, 0, 150, 150]], np.float32),
            "scores": np.array([0.5], np.float32),
            "labels": np.array([1]),
        }
    ]
    m = evaluate_predictions(Dataset, preds, metrics_path=tmp_path / "m.json", results_path=tmp_path / "r.json")
    assert set(m) == {"bbox"} and m["bbox"]["APl"] == pytest.approx(100.0)
    assert json.loads((tmp_path / "r.json").read_text())[0]["category_id"] == 5
    assert json.loads((tmp_path / "m.json").read_text())["bbox"]["APl"] == pytest.approx(100.0)


def test_command_line_results_mode(tmp_path, eval_set):
    gt, results = eval_set
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = tmp_path / "metrics.json"
    proc = subprocess.run(
        [
            sys.executable,
            "tools/eval_coco.py",
            "--gt",
            str(tmp_path / "gt.json"),
            "--results",
            str(tmp_path / "res.json"),
            "--iou-type",
            "bbox",
            "segm",
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())
    assert written["segm"]["AP"] == pytest.approx(_reference(gt, results, "segm")["AP"], abs=1e-9)
    assert "per-category segm AP" in proc.stdout
    usage = subprocess.run([sys.executable, "tools/eval_coco.py"], cwd=REPO, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
