"""The ImageNet evaluation benchmarks (restransfer.benchmark.imagenet_eval): the generated sets' statistics,
the figures the benchmark functions report, and the two tools that print them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from restransfer.benchmark import (
    LOC_EVALUATE_STEP,
    run_det_eval_benchmark,
    run_loc_eval_benchmark,
    synthetic_det_eval_set,
    synthetic_loc_eval_set,
)
from restransfer.boxes import devkit_to_xyxy
from restransfer.evaluation.imagenet_det import coco_box_metrics, evaluate_detections
from restransfer.evaluation.imagenet_loc import evaluate_localization, pack_ground_truth

REPO = Path(__file__).resolve().parents[2]
IMAGES, CLASSES, DETECTIONS = 200, 20, 5000


def _tool(name, *args):
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / name), *map(str, args)], cwd=REPO, capture_output=True, text=True
    )


# ------------------------------------------------------------------------------------ ImageNet-DET


def test_det_set_has_the_requested_sizes_and_valid_devkit_boxes():
    gt, sub = synthetic_det_eval_set(IMAGES, CLASSES, DETECTIONS, seed=1)
    assert np.array_equal(gt.image_ids, np.arange(1, IMAGES + 1)) and gt.num_classes == CLASSES
    assert len(set(gt.wnids)) == CLASSES
    # objects grouped by image in list order, every image has at least one
    assert np.all(np.diff(gt.obj_image_ids) >= 0) and set(gt.obj_image_ids.tolist()) == set(range(1, IMAGES + 1))
    assert 2.3 < len(gt.labels) / IMAGES < 4.0  # 1 + Poisson(1.8), plus the crowded images
    assert gt.labels.min() >= 1 and gt.labels.max() <= CLASSES
    b = gt.boxes
    assert np.array_equal(b, b.round()) and b.min() >= 0 and b.max() <= 499
    assert np.all(b[:, 2] - b[:, 0] + 1 >= 8) and np.all(b[:, 3] - b[:, 1] + 1 >= 8)

    assert len(sub) == DETECTIONS and sub.boxes.shape == (DETECTIONS, 4)
    assert sub.image_ids.min() >= 1 and sub.image_ids.max() <= IMAGES
    assert sub.labels.min() >= 1 and sub.labels.max() <= CLASSES
    assert sub.scores.min() >= 0 and sub.scores.max() <= 1
    assert np.array_equal(sub.scores, sub.scores.round(3)) and len(np.unique(sub.scores)) < DETECTIONS  # ties
    # a third of the detections are jittered copies of objects (~2.7 per object here), so most objects are found
    hits = evaluate_detections(gt, sub).tp.sum()
    assert 0.6 * len(gt.labels) < hits <= len(gt.labels)


def test_det_set_is_a_function_of_the_seed():
    a, b, c = (synthetic_det_eval_set(IMAGES, CLASSES, DETECTIONS, seed=s) for s in (4, 4, 5))
    assert np.array_equal(a[1].boxes, b[1].boxes) and np.array_equal(a[0].boxes, b[0].boxes)
    assert not np.array_equal(a[1].scores, c[1].scores)
    # a Generator is used as is: the same stream as the int seed it was made from
    same = synthetic_det_eval_set(IMAGES, CLASSES, DETECTIONS, seed=np.random.default_rng(4))
    assert np.array_equal(same[1].boxes, a[1].boxes)


@pytest.mark.parametrize("coco", [False, True])
def test_det_benchmark_reports_the_evaluation_of_its_set(coco):
    out = run_det_eval_benchmark(IMAGES, CLASSES, DETECTIONS, seed=2, coco=coco)
    gt, sub = synthetic_det_eval_set(IMAGES, CLASSES, DETECTIONS, seed=2)
    result = evaluate_detections(gt, sub)
    assert (out.num_images, out.num_classes, out.num_detections) == (IMAGES, CLASSES, DETECTIONS)
    assert out.num_objects == len(gt.labels)
    # the file round trip is exact, so the figures are those of the in-memory set
    assert out.mean_ap == result.mean_ap and 0 < out.mean_ap < 1
    assert out.true_positives == int(result.tp.sum())
    steps = ["generate", "write submission file", "read submission file", "devkit evaluation"]
    assert list(out.seconds) == steps + (["COCO protocol"] if coco else [])
    assert all(s >= 0 for s in out.seconds.values())
    if coco:
        assert out.coco == coco_box_metrics(gt, sub)
    else:
        assert out.coco is None


def test_det_tool_prints_the_benchmark_figures():
    """Runs the tool as a user does; its mAP line must carry the package's figure."""
    proc = _tool(
        "benchmark_imagenet_det_eval.py",
        "--images",
        IMAGES,
        "--classes",
        CLASSES,
        "--detections",
        DETECTIONS,
        "--seed",
        2,
        "--coco",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    out = run_det_eval_benchmark(IMAGES, CLASSES, DETECTIONS, seed=2)
    assert lines[0].startswith(
        f"generated {out.num_objects} objects in {IMAGES} images, {DETECTIONS} detections, {CLASSES} classes ("
    )
    assert [line[:26].strip() for line in lines[1:]] == [
        "write submission file",
        "read submission file",
        "devkit evaluation",
        "read + evaluate",
        "COCO protocol",
    ]
    assert f"mAP@.5 {out.mean_ap * 100:.2f}  ({out.true_positives} true positives)" in lines[3]
    assert " AP " in lines[5] and " AP50 " in lines[5]


# ------------------------------------------------------------------------------------ CLS-LOC


def test_loc_set_has_the_requested_sizes_and_valid_devkit_boxes():
    synsets, images, guesses = synthetic_loc_eval_set(IMAGES, CLASSES, seed=1)
    assert len(synsets) == CLASSES and len(set(synsets.wnids)) == CLASSES
    assert len(images) == IMAGES and len({im.name for im in images}) == IMAGES
    assert images[0].name == "ILSVRC2012_val_00000001" and images[0].file_name == "val/ILSVRC2012_val_00000001.JPEG"
    for im in images:
        assert len(im.labels) == 1 and im.labels[0] in synsets
        assert 1 <= len(im.box_wnids) <= 3 and set(im.box_wnids) == set(im.labels)
        assert im.boxes.shape == (len(im.box_wnids), 4) and np.array_equal(im.boxes, im.boxes.round())
        w, h = im.boxes[:, 2] - im.boxes[:, 0] + 1, im.boxes[:, 3] - im.boxes[:, 1] + 1
        assert np.all((w >= 11) & (w <= 100) & (h >= 11) & (h <= 100)) and im.boxes.min() >= 0
        assert 200 <= im.width < 500 and 200 <= im.height < 500
        assert im.boxes[:, 2].max() < im.width and im.boxes[:, 3].max() < im.height

    assert np.array_equal(guesses.image_ids, np.arange(1, IMAGES + 1))
    assert guesses.wnids.shape == (IMAGES, 5) and guesses.boxes.shape == (IMAGES, 5, 4)
    assert set(guesses.wnids.ravel()) <= set(synsets.wnids)
    # the image's class is among the guesses with probability 5/7 + 2/7 * 5/20 ~ 0.79
    found = np.mean([im.labels[0] in row for im, row in zip(images, guesses.wnids)])
    assert 0.65 < found < 0.9
    # boxes: the first ground-truth box, jittered by 8 px per coordinate
    jitter = guesses.boxes - devkit_to_xyxy(np.stack([im.boxes[0] for im in images]))[:, None]
    assert 5 < np.abs(jitter).mean() < 8 and np.abs(jitter).max() < 50


def test_loc_set_needs_five_classes():
    with pytest.raises(ValueError, match="at least 5 classes"):
        synthetic_loc_eval_set(10, 4)


def test_loc_benchmark_reports_the_evaluation_of_its_set():
    out = run_loc_eval_benchmark(IMAGES, CLASSES, 10, xml=True, seed=3)
    synsets, images, guesses = synthetic_loc_eval_set(IMAGES, CLASSES, seed=3)
    plain = evaluate_localization(pack_ground_truth(images, synsets), guesses.to_submission(synsets))
    m = out.metrics
    assert m["num_images"] == IMAGES and m["num_blacklisted"] == IMAGES // 50
    # the blacklist leaves the classification errors alone ...
    assert m["top1_cls_error"] == plain["top1_cls_error"] and m["top5_cls_error"] == plain["top5_cls_error"]
    # ... and moves a localization error by at most the share of the images it leaves out
    bound = 100 * (IMAGES // 50) / (IMAGES - IMAGES // 50)
    for key in ("top1_loc_error", "top5_loc_error"):
        assert abs(m[key] - plain[key]) <= bound
    assert 0 < m["top5_loc_error"] <= m["top1_loc_error"] <= 100
    assert list(out.seconds) == [
        "read Kaggle solution csv",
        "pack ground truth",
        "read devkit submission txt",
        "read Kaggle submission csv",
        LOC_EVALUATE_STEP,
        "read devkit XML folder",
        "localize: detector mode",
        "localize: classifier mode",
        "localize: gt_class mode",
    ]
    assert all(s >= 0 for s in out.seconds.values())
    assert out.as_json() == {**out.seconds, "machine": out.machine}
    assert "read devkit XML folder" not in run_loc_eval_benchmark(20, CLASSES, 2, seed=3).seconds


def test_loc_tool_prints_and_writes_the_timings(tmp_path):
    """Runs the tool as a user does: one line per step, the metrics after the evaluation, and the json."""
    out_json = tmp_path / "timings.json"
    proc = _tool(
        "benchmark_imagenet_loc_eval.py",
        "--images",
        IMAGES,
        "--classes",
        CLASSES,
        "--detections",
        10,
        "--seed",
        3,
        "--output",
        out_json,
    )
    assert proc.returncode == 0, proc.stderr
    timings = json.loads(out_json.read_text())
    steps = [k for k in timings if k != "machine"]
    assert "read devkit XML folder" not in steps and len(steps) == 8 and timings["machine"]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines if not line.startswith("  metrics:")] == [
        s.split(":")[0] for s in steps
    ]
    metrics_at = lines.index(next(line for line in lines if line.startswith("  metrics:")))
    assert lines[metrics_at - 1].strip().startswith(LOC_EVALUATE_STEP)
    m = run_loc_eval_benchmark(IMAGES, CLASSES, 10, seed=3).metrics
    assert f"'top5_loc_error': {round(m['top5_loc_error'], 3)}" in lines[metrics_at]
