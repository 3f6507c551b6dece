"""ImageNet CLS-LOC evaluation: the eval_clsloc.m protocol on devkit and Kaggle files made here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.imagenet_loc_files import (
    make_classes,
    write_devkit,
    write_devkit_submission,
    write_kaggle_solution,
    write_kaggle_submission,
    write_loc_synset_mapping,
    write_map_clsloc,
)

from restransfer.boxes import inclusive_iou
from restransfer.data.imagenet_loc import LocFormatError, LocImage, Synsets
from restransfer.evaluation.imagenet_loc import (
    LocSubmission,
    evaluate_files,
    evaluate_localization,
    pack_ground_truth,
    read_devkit_submission,
)

WNIDS, NAMES, DEVKIT_ORDER = make_classes(8)
A, B, C, D, E, F, G, H = WNIDS
GT_BOX = (0, 0, 99, 99)  # 100 x 100 pixels inclusive


def _image(i, labels, objects, w=200, h=150):
    return {
        "name": f"ILSVRC2012_val_{i:08d}",
        "labels": list(labels),
        "objects": list(objects),
        "width": w,
        "height": h,
    }


class Layout:
    """The devkit and Kaggle files of one ground truth in a temporary folder."""

    def __init__(self, root: Path, images):
        self.root, self.images = root, images
        self.names = [im["name"] for im in sorted(images, key=lambda im: im["name"])]
        by_wnid = dict(zip(WNIDS, NAMES))
        self.map_clsloc = write_map_clsloc(root / "map_clsloc.txt", DEVKIT_ORDER, by_wnid)
        self.mapping = write_loc_synset_mapping(root / "LOC_synset_mapping.txt", WNIDS, by_wnid)
        self.xml_dir, self.gt = write_devkit(root, images, DEVKIT_ORDER)
        self.solution = write_kaggle_solution(root / "LOC_val_solution.csv", images)

    def devkit(self, guesses, blacklist=None, **kw):
        sub = write_devkit_submission(self.root / "sub.txt", guesses, DEVKIT_ORDER)
        return evaluate_files(
            sub,
            synsets=self.map_clsloc,
            annotations=self.xml_dir,
            ground_truth=self.gt,
            blacklist=self._blacklist(blacklist),
            **kw,
        )

    def kaggle(self, guesses, blacklist=None, **kw):
        sub = write_kaggle_submission(self.root / "sub.csv", self.names, guesses)
        return evaluate_files(
            sub, synsets=self.mapping, solution=self.solution, blacklist=self._blacklist(blacklist), **kw
        )

    def _blacklist(self, indices):
        if indices is None:
            return None
        path = self.root / "blacklist.txt"
        path.write_text("".join(f"{i}\n" for i in indices))
        return path


def test_iou_threshold_is_inclusive_and_exact(tmp_path):
    # same class; IoU 0.5 (100x50 inside 100x100) is correct, 0.49 (100x49) is not
    lay = Layout(tmp_path, [_image(1, [A], [(A, GT_BOX)]), _image(2, [A], [(A, GT_BOX)])])
    assert inclusive_iou(np.array(GT_BOX), np.array((0, 0, 99, 49))) == 0.5
    assert inclusive_iou(np.array(GT_BOX), np.array((0, 0, 99, 48))) == 0.49
    m = lay.devkit([[(A, (0, 0, 99, 49))], [(A, (0, 0, 99, 48))]])
    assert m["top5_loc_error"] == 50.0 and m["top1_loc_error"] == 50.0
    assert m["top5_cls_error"] == 0.0


def test_right_box_under_wrong_class_is_an_error(tmp_path):
    lay = Layout(tmp_path, [_image(1, [A], [(A, GT_BOX)])])
    m = lay.devkit([[(B, GT_BOX), (C, GT_BOX)]])
    assert m["top5_loc_error"] == 100.0 and m["top5_cls_error"] == 100.0


def test_fifth_guess_counts_for_top5_not_top1_and_sixth_is_ignored(tmp_path):
    lay = Layout(tmp_path, [_image(1, [A], [(A, GT_BOX)]), _image(2, [A], [(A, GT_BOX)])])
    wrong = [(w, GT_BOX) for w in (B, C, D, E)]
    m = lay.devkit([wrong + [(A, GT_BOX)], wrong + [(F, GT_BOX), (A, GT_BOX)]])
    assert m["top5_loc_error"] == 50.0 and m["top5_cls_error"] == 50.0
    assert m["top1_loc_error"] == 100.0 and m["top1_cls_error"] == 100.0


def test_blacklisted_image_leaves_numerator_and_denominator(tmp_path):
    images = [_image(i, [A], [(A, GT_BOX)]) for i in range(1, 5)]
    lay = Layout(tmp_path, images)
    guesses = [[(A, GT_BOX)], [(A, GT_BOX)], [(A, (50, 50, 60, 60))], [(B, GT_BOX)]]
    assert lay.devkit(guesses)["top5_loc_error"] == 50.0
    m = lay.devkit(guesses, blacklist=[4])  # the wrong-class image leaves: 1 error of 3
    assert m["top5_loc_error"] == pytest.approx(100 / 3)
    assert m["top5_cls_error"] == 25.0  # classification still counts all four
    assert m["num_blacklisted"] == 1
    assert lay.devkit(guesses, blacklist=[3, 4])["top5_loc_error"] == 0.0


def test_several_boxes_of_the_class_and_boxes_of_other_classes(tmp_path):
    # image 1: three boxes of A; a guess on the third one is correct. image 2: the guess matches a box of B,
    # which is not the image's ground-truth class, so it does not help A.
    objs = [(A, (0, 0, 9, 9)), (A, (20, 20, 29, 29)), (A, (100, 50, 199, 149))]
    lay = Layout(tmp_path, [_image(1, [A], objs), _image(2, [A], [(A, GT_BOX), (B, (120, 0, 199, 99))])])
    m = lay.devkit([[(A, (100, 50, 199, 149))], [(A, (120, 0, 199, 99)), (B, (120, 0, 199, 99))]])
    assert m["top5_loc_error"] == 50.0


def test_several_ground_truth_classes_average(tmp_path):
    lay = Layout(tmp_path, [_image(1, [A, B], [(A, GT_BOX), (B, (100, 0, 199, 99))])])
    m = lay.devkit([[(A, GT_BOX), (B, GT_BOX)]])  # A localized, B named with the wrong box
    assert m["top5_loc_error"] == 50.0 and m["top5_cls_error"] == 0.0
    assert m["top1_cls_error"] == 50.0


def test_perfect_submission_scores_zero_in_both_layouts(tmp_path):
    images = [_image(i, [WNIDS[i % 8]], [(WNIDS[i % 8], (i, 2 * i, 50 + i, 60 + i))]) for i in range(1, 21)]
    lay = Layout(tmp_path, images)
    ordered = sorted(images, key=lambda im: im["name"])
    perfect = [[im["objects"][0]] for im in ordered]
    for m in (lay.devkit(perfect), lay.kaggle(perfect)):
        assert {k: m[k] for k in ("top1_loc_error", "top5_loc_error", "top1_cls_error", "top5_cls_error")} == {
            "top1_loc_error": 0.0,
            "top5_loc_error": 0.0,
            "top1_cls_error": 0.0,
            "top5_cls_error": 0.0,
        }


def test_devkit_and_kaggle_layouts_give_the_same_numbers(tmp_path):
    rng = np.random.default_rng(3)
    images, guesses = [], []
    for i in range(1, 41):
        w = WNIDS[rng.integers(8)]
        x, y = rng.integers(0, 60, 2)
        box = (int(x), int(y), int(x + rng.integers(20, 90)), int(y + rng.integers(20, 80)))
        images.append(_image(i, [w], [(w, box)]))
        jitter = rng.integers(-15, 16, 4)
        guesses.append(
            [(WNIDS[rng.integers(8)] if rng.random() < 0.4 else w, tuple(int(v) for v in np.add(box, jitter)))]
            + [(WNIDS[rng.integers(8)], box) for _ in range(rng.integers(0, 5))]
        )
    lay = Layout(tmp_path, images)
    devkit, kaggle = lay.devkit(guesses, blacklist=[2, 7]), lay.kaggle(guesses, blacklist=[2, 7])
    assert devkit == kaggle
    assert 0 < devkit["top5_loc_error"] < 100 and devkit["top1_loc_error"] > devkit["top5_loc_error"]
    # a devkit text submission against the Kaggle ground truth (labels are map_clsloc ids) agrees too
    sub = write_devkit_submission(tmp_path / "sub2.txt", guesses, DEVKIT_ORDER)
    assert (
        evaluate_files(sub, synsets=lay.map_clsloc, solution=lay.solution, blacklist=lay._blacklist([2, 7])) == devkit
    )


def test_gt_class_submission_is_reported(tmp_path):
    lay = Layout(tmp_path, [_image(1, [A], [(A, GT_BOX)]), _image(2, [B], [(B, GT_BOX)])])
    gt_sub = write_devkit_submission(tmp_path / "gt.txt", [[(A, GT_BOX)], [(B, (0, 0, 9, 9))]], DEVKIT_ORDER)
    m = lay.devkit([[(C, GT_BOX)], [(C, GT_BOX)]], gt_class_submission=gt_sub)
    assert m["gt_class_loc_error"] == 50.0 and m["top5_loc_error"] == 100.0


@pytest.mark.parametrize(
    "line, message",
    [
        ("3 0 0 10", "4 fields"),
        ("3 0 0 10 x", "'x' is not a number"),
        ("9 0 0 10 10", "label 9"),
        ("2.5 0 0 10 10", "label 2.5"),
    ],
)
def test_malformed_submission_lines_name_file_and_line(tmp_path, line, message):
    lay = Layout(tmp_path, [_image(i, [A], [(A, GT_BOX)]) for i in (1, 2, 3)])
    sub = tmp_path / "bad.txt"
    sub.write_text(f"1 0 0 10 10\n{line}\n\n")
    with pytest.raises(LocFormatError, match=rf"bad.txt:2: .*{message}"):
        evaluate_files(sub, synsets=lay.map_clsloc, annotations=lay.xml_dir, ground_truth=lay.gt)


def test_submission_line_count_and_kaggle_errors(tmp_path):
    lay = Layout(tmp_path, [_image(i, [A], [(A, GT_BOX)]) for i in (1, 2)])
    short = tmp_path / "short.txt"
    short.write_text("1 0 0 10 10\n")
    with pytest.raises(LocFormatError, match="1 lines, but the ground truth has 2 images"):
        evaluate_files(short, synsets=lay.map_clsloc, annotations=lay.xml_dir, ground_truth=lay.gt)
    csv_sub = tmp_path / "sub.csv"
    csv_sub.write_text(f"ImageId,PredictionString\n{lay.names[0]},{A} 0 0 9 9\n{lay.names[1]},n99999999 0 0 9 9\n")
    with pytest.raises(LocFormatError, match=r"sub.csv:3: WNID 'n99999999'"):
        evaluate_files(csv_sub, synsets=lay.mapping, solution=lay.solution)
    csv_sub.write_text(f"ImageId,PredictionString\n{lay.names[0]},{A} 0 0 9 9\n")
    with pytest.raises(LocFormatError, match="1 ground-truth images have no row"):
        evaluate_files(csv_sub, synsets=lay.mapping, solution=lay.solution)
    csv_sub.write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000099,{A} 0 0 9 9\n")
    with pytest.raises(LocFormatError, match=":2: ImageId 'ILSVRC2012_val_00000099' is not in the ground truth"):
        evaluate_files(csv_sub, synsets=lay.mapping, solution=lay.solution)


# --------------------------------------------------------------- loop reference of eval_clsloc.m


def _reference(images, guesses, blacklist, max_guesses):
    """Direct transcription of the devkit's loops: per image, per ground-truth class, min over guesses of
    max(wrong label, min over that class's boxes of IoU < 0.5)."""

    def overlap(bb, gt):
        iw = min(bb[2], gt[2]) - max(bb[0], gt[0]) + 1
        ih = min(bb[3], gt[3]) - max(bb[1], gt[1]) + 1
        if iw > 0 and ih > 0:
            ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - iw * ih
            return iw * ih / ua
        return -1.0

    out = {}
    for k in (1, max_guesses):
        cls_sum = loc_sum = 0.0
        for i, (im, g) in enumerate(zip(images, guesses)):
            g = g[:k]
            c = sum(all(lab != gl for lab, _ in g) for gl in im["labels"])
            cls_sum += c / len(im["labels"])
            if i in blacklist:
                continue
            e = 0
            for gl in im["labels"]:
                # a class without boxes cannot be localized (the devkit has no such images)
                d = [
                    min(((lab != gl) or overlap(box, ob) < 0.5 for ow, ob in im["objects"] if ow == gl), default=1)
                    for lab, box in g
                ]
                e += min(d) if d else 1
            loc_sum += e / len(im["labels"])
        out[f"top{k}_cls_error"] = 100 * cls_sum / len(images)
        out[f"top{k}_loc_error"] = 100 * loc_sum / (len(images) - len(blacklist))
    return out


def test_vectorized_matches_loop_reference_on_random_data():
    rng = np.random.default_rng(0)
    synsets = Synsets(tuple(WNIDS), tuple(NAMES), "test")
    images, guesses = [], []
    for i in range(400):
        labels = list(rng.choice(WNIDS, size=rng.integers(1, 3), replace=False))
        objects = []
        for _ in range(rng.integers(1, 5)):
            w = labels[rng.integers(len(labels))] if rng.random() < 0.85 else WNIDS[rng.integers(8)]
            x, y = rng.integers(0, 80, 2)
            objects.append((w, (int(x), int(y), int(x + rng.integers(0, 60)), int(y + rng.integers(0, 60)))))
        images.append({"labels": labels, "objects": objects})
        g = []
        for _ in range(rng.integers(0, 8)):
            base = objects[rng.integers(len(objects))][1]
            w = labels[0] if rng.random() < 0.5 else WNIDS[rng.integers(8)]
            g.append((w, tuple(float(v) for v in np.add(base, rng.normal(0, 6, 4)).round(1))))
        guesses.append(g)
    blacklist = set(rng.choice(400, 25, replace=False).tolist())

    gt = pack_ground_truth(
        [
            LocImage(
                f"im{i}",
                "",
                tuple(im["labels"]),
                tuple(w for w, _ in im["objects"]),
                np.array([b for _, b in im["objects"]], dtype=float),
            )
            for i, im in enumerate(images)
        ],
        synsets,
    )
    sub = LocSubmission(np.zeros((400, 7), dtype=np.int64), np.zeros((400, 7, 4)))
    for i, g in enumerate(guesses):
        for j, (w, b) in enumerate(g):
            sub.labels[i, j], sub.boxes[i, j] = synsets.label(w), b
    got = evaluate_localization(gt, sub, blacklist=np.array(sorted(blacklist)))
    want = _reference(images, guesses, blacklist, 5)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert 5 < got["top5_loc_error"] < 95  # the random data exercises both outcomes


def test_read_devkit_submission_pads_and_truncates(tmp_path):
    synsets = Synsets(tuple(WNIDS), tuple(NAMES), "test")
    path = tmp_path / "s.txt"
    path.write_text("\n" + " ".join(f"{k} 1 2 3 4" for k in range(1, 8)) + "\n")
    sub = read_devkit_submission(path, synsets, 2)
    assert sub.labels.tolist() == [[0] * 5, [1, 2, 3, 4, 5]]
    assert sub.boxes[1, 4].tolist() == [1, 2, 3, 4]


def test_tool_writes_metrics_json(tmp_path):
    lay = Layout(tmp_path, [_image(1, [A], [(A, GT_BOX)]), _image(2, [B], [(B, GT_BOX)])])
    sub = write_devkit_submission(tmp_path / "s.txt", [[(A, GT_BOX)], [(A, GT_BOX), (B, (0, 0, 99, 48))]], DEVKIT_ORDER)
    spec = importlib.util.spec_from_file_location(
        "eval_tool", Path(__file__).parents[2] / "tools" / "eval_imagenet_loc.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "m" / "metrics.json"
    assert (
        tool.main(
            [
                "--submission",
                str(sub),
                "--annotations",
                str(lay.xml_dir),
                "--ground-truth",
                str(lay.gt),
                "--synsets",
                str(lay.map_clsloc),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads(out.read_text())
    assert (m["top5_loc_error"], m["top1_loc_error"], m["top5_cls_error"], m["top1_cls_error"]) == (
        50.0,
        50.0,
        0.0,
        50.0,
    )
    bad = tmp_path / "bad.txt"
    bad.write_text("1 0 0\n\n")
    from restransfer.cli import run_tool

    assert (
        run_tool(tool.main, ["--submission", str(bad), "--solution", str(lay.solution), "--synsets", str(lay.mapping)])
        == 2
    )
