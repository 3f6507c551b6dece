"""Top-5 localization guesses from detector outputs: the detector, classifier and ground-truth-class modes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.imagenet_loc_files import make_classes, write_devkit, write_kaggle_solution, write_map_clsloc

from restransfer.boxes import devkit_to_xyxy
from restransfer.data.imagenet_loc import convert_split, ground_truth_from_coco, read_synsets
from restransfer.evaluation.imagenet_loc import evaluate_files
from restransfer.localization import (
    LocGuesses,
    classifier_guesses,
    detector_guesses,
    gt_class_guesses,
    label_wnids,
    load_classifier_scores,
    write_devkit_submission,
    write_kaggle_submission,
)

WNIDS, NAMES, DEVKIT_ORDER = make_classes(8)
# detector labels 1..8 are the devkit order here, as in a json converted with map_clsloc.txt
LABEL_TO_WNID = {i + 1: w for i, w in enumerate(DEVKIT_ORDER)}
SIZES = {1: (200, 100), 2: (64, 48), 3: (30, 40)}


def _pred(image_id, dets):
    """dets: [(label, score, box)]"""
    return {
        "image_id": image_id,
        "boxes": np.array([d[2] for d in dets], np.float32).reshape(-1, 4),
        "scores": np.array([d[1] for d in dets], np.float32),
        "labels": np.array([d[0] for d in dets], np.int64),
    }


def _box(k):
    return (float(k), float(k), float(k + 10), float(k + 20))


PREDS = [
    # image 1: seven classes; label 3 has two detections, its best box is the 0.9 one
    _pred(
        1,
        [
            (3, 0.5, _box(1)),
            (1, 0.8, _box(2)),
            (3, 0.9, _box(3)),
            (2, 0.7, _box(4)),
            (4, 0.3, _box(5)),
            (5, 0.2, _box(6)),
            (6, 0.1, _box(7)),
            (7, 0.05, _box(8)),
        ],
    ),
    _pred(2, [(8, 0.4, _box(9)), (8, 0.6, _box(10))]),
    _pred(3, []),
]


def test_detector_mode_top5_classes_with_their_best_box():
    g = detector_guesses(PREDS, LABEL_TO_WNID)
    assert g.image_ids.tolist() == [1, 2, 3]
    assert g.wnids[0].tolist() == [LABEL_TO_WNID[k] for k in (3, 1, 2, 4, 5)]
    assert g.boxes[0].tolist() == [list(_box(k)) for k in (3, 2, 4, 5, 6)]
    np.testing.assert_allclose(g.scores[0], [0.9, 0.8, 0.7, 0.3, 0.2], rtol=1e-6)
    assert g.wnids[1].tolist() == [LABEL_TO_WNID[8], "", "", "", ""]
    assert g.boxes[1, 0].tolist() == list(_box(10))
    assert (g.wnids[2] == "").all() and np.isnan(g.scores[2]).all()


def test_classifier_mode_uses_classifier_classes_with_fallbacks():
    # columns in sorted-WNID order (torchvision's); image 1 ranks: label 7's WNID, then a class the detector
    # did not find, then label 3's WNID
    col = {w: i for i, w in enumerate(sorted(WNIDS))}
    scores = np.tile(np.arange(8) * 1e-3, (3, 1))  # distinct, so the ranking does not depend on column order
    w7, w8, w3 = LABEL_TO_WNID[7], LABEL_TO_WNID[8], LABEL_TO_WNID[3]
    scores[0, [col[w7], col[w8], col[w3]]] = [3.0, 2.0, 1.0]
    scores[1, col[w8]] = 5.0
    scores[2, col[w3]] = 1.0
    g = classifier_guesses(PREDS, scores, LABEL_TO_WNID, SIZES)
    assert g.wnids[0, :3].tolist() == [w7, w8, w3]
    assert g.boxes[0, 0].tolist() == list(_box(8))  # label 7's only detection
    assert g.boxes[0, 1].tolist() == list(_box(3))  # no detection of w8 in image 1: the best box of any class
    assert g.boxes[0, 2].tolist() == list(_box(3))  # label 3's best detection
    assert g.scores[0, :3].tolist() == [3.0, 2.0, 1.0]
    assert g.wnids[1, 0] == w8 and g.boxes[1, 0].tolist() == list(_box(10))
    assert g.wnids[2, 0] == w3 and g.boxes[2, 0].tolist() == [0, 0, 30, 40]  # no detections: the whole image
    assert (g.wnids != "").all()  # always five guesses
    # the same classifier with its columns in devkit order gives the same guesses
    devkit_cols = scores[:, [col[w] for w in DEVKIT_ORDER]]
    g2 = classifier_guesses(PREDS, devkit_cols, LABEL_TO_WNID, SIZES, classifier_wnids=DEVKIT_ORDER)
    assert (g2.wnids == g.wnids).all() and np.array_equal(g2.boxes, g.boxes)
    with pytest.raises(ValueError, match=r"class_scores must be \(num_images=3, num_classes=8\)"):
        classifier_guesses(PREDS, scores[:, :5], LABEL_TO_WNID, SIZES)


def test_gt_class_mode():
    gt = {1: [LABEL_TO_WNID[2]], 2: [LABEL_TO_WNID[1], LABEL_TO_WNID[8]], 3: [LABEL_TO_WNID[4]]}
    g = gt_class_guesses(PREDS, gt, LABEL_TO_WNID, SIZES)
    assert g.wnids[0].tolist() == [LABEL_TO_WNID[2], "", "", "", ""] and g.boxes[0, 0].tolist() == list(_box(4))
    assert g.wnids[1, :2].tolist() == gt[2]
    assert g.boxes[1, 0].tolist() == list(_box(10)) and np.isnan(g.scores[1, 0])  # fallback: best box, no score
    assert g.boxes[1, 1].tolist() == list(_box(10)) and g.scores[1, 1] == pytest.approx(0.6)
    assert g.boxes[2, 0].tolist() == [0, 0, 30, 40]


def test_unknown_detector_label_is_reported():
    with pytest.raises(ValueError, match=r"prediction 0 \(image_id 5\): label 9 has no WNID"):
        detector_guesses([_pred(5, [(9, 0.5, _box(0))])], LABEL_TO_WNID)


def test_label_wnids_from_dataset_categories():
    coco = SimpleNamespace(
        cats={10: {"id": 10, "name": "a", "wnid": WNIDS[0]}, 20: {"id": 20, "name": "b", "wnid": WNIDS[1]}}
    )
    ds = SimpleNamespace(coco=coco, label_to_cat_id={1: 10, 2: 20})
    assert label_wnids(ds) == {1: WNIDS[0], 2: WNIDS[1]}
    coco.cats[20] = {"id": 20, "name": "b"}
    with pytest.raises(KeyError, match="category 20"):
        label_wnids(ds)


def test_reorder_fills_missing_images():
    g = detector_guesses(PREDS[:2], LABEL_TO_WNID).reorder([2, 7, 1])
    assert g.image_ids.tolist() == [2, 7, 1]
    assert g.wnids[0, 0] == LABEL_TO_WNID[8] and (g.wnids[1] == "").all() and g.wnids[2, 0] == LABEL_TO_WNID[3]


def test_ground_truth_as_detections_round_trips_to_zero_error(tmp_path):
    """XML -> COCO json -> detections at the ground-truth boxes -> both submission files -> error 0."""
    synsets = read_synsets(write_map_clsloc(tmp_path / "map_clsloc.txt", DEVKIT_ORDER, dict(zip(WNIDS, NAMES))))
    rng = np.random.default_rng(1)
    images = []
    for i in range(1, 13):
        w = WNIDS[i % 8]
        x, y = (int(v) for v in rng.integers(0, 40, 2))
        images.append(
            {
                "name": f"ILSVRC2012_val_{i:08d}",
                "labels": [w],
                "width": 120,
                "height": 90,
                "objects": [(w, (x, y, x + int(rng.integers(5, 70)), y + int(rng.integers(5, 45))))],
            }
        )
    images[3]["objects"].append((images[3]["labels"][0], (0, 0, 119, 89)))
    xml_dir, gt = write_devkit(tmp_path, images, DEVKIT_ORDER)
    data = convert_split("val", synsets, tmp_path, annotations=xml_dir, ground_truth=gt)
    records, syn = ground_truth_from_coco(data)
    preds = []
    for im, rec in zip(data["images"], records):
        dets = [
            (syn.label(w), 0.9 - 0.1 * j, tuple(devkit_to_xyxy(b)[0]))
            for j, (w, b) in enumerate(zip(rec.box_wnids, rec.boxes))
        ]
        dets.append(
            (syn.label(WNIDS[(WNIDS.index(rec.labels[0]) + 1) % 8]), 0.95, (1.0, 1.0, 3.0, 3.0))
        )  # a wrong top class
        preds.append(_pred(im["id"], dets))
    lut = {k: syn.wnid(k) for k in range(1, len(syn) + 1)}
    guesses = detector_guesses(preds[::-1], lut).reorder([im["id"] for im in data["images"]])
    names = [im["name"] for im in data["images"]]
    write_devkit_submission(tmp_path / "loc.txt", guesses, syn)
    write_kaggle_submission(tmp_path / "loc.csv", guesses, names)
    solution = write_kaggle_solution(tmp_path / "LOC_val_solution.csv", images)
    kw = dict(synsets=tmp_path / "map_clsloc.txt")
    for m in (
        evaluate_files(tmp_path / "loc.txt", annotations=xml_dir, ground_truth=gt, **kw),
        evaluate_files(tmp_path / "loc.csv", solution=solution, **kw),
    ):
        assert m["top5_loc_error"] == 0.0 and m["top5_cls_error"] == 0.0
        assert m["top1_cls_error"] == 100.0  # the wrong class scored highest everywhere
    first = (tmp_path / "loc.txt").read_text().splitlines()[0].split()
    assert len(first) == 10 and first[2:5] == ["1", "2", "2"]  # internal (1, 1, 3, 3) -> devkit (1, 1, 2, 2)


def test_load_classifier_scores(tmp_path):
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "s.npy", scores)
    np.savetxt(tmp_path / "s.txt", scores)
    for name in ("s.npy", "s.txt"):
        np.testing.assert_array_equal(load_classifier_scores(tmp_path / name, 3), scores)
    with pytest.raises(ValueError, match="3 rows of classifier scores for 4 images"):
        load_classifier_scores(tmp_path / "s.npy", 4)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_classifier_scores(tmp_path / "obj.npy")


def test_empty_guesses_write_empty_lines(tmp_path):
    g = LocGuesses.empty([1, 2])
    write_devkit_submission(
        tmp_path / "e.txt", g, read_synsets(write_map_clsloc(tmp_path / "m.txt", DEVKIT_ORDER, dict(zip(WNIDS, NAMES))))
    )
    assert (tmp_path / "e.txt").read_text() == "\n\n"


def test_localization_config_keys_and_values():
    from restransfer.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "configs" / "imagenet_loc_faster_rcnn_r101.yaml")
    assert cfg.model.num_classes == 1000 and cfg.model.roi_heads.class_agnostic_box_reg is False
    assert cfg.data.test.format == "imagenet_loc" and cfg.data.train[0].format == "imagenet_loc"
    assert cfg.model.backbone.depth == 101 and cfg.model.head == "c4"


def test_classifier_scores_from_model_preprocesses_like_imagenet(tmp_path):
    pytest.importorskip("restransfer.data.image_io")
    import cv2
    import torch

    from restransfer.localization import classifier_scores_from_model

    class MeanColor(torch.nn.Module):
        def classify(self, x):
            assert x.shape[1:] == (3, 224, 224)
            return x.mean((2, 3))

    paths = []
    for i, (w, h) in enumerate([(300, 260), (100, 500)]):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (50, 100, 200)  # BGR in OpenCV: R=200, G=100, B=50
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    rgb = classifier_scores_from_model(MeanColor(), paths, batch_size=1, mean=mean, std=std)
    want = (np.array([200, 100, 50]) - mean) / std
    np.testing.assert_allclose(rgb, [want, want], rtol=1e-5)
    bgr = classifier_scores_from_model(MeanColor(), paths, mean=(0, 0, 0), std=(1, 1, 1), bgr=True)
    np.testing.assert_allclose(bgr, [[50, 100, 200]] * 2, rtol=1e-5)


def test_classifier_top_k_equals_stable_sort_with_ties():
    from restransfer.evaluation.imagenet_loc_guesses import top_columns

    rng = np.random.default_rng(0)
    for shape in ((500, 40), (50, 3)):
        scores = rng.integers(0, 6, shape).astype(np.float32)  # many ties
        np.testing.assert_array_equal(
            top_columns(scores, 5, chunk=64), np.argsort(-scores, axis=1, kind="stable")[:, :5]
        )
