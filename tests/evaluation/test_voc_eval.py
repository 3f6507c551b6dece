"""PASCAL VOC evaluation: the devkit's rules on hand-computed cases, the results files, and equality with a
straightforward loop re-implementation of VOCevaldet.m / VOCap.m on generated devkit-format files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from restransfer.benchmark.voc_eval import synthetic_voc_eval_set
from restransfer.data.voc import VocFormatError
from restransfer.evaluation.voc import (
    ELEVEN_POINTS,
    IOU_THRESHOLDS,
    best_overlaps,
    evaluate_voc,
    format_table,
    matlab_colon,
    metrics_dict,
    voc_ap,
)
from restransfer.evaluation.voc_io import (
    VocDetections,
    VocGroundTruth,
    load_ground_truth,
    predictions_to_detections,
    read_results,
    results_file_name,
    write_results,
)

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("a", "b", "c")


def make_gt(objects, num_images, classes=CLASSES):
    """objects: (image, label, xmin, ymin, xmax, ymax, difficult) in image/XML order."""
    arr = np.asarray(objects, dtype=np.float64).reshape(-1, 7)
    return VocGroundTruth(
        tuple(f"{i:06d}" for i in range(1, num_images + 1)),
        arr[:, 0].astype(np.int64),
        arr[:, 1].astype(np.int64),
        arr[:, 2:6],
        arr[:, 6].astype(bool),
        tuple(classes),
        image_ids=np.arange(1, num_images + 1),
    )


def make_dets(rows):
    """rows: (image, label, score, xmin, ymin, xmax, ymax) in file order."""
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    return VocDetections(arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], arr[:, 3:7])


# ------------------------------------------------------------------------------------ the devkit's rules


def test_match_to_a_difficult_object_is_ignored():
    gt = make_gt([(0, 1, 1, 1, 10, 10, 1), (0, 1, 21, 21, 30, 30, 0)], 1)
    # the first detection hits the difficult object twice over (twice: both ignored, never a duplicate)
    dets = make_dets([(0, 1, 0.9, 1, 1, 10, 10), (0, 1, 0.85, 1, 1, 10, 10), (0, 1, 0.8, 21, 21, 30, 30)])
    res = evaluate_voc(gt, dets)
    assert res.tp.tolist() == [False, False, True] and res.fp.tolist() == [False, False, False]
    assert res.num_pos[0] == 1 and res.ap[0] == 1.0
    # precision is 0/0 at the ignored detections; MATLAB's max passes over NaN, so every 11 points see 1.0
    assert evaluate_voc(gt, dets, "voc2007").ap[0] == pytest.approx(1.0, abs=1e-15)


def test_best_object_is_difficult_so_the_detection_is_ignored_even_with_a_free_object_above_half():
    # IoU 1.0 with the difficult object, 0.667 with the normal one: the devkit takes the best (difficult)
    gt = make_gt([(0, 1, 1, 1, 10, 10, 1), (0, 1, 3, 1, 12, 10, 0)], 1)
    res = evaluate_voc(gt, make_dets([(0, 1, 0.9, 1, 1, 10, 10)]))
    assert not res.tp[0] and not res.fp[0] and res.ap[0] == 0.0


def test_duplicate_detection_is_a_false_positive_even_when_another_object_overlaps_it():
    # object A = (1,1,10,10), B = (3,1,12,10); both detections are A exactly (IoU 0.667 with B): the second
    # takes A again, its best, and is a duplicate; B stays unmatched (ILSVRC's rule would give it B)
    gt = make_gt([(0, 1, 1, 1, 10, 10, 0), (0, 1, 3, 1, 12, 10, 0)], 1)
    res = evaluate_voc(gt, make_dets([(0, 1, 0.9, 1, 1, 10, 10), (0, 1, 0.8, 1, 1, 10, 10)]))
    assert res.tp.tolist() == [True, False] and res.fp.tolist() == [False, True]
    # rec = [.5, .5], prec = [1, .5]: area AP = 0.5
    assert res.ap[0] == 0.5


def test_equal_overlaps_go_to_the_first_object_in_xml_order():
    gt = make_gt([(0, 1, 1, 1, 10, 10, 0), (0, 1, 3, 1, 12, 10, 0)], 1)
    dets = make_dets([(0, 1, 0.9, 2, 1, 11, 10)])  # IoU 90/110 with both
    ovmax, jmax = best_overlaps(gt, dets)
    assert ovmax[0] == pytest.approx(90 / 110) and jmax[0] == 0


def test_iou_of_exactly_one_half_matches_and_just_below_does_not():
    gt = make_gt([(0, 1, 1, 1, 10, 10, 0)], 1)  # 10 x 10 = 100 pixels
    exact = make_dets([(0, 1, 0.9, 1, 1, 10, 20)])  # 10 x 20 = 200: intersection 100, union 200
    below = make_dets([(0, 1, 0.9, 1, 1, 10, 20 + 1e-9)])
    assert best_overlaps(gt, exact)[0][0] == 0.5  # exactly, in floating point
    assert evaluate_voc(gt, exact).tp[0]  # the devkit's ovmax >= 0.5 (voc_eval.py's ovmax > 0.5 would drop it)
    assert best_overlaps(gt, below)[0][0] < 0.5
    assert evaluate_voc(gt, below).fp[0]


def test_eleven_point_and_area_ap_on_a_known_curve():
    # four objects in four images; ranked detections T F T T F:
    # rec = .25 .25 .5 .75 .75, prec = 1 .5 .667 .75 .6
    gt = make_gt([(i, 1, 1, 1, 10, 10, 0) for i in range(4)], 4)
    hit, miss = (1, 1, 10, 10), (50, 50, 60, 60)
    dets = make_dets([(0, 1, 0.9, *hit), (0, 1, 0.8, *miss), (1, 1, 0.7, *hit), (2, 1, 0.6, *hit), (3, 1, 0.5, *miss)])
    # area: .25 * 1 + .25 * .75 + .25 * .75 + .25 * 0
    assert evaluate_voc(gt, dets, "area").ap[0] == pytest.approx(0.625, abs=1e-15)
    # 11-point: t = 0, .1, .2 -> 1; t = .3 .. .7 -> .75; t = .8, .9, 1 -> 0
    assert evaluate_voc(gt, dets, "voc2007").ap[0] == pytest.approx(6.75 / 11, abs=1e-15)


def test_eleven_point_thresholds_are_matlabs_colon_not_numpys_arange():
    assert ELEVEN_POINTS.tolist() == [0.0, 0.1, 0.2, 3 * 0.1, 0.4, 0.5, 1 - 0.4, 1 - 0.3, 1 - 0.2, 1 - 0.1, 1.0]
    assert ELEVEN_POINTS[7] == 0.7 and np.arange(0.0, 1.1, 0.1)[7] > 0.7
    # recall reaches exactly 7/10 at precision 1: counted at t = 0.7 by the devkit (8 of 11 points)
    rec = np.arange(1, 8) / 10
    assert voc_ap(rec, np.ones(7), "voc2007") == pytest.approx(8 / 11, abs=1e-15)
    arange_ap = sum(1.0 for t in np.arange(0.0, 1.1, 0.1) if (rec >= t).any()) / 11
    assert arange_ap == pytest.approx(7 / 11)  # what voc_eval.py's use_07_metric computes
    assert matlab_colon(0.0, 0.05, 1.0).tolist()[:3] == [0.0, 0.05, 0.1] and matlab_colon(0.0, 0.05, 1.0)[-1] == 1.0


def test_image_without_objects_and_score_ties_in_file_order():
    gt = make_gt([(0, 1, 1, 1, 10, 10, 0)], 2)  # image 1 has no objects
    fp_first = make_dets([(1, 1, 0.5, 1, 1, 10, 10), (0, 1, 0.5, 1, 1, 10, 10)])
    tp_first = make_dets([(0, 1, 0.5, 1, 1, 10, 10), (1, 1, 0.5, 1, 1, 10, 10)])
    r1 = evaluate_voc(gt, fp_first)  # equal scores keep file order: F T -> rec 0 1, prec 0 .5
    assert r1.fp.tolist() == [True, False] and r1.ap[0] == 0.5
    assert evaluate_voc(gt, fp_first, "voc2007").ap[0] == pytest.approx(0.5)
    assert evaluate_voc(gt, tp_first).ap[0] == 1.0


def test_class_without_detections_is_zero_and_class_without_positives_is_left_out():
    # a: found; b: two objects (one difficult), no detections; c: only a difficult object, one detection
    gt = make_gt(
        [(0, 1, 1, 1, 10, 10, 0), (0, 2, 20, 20, 30, 30, 0), (0, 2, 40, 40, 50, 50, 1), (1, 3, 1, 1, 10, 10, 1)], 2
    )
    dets = make_dets([(0, 1, 0.9, 1, 1, 10, 10), (1, 3, 0.9, 60, 60, 70, 70)])
    res = evaluate_voc(gt, dets)
    assert res.num_pos.tolist() == [1, 1, 0]
    assert res.ap[0] == 1.0 and res.ap[1] == 0.0 and np.isnan(res.ap[2])
    m = metrics_dict(res, CLASSES)
    assert m["mAP"] == 50.0 and m["AP"] == {"a": 100.0, "b": 0.0, "c": None}
    assert m["classes_without_positives"] == ["c"] and m["metric"] == "area"
    assert json.loads(json.dumps(m, allow_nan=False))["AP"]["c"] is None
    assert "left out of the means: c" in format_table(m)


def test_only_ignored_detections_give_ap_zero():
    # every detection hits a difficult object: precision 0/0 everywhere (the devkit's 11-point loop says NaN)
    gt = make_gt([(0, 1, 1, 1, 10, 10, 1), (0, 1, 30, 30, 40, 40, 0)], 1)
    dets = make_dets([(0, 1, 0.9, 1, 1, 10, 10)])
    for metric in ("voc2007", "area"):
        assert evaluate_voc(gt, dets, metric).ap[0] == 0.0


def test_ap_over_iou_thresholds():
    gt = make_gt([(0, 1, 1, 1, 10, 10, 0)], 1)
    res = evaluate_voc(gt, make_dets([(0, 1, 0.9, 1, 1, 10, 13)]))  # IoU 100 / 130 = 0.769
    assert res.ap_by_threshold[:, 0].tolist() == [1.0] * 6 + [0.0] * 4
    assert res.ap_50_95[0] == pytest.approx(0.6) and res.mean_ap_50_95 == pytest.approx(0.6)
    assert np.allclose(IOU_THRESHOLDS, np.arange(10) * 0.05 + 0.5)


def test_bad_detections_are_refused():
    gt = make_gt([(0, 1, 1, 1, 10, 10, 0)], 1)
    with pytest.raises(ValueError, match="detection 1 .* label outside 1..3"):
        evaluate_voc(gt, make_dets([(0, 1, 0.9, 1, 1, 10, 10), (0, 4, 0.9, 1, 1, 10, 10)]))
    with pytest.raises(ValueError, match="not a finite number"):
        evaluate_voc(gt, make_dets([(0, 1, np.nan, 1, 1, 10, 10)]))


# ----------------------------------------------------------------------------------------- predictions


def test_predictions_convert_to_voc_pixels_in_image_set_order():
    gt = make_gt([(0, 1, 1, 1, 10, 10, 0)], 2)
    preds = [
        {
            "image_id": 2,
            "boxes": np.array([[0, 0, 10, 10]], np.float32),
            "scores": np.array([0.5]),
            "labels": np.array([1]),
        },
        {
            "image_id": 1,
            "boxes": np.array([[0, 0, 10, 10], [4.5, 0, 9, 9]], np.float32),
            "scores": np.array([0.9, 0.3]),
            "labels": np.array([1, 2]),
        },
    ]
    dets = predictions_to_detections(preds, gt)
    assert dets.image.tolist() == [0, 0, 1]
    assert dets.boxes.tolist() == [
        [1, 1, 10, 10],
        [5.5, 1, 9, 9],
        [1, 1, 10, 10],
    ]  # internal (0,0,10,10) = VOC (1,1,10,10)
    assert evaluate_voc(gt, dets).tp.tolist() == [True, False, False]


# ----------------------------------------------------------------------------------------- results files


def test_results_files_round_trip(tmp_path):
    gt = make_gt([(0, 1, 1, 1, 10, 10, 0)], 3)
    dets = make_dets([(2, 1, 0.5, 1.25, 2, 10, 10), (0, 3, 1 / 3, 1, 1, 7.1, 9), (1, 1, 0.5, 3, 3, 8, 8)])
    dets.boxes[0, 2] = np.float32(10.1)  # a float32 value, as a model's boxes are
    paths = write_results(tmp_path, gt, dets)
    assert (
        [p.name for p in paths]
        == [results_file_name(c) for c in CLASSES]
        == ["comp4_det_test_a.txt", "comp4_det_test_b.txt", "comp4_det_test_c.txt"]
    )
    assert (tmp_path / "comp4_det_test_b.txt").read_text() == ""
    assert (tmp_path / "comp4_det_test_a.txt").read_text().splitlines()[1] == "000002 0.5 3.0 3.0 8.0 8.0"
    back = read_results(tmp_path, gt)
    order = [0, 2, 1]  # read class by class, each file in line order
    for field in ("image", "labels", "scores", "boxes"):
        assert np.array_equal(getattr(back, field), getattr(dets, field)[order]), field
    (tmp_path / "comp4_det_test_c.txt").unlink()  # a class without a file has no detections
    assert read_results(tmp_path, gt).labels.tolist() == [1, 1]


@pytest.mark.parametrize(
    "line, message",
    [
        ("000001 0.9 1 1 10", r"comp4_det_test_a.txt:2: expected .* got 5 fields"),
        ("000009 0.9 1 1 10 10", r"comp4_det_test_a.txt:2: unrecognized image '000009'"),
        ("000001 0.9 1 one 10 10", r"comp4_det_test_a.txt:2: 'one' is not a number"),
        ("000001 nan 1 1 10 10", r"comp4_det_test_a.txt:2: confidence and box must be finite"),
    ],
)
def test_malformed_results_files_name_file_and_line(tmp_path, line, message):
    gt = make_gt([(0, 1, 1, 1, 10, 10, 0)], 1)
    (tmp_path / "comp4_det_test_a.txt").write_text(f"000001 0.5 1 1 10 10\n{line}\n")
    with pytest.raises(VocFormatError, match=message):
        read_results(tmp_path, gt)


def test_results_folder_without_files_or_with_two_runs(tmp_path):
    gt = make_gt([(0, 1, 1, 1, 10, 10, 0)], 1)
    with pytest.raises(VocFormatError, match="no results files"):
        read_results(tmp_path, gt)
    (tmp_path / "comp4_det_test_a.txt").write_text("")
    (tmp_path / "comp3_det_test_b.txt").write_text("")
    with pytest.raises(VocFormatError, match="several runs"):
        read_results(tmp_path, gt)


# ------------------------------------------------------------------ against a loop re-implementation


def _devkit_reference(gt_objects, dets_in_file_order, num_classes, metric, minoverlap):
    """VOCevaldet.m (and VOCap.m) restated with loops over Python lists, class by class.

    gt_objects: per image, a list of (label, [x1, y1, x2, y2], difficult) in XML order;
    dets_in_file_order: per class (1-based), a list of (image, confidence, [x1, y1, x2, y2]) in file order.
    Returns a list of APs (None for classes without positives).
    """
    aps = []
    for cls in range(1, num_classes + 1):
        gt = [
            {"BB": [b for c, b, _ in objs if c == cls], "diff": [d for c, _, d in objs if c == cls]}
            for objs in gt_objects
        ]
        for g in gt:
            g["det"] = [False] * len(g["BB"])
        npos = sum(sum(1 for d in g["diff"] if not d) for g in gt)
        dets = dets_in_file_order.get(cls, [])
        si = sorted(range(len(dets)), key=lambda d: -dets[d][1])  # [sc,si]=sort(-confidence): stable
        nd = len(dets)
        tp, fp = [0] * nd, [0] * nd
        for d in range(nd):
            i, _, bb = dets[si[d]]
            ovmax, jmax = -np.inf, None
            for j, bbgt in enumerate(gt[i]["BB"]):
                bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
                iw = bi[2] - bi[0] + 1
                ih = bi[3] - bi[1] + 1
                if iw > 0 and ih > 0:
                    ua = (
                        (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                        + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1)
                        - iw * ih
                    )
                    ov = iw * ih / ua
                    if ov > ovmax:
                        ovmax, jmax = ov, j
            if ovmax >= minoverlap:
                if not gt[i]["diff"][jmax]:
                    if not gt[i]["det"][jmax]:
                        tp[d] = 1
                        gt[i]["det"][jmax] = True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        if npos == 0:
            aps.append(None)
            continue
        ctp = np.cumsum(tp).tolist()
        cfp = np.cumsum(fp).tolist()
        rec = [t / npos for t in ctp]
        prec = [t / (f + t) if f + t else float("nan") for t, f in zip(ctp, cfp)]
        if metric == "voc2007":
            ap = 0.0
            for t in [0.0, 0.1, 0.2, 3 * 0.1, 0.4, 0.5, 1 - 0.4, 1 - 0.3, 1 - 0.2, 1 - 0.1, 1.0]:  # MATLAB's 0:0.1:1
                p = [q for q, r in zip(prec, rec) if r >= t and not np.isnan(q)]
                ap = ap + (max(p) if p else 0.0) / 11
        else:
            mrec = [0.0] + rec + [1.0]
            mpre = [0.0] + prec + [0.0]
            for i in range(len(mpre) - 2, -1, -1):
                mpre[i] = mpre[i + 1] if np.isnan(mpre[i]) else max(mpre[i], mpre[i + 1])
            ap = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
        aps.append(ap)
    return aps


def _write_xml(path: Path, name: str, objects, classes):
    objs = "".join(
        f"<object><name>{classes[c - 1]}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]:g}</xmin>"
        f"<ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>\n"
        for c, b, d in objects
    )
    path.write_text(
        f"<annotation>\n<filename>{name}.jpg</filename>\n<size><width>500</width><height>500</height>"
        f"<depth>3</depth></size>\n{objs}</annotation>\n"
    )


@pytest.mark.parametrize("metric", ["voc2007", "area"])
def test_equals_a_loop_reimplementation_of_the_devkit_on_devkit_files(tmp_path, metric):
    classes = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus")
    gt, dets = synthetic_voc_eval_set(120, 40, classes=classes, difficult_fraction=0.2, seed=3)
    # integer boxes for a quarter of the detections (exact copies of objects and exact IoU ties), scores with
    # two decimals (many ties)
    rng = np.random.default_rng(0)
    exact = rng.random(len(dets)) < 0.25
    dets.boxes[exact] = np.round(dets.boxes[exact])
    dets.scores = np.round(dets.scores, 2)
    assert len(dets) == 4800 and gt.difficult.sum() > 20
    ann = tmp_path / "Annotations"
    ann.mkdir()
    gt_objects = [[] for _ in gt.image_names]
    for i, c, b, d in zip(gt.obj_image.tolist(), gt.labels.tolist(), gt.boxes.tolist(), gt.difficult.tolist()):
        gt_objects[i].append((c, b, d))
    for i, name in enumerate(gt.image_names):
        _write_xml(ann / f"{name}.xml", name, gt_objects[i], classes)
    (tmp_path / "test.txt").write_text("".join(f"{n}\n" for n in gt.image_names))
    results = tmp_path / "results"
    write_results(results, gt, dets)

    file_gt = load_ground_truth(ann, tmp_path / "test.txt", classes)
    file_dets = read_results(results, file_gt)
    res = evaluate_voc(file_gt, file_dets, metric)

    per_class = {}
    for i, c, s, b in zip(dets.image.tolist(), dets.labels.tolist(), dets.scores.tolist(), dets.boxes.tolist()):
        per_class.setdefault(c, []).append((i, s, b))
    for t_index, t in enumerate(IOU_THRESHOLDS.tolist()):
        ref = _devkit_reference(gt_objects, per_class, len(classes), metric, t)
        got = res.ap_by_threshold[t_index]
        for c in range(len(classes)):
            assert ref[c] is not None
            assert abs(got[c] - ref[c]) <= 1e-12, (t, classes[c], got[c], ref[c])
    assert 0.05 < res.mean_ap < 0.95 and res.tp.sum() > 100 and (~res.tp & ~res.fp).sum() > 10


# ------------------------------------------------------------------------------------------------ tool


def test_eval_voc_tool_on_results_files(tmp_path):
    gt = make_gt(
        [(0, 1, 1, 1, 10, 10, 0), (1, 1, 1, 1, 10, 10, 0), (1, 2, 5, 5, 20, 20, 1)], 2, classes=("cat", "dog", "cow")
    )
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    objects = [[(1, [1, 1, 10, 10], False)], [(1, [1, 1, 10, 10], False), (2, [5, 5, 20, 20], True)]]
    for name, objs in zip(gt.image_names, objects):
        _write_xml(voc / "Annotations" / f"{name}.xml", name, objs, gt.class_names)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    write_results(tmp_path / "res", gt, make_dets([(0, 1, 0.9, 1, 1, 10, 10), (1, 1, 0.8, 30, 30, 40, 40)]))
    out = tmp_path / "m" / "metrics.json"
    cmd = [
        sys.executable,
        str(REPO / "tools" / "eval_voc.py"),
        "--results",
        str(tmp_path / "res"),
        "--annotations",
        str(voc / "Annotations"),
        "--image-set",
        str(voc / "ImageSets" / "Main" / "test.txt"),
        "--classes",
        "cat",
        "dog",
        "cow",
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(out.read_text())
    # cat: T then F with 2 positives -> rec .5 .5, prec 1 .5; 11-point (VOC2007 folder): t <= .5 -> 1: 6/11
    assert m["metric"] == "voc2007" and m["AP"]["cat"] == pytest.approx(600 / 11)
    assert m["AP"]["dog"] is None and m["AP"]["cow"] is None and m["classes_without_positives"] == ["dog", "cow"]
    assert m["mAP"] == pytest.approx(600 / 11)
    assert (out.parent / "report.html").is_file()
    bad = subprocess.run(cmd[:3] + [str(tmp_path / "nothing")] + cmd[4:], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "results folder not found" in bad.stderr


# ------------------------------------------------------------------------------------------- training


def test_training_on_the_generated_voc_set_evaluates_with_the_devkit_protocol(tmp_path, tiny_overrides):
    """The demo config, shrunk: the generated VOC-layout set read through the VOC reader, a periodic evaluation
    (iteration 1) and the final one (metrics.json, report.html, the devkit's results files), both the VOC
    evaluator's (test.evaluator: auto for format voc)."""
    from restransfer.config import load_config
    from restransfer.data.voc_shapes import generate_voc_shapes
    from restransfer.engine.checkpoint import Checkpointer
    from restransfer.engine.trainer import train

    root = tmp_path / "VOCdevkit"
    generate_voc_shapes(root, num_trainval=8, num_test=4, image_size=64, seed=2)
    entry = f"format: voc, root: {root}, year: 2007, classes: [circle, triangle, square]"
    out = tmp_path / "run"
    cfg = load_config(
        REPO / "configs" / "demo_voc_shapes.yaml",
        tiny_overrides(
            "training",
            f"data.train=[{{{entry}, split: trainval}}]",
            f"data.test={{{entry}, split: test}}",
            f"output_dir={out}",
            "test.eval_period=1",
            "model.roi_heads.score_thresh=0.0",
            "solver.checkpoint_period=1",
        ),
    )
    train(cfg)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "voc/mAP" in r]
    assert [r["iteration"] for r in evaluations] == [1] and "voc/mAP_50_95" in evaluations[0]
    assert not any("bbox/AP" in r for r in records)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "voc2007" and set(metrics["AP"]) == {"circle", "triangle", "square"}
    assert 0 <= metrics["mAP"] <= 100 and 0 <= metrics["mAP_50_95"] <= metrics["mAP"] + 1e-9
    assert sum(metrics["num_positives"].values()) > 0
    assert (out / "report.html").is_file()
    lines = (out / "results" / "VOC2007" / "Main" / "comp4_det_test_circle.txt").read_text().splitlines()
    assert all(len(line.split()) == 6 and line.split()[0] in {"000009", "000010", "000011", "000012"} for line in lines)
    assert Checkpointer.load(out / "model_best.pth")["best"] == pytest.approx(evaluations[0]["voc/mAP"])
    # the results files the evaluation wrote give the same numbers through the devkit-files path
    voc = root / "VOC2007"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "eval_voc.py"),
            "--results",
            str(out / "results" / "VOC2007" / "Main"),
            "--annotations",
            str(voc / "Annotations"),
            "--image-set",
            str(voc / "ImageSets" / "Main" / "test.txt"),
            "--classes",
            "circle",
            "triangle",
            "square",
            "--output",
            str(tmp_path / "files" / "metrics.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "files" / "metrics.json").read_text()) == metrics
