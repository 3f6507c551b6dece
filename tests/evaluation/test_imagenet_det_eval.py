"""ImageNet-DET evaluation: the devkit's rules one by one, file readers, and equality with a
straightforward loop implementation of eval_detection.m on random data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from helpers.imagenet_det_fixtures import WNIDS, write_synsets, write_val

from restransfer.data.imagenet_det import DetFormatError, read_synsets
from restransfer.evaluation.imagenet_det import (
    DetGroundTruth,
    DetSubmission,
    evaluate_detections,
    load_ground_truth,
    match_detections,
    metrics_dict,
    read_blacklist,
    read_submission,
    write_submission,
)

REPO = Path(__file__).resolve().parents[2]


def make_gt(objects, image_ids, k=3):
    """objects: list of (image_id, label, xmin, ymin, xmax, ymax) in image/XML order."""
    arr = np.asarray(objects, dtype=np.float64).reshape(-1, 6)
    return DetGroundTruth(
        image_ids=np.asarray(image_ids, dtype=np.int64),
        obj_image_ids=arr[:, 0].astype(np.int64),
        labels=arr[:, 1].astype(np.int64),
        boxes=arr[:, 2:6],
        wnids=tuple(WNIDS[:k]),
    )


def make_sub(dets):
    """dets: list of (image_id, label, score, xmin, ymin, xmax, ymax) in file order."""
    arr = np.asarray(dets, dtype=np.float64).reshape(-1, 7)
    return DetSubmission(arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], arr[:, 3:7])


# ------------------------------------------------------------------------------------ devkit rules


def test_small_object_threshold_accepts_iou_045_but_large_object_does_not():
    # 20x20 object: threshold 400 / 900 = 0.444; a 9x20 box inside it has IoU 180/400 = 0.45.
    # 200x200 object: threshold 0.5; a 90x200 box inside it has IoU 0.45 as well.
    gt = make_gt([(1, 1, 10, 10, 29, 29), (2, 2, 0, 0, 199, 199)], [1, 2])
    sub = make_sub([(1, 1, 0.9, 10, 10, 18, 29), (2, 2, 0.9, 0, 0, 89, 199)])
    res = evaluate_detections(gt, sub)
    assert res.tp.tolist() == [True, False]
    assert res.ap[0] == 1.0 and res.ap[1] == 0.0 and np.isnan(res.ap[2])
    assert res.mean_ap == 0.5  # the class without positives is left out


def test_duplicate_detection_takes_next_best_untaken_object():
    # Objects A and B of one class overlap; both detections sit exactly on A. The first takes A; the
    # second's best object is taken, so it takes B (IoU 0.818), unlike VOC which calls it false.
    gt = make_gt([(1, 1, 0, 0, 99, 99), (1, 1, 10, 0, 109, 99)], [1])
    sub = make_sub([(1, 1, 0.9, 0, 0, 99, 99), (1, 1, 0.8, 0, 0, 99, 99), (1, 1, 0.7, 0, 0, 99, 99)])
    res = evaluate_detections(gt, sub)
    assert res.tp.tolist() == [True, True, False]
    assert res.fp.tolist() == [False, False, True]
    assert res.ap[0] == pytest.approx(1.0)


def test_iou_equal_to_the_threshold_matches():
    # 20x20 object inside a 30x30 detection: IoU 400/900 is exactly the object's threshold.
    gt = make_gt([(1, 1, 10, 10, 29, 29)], [1])
    assert evaluate_detections(gt, make_sub([(1, 1, 0.9, 5, 5, 34, 34)])).tp.tolist() == [True]
    assert evaluate_detections(gt, make_sub([(1, 1, 0.9, 5, 5, 35, 34)])).tp.tolist() == [False]


def test_detection_takes_its_highest_iou_object_not_the_first_passing_one():
    # det1 passes A (IoU 0.6) and B (IoU 0.905) and takes B; det2 passes only A and gets it.
    gt = make_gt([(1, 1, 0, 0, 99, 99), (1, 1, 30, 0, 129, 99)], [1])
    sub = make_sub([(1, 1, 0.9, 25, 0, 124, 99), (1, 1, 0.8, -20, 0, 79, 99)])
    assert evaluate_detections(gt, sub).tp.tolist() == [True, True]


@pytest.mark.parametrize("a_first", [True, False])
def test_equal_iou_takes_the_first_object_in_xml_order(a_first):
    # det1 has IoU 9000/11000 with both A and B; det2 passes only B. When A comes first in the XML,
    # det1 takes A and det2 still finds B; otherwise det1 takes B and det2 is false.
    a, b = (1, 1, 0, 0, 99, 99), (1, 1, 20, 0, 119, 99)
    gt = make_gt([a, b] if a_first else [b, a], [1])
    sub = make_sub([(1, 1, 0.9, 10, 0, 109, 99), (1, 1, 0.8, 40, 0, 139, 99)])
    assert evaluate_detections(gt, sub).tp.tolist() == ([True, True] if a_first else [True, False])


def test_blacklisted_pairs_are_ignored_both_ways():
    # Image 1 holds classes 1 and 2, (1, class 2) is blacklisted: the false class-2 detection there
    # counts neither way and its class-2 object is no positive; image 2's class-2 object is found.
    gt = make_gt([(1, 1, 0, 0, 49, 49), (1, 2, 60, 60, 99, 99), (2, 2, 0, 0, 49, 49)], [1, 2])
    sub = make_sub([(1, 2, 0.95, 200, 200, 240, 240), (1, 1, 0.9, 0, 0, 49, 49), (2, 2, 0.5, 0, 0, 49, 49)])
    plain = evaluate_detections(gt, sub)
    assert plain.num_pos[1] == 2 and plain.ap[1] < 1.0
    res = evaluate_detections(gt, sub, blacklist=np.array([[1, 2], [99, 1]]))
    assert res.tp.tolist() == [False, True, True]
    assert res.fp.tolist() == [False, False, False]
    assert res.num_pos.tolist() == [1, 1, 0]
    assert res.ap[0] == 1.0 and res.ap[1] == 1.0


def test_images_without_objects_stay_and_their_detections_are_false(tmp_path):
    ann_dir, val = write_val(
        tmp_path,
        {"ILSVRC2012_val_00000001": (100, 100, [(WNIDS[0], 0, 0, 49, 49)]), "ILSVRC2012_val_00000002": (80, 60, [])},
    )
    syn = read_synsets(write_synsets(tmp_path / "map_det.txt", 1))
    gt = load_ground_truth(ann_dir, val, syn)
    assert gt.image_ids.tolist() == [1, 2] and gt.obj_image_ids.tolist() == [1]
    sub = make_sub([(2, 1, 0.9, 0, 0, 49, 49), (1, 1, 0.5, 0, 0, 49, 49)])
    res = evaluate_detections(gt, sub)
    assert res.tp.tolist() == [False, True]
    assert res.ap[0] == pytest.approx(0.5)  # precision 1/2 at recall 1


@pytest.mark.parametrize("first_is_good", [True, False])
def test_equal_confidences_keep_file_order_within_an_image(first_is_good):
    gt = make_gt([(1, 1, 0, 0, 49, 49)], [1])
    good, bad = (1, 1, 0.7, 0, 0, 49, 49), (1, 1, 0.7, 100, 100, 149, 149)
    res = evaluate_detections(gt, make_sub([good, bad] if first_is_good else [bad, good]))
    assert res.ap[0] == pytest.approx(1.0 if first_is_good else 0.5)
    # Two correct boxes with one confidence: the first in the file is the true positive.
    res = evaluate_detections(gt, make_sub([good, good]))
    assert res.tp.tolist() == [True, False]


def test_equal_confidences_across_images_rank_by_image_index():
    # Image 1's detection is right, image 2's wrong; the file lists image 2 first, but the devkit
    # ranks equal confidences by image index, so the true positive comes first: AP 1.
    gt = make_gt([(1, 1, 0, 0, 49, 49)], [1, 2])
    res = evaluate_detections(gt, make_sub([(2, 1, 0.6, 0, 0, 49, 49), (1, 1, 0.6, 0, 0, 49, 49)]))
    assert res.tp.tolist() == [False, True]
    assert res.ap[0] == 1.0


def test_detections_outside_the_image_list_are_an_error():
    gt = make_gt([(1, 1, 0, 0, 49, 49)], [1, 2])
    with pytest.raises(ValueError, match="image index 3 is not in the image list"):
        evaluate_detections(gt, make_sub([(3, 1, 0.6, 0, 0, 49, 49)]))
    with pytest.raises(ValueError, match="DET id 4 is outside 1..3"):
        evaluate_detections(gt, make_sub([(1, 4, 0.6, 0, 0, 49, 49)]))


def test_perfect_submission_gives_ap_100_for_every_class(tmp_path):
    rng = np.random.default_rng(1)
    images = {}
    for i in range(12):
        objs = []
        for _ in range(rng.integers(0, 4)):
            x1, y1 = rng.integers(0, 200, 2)
            w, h = rng.integers(1, 120, 2)
            objs.append((WNIDS[rng.integers(0, 4)], int(x1), int(y1), int(x1 + w - 1), int(y1 + h - 1)))
        images[f"ILSVRC2012_val_{i + 1:08d}"] = (400, 400, objs)
    images["ILSVRC2012_val_00000013"] = (400, 400, [(WNIDS[c], 5, 5, 60, 60) for c in range(4)])
    ann_dir, val = write_val(tmp_path, images)
    syn = read_synsets(write_synsets(tmp_path / "map_det.txt", 4))
    gt = load_ground_truth(ann_dir, val, syn)
    sub = DetSubmission(gt.obj_image_ids, gt.labels, rng.random(len(gt.labels)), gt.boxes)
    res = evaluate_detections(gt, sub)
    assert (res.ap == 1.0).all() and res.tp.all()
    assert metrics_dict(res, gt.wnids)["AP"] == {w: 100.0 for w in WNIDS[:4]}


# ------------------------------------------------------------------- loop reference on random data


def _matlab_max(a, b):
    # MATLAB's max ignores NaN, which is how the devkit skips 0/0 precision points.
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return max(a, b)


def devkit_reference(gt_objects, image_ids, dets, blacklist, k):
    """eval_detection.m written out with plain loops. gt_objects: {image: [(label, box)]} in XML order;
    dets: [(image, label, conf, box)] in file order; blacklist: [(image, label)]."""
    num_pos = [0] * (k + 1)
    for objs in gt_objects.values():
        for lab, _ in objs:
            num_pos[lab] += 1
    by_image = defaultdict(list)
    for j in sorted(range(len(dets)), key=lambda j: dets[j][0]):  # stable sort by image
        by_image[dets[j][0]].append(j)
    for im in by_image:
        by_image[im].sort(key=lambda j: -dets[j][2])  # stable descending confidence
    tp, fp = [0] * len(dets), [0] * len(dets)
    for im in image_ids:
        objs = gt_objects.get(im, [])
        detected = [False] * len(objs)
        black = {lab for (b_im, lab) in blacklist if b_im == im}
        for j in by_image.get(im, []):
            lab, bb = dets[j][1], dets[j][3]
            if lab in black:
                continue
            ovmax, kmax = -math.inf, -1
            for kk, (glab, g) in enumerate(objs):
                if glab != lab or detected[kk]:
                    continue
                iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
                ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
                if iw > 0 and ih > 0:
                    ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
                    ov = iw * ih / ua
                    gw, gh = g[3] - g[1] + 1, g[2] - g[0] + 1
                    thr = min(0.5, (gw * gh) / ((gw + 10) * (gh + 10)))
                    if ov >= thr and ov > ovmax:
                        ovmax, kmax = ov, kk
            if kmax >= 0:
                tp[j] = 1
                detected[kmax] = True
            else:
                fp[j] = 1
        for glab, _ in objs:
            if glab in black:
                num_pos[glab] -= 1
    seq = [j for im in sorted(by_image) for j in by_image[im]]
    seq.sort(key=lambda j: -dets[j][2])
    aps = []
    for c in range(1, k + 1):
        if num_pos[c] == 0:
            aps.append(math.nan)
            continue
        ctp = cfp = 0
        rec, prec = [], []
        for j in seq:
            if dets[j][1] != c:
                continue
            ctp += tp[j]
            cfp += fp[j]
            rec.append(ctp / num_pos[c])
            prec.append(ctp / (ctp + cfp) if ctp + cfp else math.nan)
        mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = _matlab_max(mpre[i], mpre[i + 1])
        aps.append(sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]))
    return tp, fp, aps


def random_problem(seed, k=4, n_images=40, dense=False):
    """Random ground truth and detections; ``dense`` crowds same-class objects so that detections
    pass several objects, with integer boxes that produce exact IoU ties."""
    rng = np.random.default_rng(seed)
    image_ids = rng.permutation(np.arange(1, n_images + 1) * 3)  # list order != index order, gaps
    gt_objects, flat = {}, []
    for im in image_ids.tolist():
        objs = []
        for _ in range(rng.integers(0, 6)):
            x1, y1 = rng.integers(0, 60 if dense else 300, 2)
            if dense:
                w, h = rng.integers(20, 80, 2)
            else:
                w, h = rng.integers(1, 160, 2) if rng.random() < 0.6 else rng.integers(1, 30, 2)
            box = [float(x1), float(y1), float(x1 + w - 1), float(y1 + h - 1)]
            lab = int(rng.integers(1, k + 1))
            objs.append((lab, box))
            flat.append((im, lab, *box))
        gt_objects[im] = objs
    dets = []
    for im in image_ids.tolist():
        for _ in range(rng.integers(0, 16)):
            objs = gt_objects[im]
            if objs and rng.random() < 0.7:
                lab, g = objs[rng.integers(0, len(objs))]
                jitter = rng.normal(0, 4, 4) if rng.random() < 0.5 and not dense else rng.integers(-12, 13, 4)
                box = (np.asarray(g) + jitter).tolist()
                if rng.random() < 0.15:
                    lab = int(rng.integers(1, k + 1))
            else:
                x1, y1 = rng.uniform(0, 300, 2)
                box = [x1, y1, x1 + rng.uniform(0, 150), y1 + rng.uniform(0, 150)]
                lab = int(rng.integers(1, k + 1))
            conf = float(rng.integers(0, 6)) / 5 if rng.random() < 0.5 else float(rng.random())
            dets.append((im, lab, conf, box))
    order = rng.permutation(len(dets))
    dets = [dets[i] for i in order]
    blacklist = [(int(image_ids[rng.integers(0, n_images)]), int(rng.integers(1, k + 1))) for _ in range(4)]
    blacklist.append((10_000, 1))  # outside the list: no effect
    gt = make_gt(flat, image_ids, k)
    sub = make_sub([(im, lab, conf, *box) for im, lab, conf, box in dets])
    return gt, sub, gt_objects, image_ids.tolist(), dets, blacklist


@pytest.mark.parametrize("seed, k, dense", [(s, 4, False) for s in range(8)] + [(s, 2, True) for s in range(8, 16)])
def test_vectorized_matches_loop_reference(seed, k, dense):
    gt, sub, gt_objects, image_ids, dets, blacklist = random_problem(seed, k, dense=dense)
    for bl in ([], blacklist):
        ref_tp, ref_fp, ref_ap = devkit_reference(gt_objects, image_ids, dets, bl, k)
        res = evaluate_detections(gt, sub, np.asarray(bl, dtype=np.int64).reshape(-1, 2))
        assert res.tp.astype(int).tolist() == ref_tp
        assert res.fp.astype(int).tolist() == ref_fp
        np.testing.assert_allclose(res.ap, ref_ap, rtol=1e-12, atol=0)
        assert res.tp.sum() > 0 and res.fp.sum() > 0  # the data exercises both outcomes


def test_empty_submission_file_scores_zero(tmp_path):
    (tmp_path / "empty.txt").write_text("\n")
    sub = read_submission(tmp_path / "empty.txt", np.array([1]), num_classes=3)
    res = evaluate_detections(make_gt([(1, 1, 0, 0, 9, 9), (1, 2, 0, 0, 9, 9)], [1]), sub)
    assert len(sub) == 0 and res.ap.tolist()[:2] == [0.0, 0.0] and res.mean_ap == 0.0


def test_match_detections_without_objects_or_detections():
    gt = make_gt([], [1, 2])
    sub = make_sub([(1, 1, 0.5, 0, 0, 10, 10)])
    assert match_detections(sub, gt).tolist() == [False]
    res = evaluate_detections(make_gt([(1, 1, 0, 0, 9, 9)], [1]), make_sub([]))
    assert res.ap[0] == 0.0 and len(res.tp) == 0


# ---------------------------------------------------------------------------------------- files


def test_submission_write_read_roundtrip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    sub = DetSubmission(
        rng.integers(1, 6, 50),
        rng.integers(1, 4, 50),
        rng.random(50).astype(np.float32).astype(np.float64),
        (rng.random((50, 4)) * 500).astype(np.float32).astype(np.float64),
    )
    write_submission(tmp_path / "s.txt", sub)
    back = read_submission(tmp_path / "s.txt", np.arange(1, 6), num_classes=3)
    for name in ("image_ids", "labels", "scores", "boxes"):
        np.testing.assert_array_equal(getattr(sub, name), getattr(back, name))


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("1 1 0.5 0 0 10", "expected 7 fields"),
        ("1 1 0.5 0 0 10 10 3", "expected 7 fields"),
        ("1 1 high 0 0 10 10", "confidence 'high' is not a number"),
        ("1 1 nan 0 0 10 10", "not a finite number"),
        ("1.5 1 0.5 0 0 10 10", "image_index '1.5' is not an integer"),
        ("7 1 0.5 0 0 10 10", "image_index 7 is not in the image list"),
        ("1 201 0.5 0 0 10 10", "DET_id 201 is outside 1..200"),
        ("1 0 0.5 0 0 10 10", "DET_id 0 is outside 1..200"),
    ],
)
def test_submission_errors_name_file_and_line(tmp_path, bad_line, message):
    p = tmp_path / "sub.txt"
    p.write_text(f"1 1 0.9 0 0 10 10\n\n2 3 0.8 1 1 5 5\n{bad_line}\n3 2 0.1 0 0 1 1\n")
    with pytest.raises(DetFormatError) as e:
        read_submission(p, np.array([1, 2, 3]), num_classes=200)
    assert f"{p}:4: " in str(e.value) and message in str(e.value)


def test_blacklist_reader(tmp_path):
    syn = read_synsets(write_synsets(tmp_path / "map_det.txt", 3))
    p = tmp_path / "bl.txt"
    p.write_text(f"5 {WNIDS[2]}\n\n7 {WNIDS[0]}\n")
    assert read_blacklist(p, syn).tolist() == [[5, 3], [7, 1]]
    p.write_text(f"5 {WNIDS[2]}\n7 n99999999\n")
    with pytest.raises(DetFormatError, match=rf"{p}:2: unknown WNID 'n99999999'"):
        read_blacklist(p, syn)


def test_eval_tool_file_mode_writes_metrics(tmp_path):
    ann_dir, val = write_val(
        tmp_path,
        {
            "ILSVRC2012_val_00000001": (100, 100, [(WNIDS[0], 0, 0, 49, 49), (WNIDS[1], 10, 10, 29, 29)]),
            "ILSVRC2012_val_00000002": (100, 100, [(WNIDS[0], 20, 20, 79, 79)]),
        },
    )
    syn_path = write_synsets(tmp_path / "map_det.txt", 2)
    sub = tmp_path / "sub.txt"
    # class 1: one hit, one miss -> AP 0.5; class 2: 20x20 object found at IoU 0.45 -> AP 1.
    sub.write_text("1 1 0.9 0 0 49 49\n2 1 0.8 0 0 9 9\n1 2 0.7 10 10 18 29\n")
    blacklist = tmp_path / "bl.txt"
    blacklist.write_text(f"2 {WNIDS[0]}\n")
    out = tmp_path / "metrics.json"
    cmd = [
        sys.executable,
        str(REPO / "tools" / "eval_imagenet_det.py"),
        "--submission",
        str(sub),
        "--annotations",
        str(ann_dir),
        "--image-list",
        str(val),
        "--synsets",
        str(syn_path),
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(out.read_text())
    assert m["AP"] == {WNIDS[0]: 50.0, WNIDS[1]: 100.0} and m["mAP"] == 75.0
    assert set(m["coco"]) == {"AP", "AP50"}
    assert "mAP@.5 (ILSVRC devkit)" in proc.stdout and "75.00" in proc.stdout
    proc = subprocess.run(cmd + ["--blacklist", str(blacklist)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["AP"][WNIDS[0]] == 100.0
    sub.write_text("1 1 0.9 0 0 49 49\n1 1 0.9 0 0 49\n")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and f"{sub}:2: expected 7 fields" in proc.stderr
