"""The COCO error breakdown (cocoapi analyze()), the confusion matrix, the detection plots and the training
curves: invariants on a fixture whose errors are known, and the tools' files and errors."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from restransfer.analysis.coco_errors import CURVES, analyze_coco_errors
from restransfer.analysis.curves import plot_runs, read_run, smooth
from restransfer.analysis.detection_plots import confusion_matrix
from restransfer.cli import run_tool
from restransfer.evaluation.coco import evaluate_coco

REPO = Path(__file__).resolve().parents[2]
CATS = [
    {"id": 1, "name": "cat", "supercategory": "animal"},
    {"id": 2, "name": "dog", "supercategory": "animal"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def gt():
    """6 images of 100 px; image i holds one object of category i % 3 + 1 at (20, 20, 40 x 40) and, on images
    0-2, a second one of the same category at (60, 60, 30 x 30)."""
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(6)]
    anns = []
    for i in range(6):
        boxes = [[20, 20, 40, 40]] + ([[60, 60, 30, 30]] if i < 3 else [])
        for b in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": i % 3 + 1,
                    "bbox": b,
                    "area": b[2] * b[3],
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(CATS)}


def _perfect(gt, score: float = 0.8):
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
        for a in gt["annotations"]
    ]


def _areas(gt, results, **kwargs):
    return analyze_coco_errors(gt, results, "bbox", **kwargs).to_json()


def _assert_monotone(table):
    values = [table[c] for c in CURVES]
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:])), table


def test_perfect_detections_score_100_everywhere(gt):
    out = _areas(gt, _perfect(gt))
    for table in [out["overall"]] + list(out["per_category"].values()):
        assert table == pytest.approx({c: 100.0 for c in CURVES})


def test_localization_error_moves_from_c75_and_c50_to_loc(gt):
    results = _perfect(gt)
    # the dog on image 2 (20, 20, 40 x 40) found at (34, 34, 40 x 40): IoU 0.22, between .1 and .5
    dog = next(r for r in results if r["image_id"] == 2 and r["bbox"] == [20, 20, 40, 40])
    dog["bbox"], dog["score"] = [34, 34, 40, 40], 0.95
    out = _areas(gt, results)
    d = out["per_category"]["dog"]
    assert d["C75"] < 100 and d["C50"] < 100
    assert d["Loc"] == pytest.approx(100.0)
    assert out["per_category"]["cat"]["C75"] == pytest.approx(100.0)
    _assert_monotone(d)


def test_similar_class_confusion_is_removed_by_sim(gt):
    results = _perfect(gt)
    # a confident "cat" on the dog of image 2: same supercategory (animal)
    results.append({"image_id": 2, "category_id": 1, "bbox": [20, 20, 40, 40], "score": 0.95})
    cat = _areas(gt, results)["per_category"]["cat"]
    assert cat["Loc"] < 100
    assert cat["Sim"] == pytest.approx(100.0) and cat["Oth"] == pytest.approx(100.0)


def test_other_class_confusion_is_removed_by_oth_only(gt):
    results = _perfect(gt)
    # a confident "car" on the dog of image 2: another supercategory
    results.append({"image_id": 2, "category_id": 3, "bbox": [20, 20, 40, 40], "score": 0.95})
    car = _areas(gt, results)["per_category"]["car"]
    assert car["Loc"] < 100 and car["Sim"] < 100
    assert car["Sim"] == pytest.approx(car["Loc"])
    assert car["Oth"] == pytest.approx(100.0)


def test_background_false_positive_is_removed_by_bg(gt):
    results = _perfect(gt)
    results.append({"image_id": 1, "category_id": 3, "bbox": [0, 70, 20, 20], "score": 0.95})  # on nothing
    car = _areas(gt, results)["per_category"]["car"]
    assert car["Oth"] < 100
    assert car["BG"] == pytest.approx(100.0)


def test_missed_object_is_removed_by_fn_only(gt):
    results = [r for r in _perfect(gt) if not (r["image_id"] == 1 and r["bbox"] == [60, 60, 30, 30])]
    cat = _areas(gt, results)["per_category"]["cat"]
    assert cat["BG"] < 100
    assert cat["FN"] == pytest.approx(100.0)


def test_without_supercategories_sim_equals_oth(gt):
    for c in gt["categories"]:
        del c["supercategory"]
    results = _perfect(gt)
    results.append({"image_id": 2, "category_id": 1, "bbox": [20, 20, 40, 40], "score": 0.95})
    cat = _areas(gt, results)["per_category"]["cat"]
    assert cat["Sim"] == pytest.approx(cat["Oth"]) and cat["Sim"] == pytest.approx(100.0)
    assert cat["Loc"] < 100


def test_c75_and_c50_equal_coco_ap75_ap50_and_curves_never_decrease(gt):
    rng = np.random.default_rng(0)
    results = []
    for a in gt["annotations"] * 3:  # three noisy detections per object, some with the wrong class
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 6, 4)
        cat = a["category_id"] if rng.random() > 0.25 else int(rng.integers(1, 4))
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": cat,
                "score": float(rng.random()),
                "bbox": [x + jitter[0], y + jitter[1], max(4.0, w + jitter[2]), max(4.0, h + jitter[3])],
            }
        )
    results += [
        {
            "image_id": int(rng.integers(1, 7)),
            "category_id": int(rng.integers(1, 4)),
            "score": float(rng.random()),
            "bbox": [float(rng.integers(0, 80)), float(rng.integers(0, 80)), 15, 15],
        }
        for _ in range(10)
    ]
    analysis = analyze_coco_errors(gt, results, "bbox")
    coco = evaluate_coco(gt, results, ["bbox"], engine="pycocotools")["bbox"]
    out = analysis.to_json()
    assert out["overall"]["C75"] == pytest.approx(coco["AP75"], abs=1e-9)
    assert out["overall"]["C50"] == pytest.approx(coco["AP50"], abs=1e-9)
    assert 0 < out["overall"]["C75"] < out["overall"]["C50"] < out["overall"]["BG"] <= 100
    for table in [out["overall"]] + list(out["per_category"].values()) + list(out["per_area"].values()):
        if table["C75"] is not None:
            _assert_monotone(table)
    for k in range(3):  # pointwise, at every recall threshold
        curves = analysis.curves(k)
        assert np.all(np.diff(curves, axis=0) >= -1e-12)


def test_confusion_matrix_counts_known_errors(gt):
    results = _perfect(gt)
    dog = next(r for r in results if r["image_id"] == 2 and r["bbox"] == [20, 20, 40, 40])
    dog["category_id"] = 1  # the dog taken for a cat
    results.append({"image_id": 1, "category_id": 3, "bbox": [0, 70, 20, 20], "score": 0.9})  # a car on nothing
    results = [r for r in results if not (r["image_id"] == 3 and r["bbox"] == [60, 60, 30, 30])]  # a missed car
    results.append({"image_id": 4, "category_id": 1, "bbox": [20, 20, 40, 40], "score": 0.1})  # under 0.3: left out
    matrix, names = confusion_matrix(gt, results)
    assert names == ["cat", "dog", "car"]
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 3  # cats: images 0, 3 and the second object of image 0
    expected[1, 1], expected[1, 0] = 2, 1  # dogs: images 4 and the second of 1 right, image 1's first as a cat
    expected[2, 2], expected[2, 3] = 2, 1  # cars: images 2, 5 right, the second of image 2 missed
    expected[3, 2] = 1  # the car on background
    np.testing.assert_array_equal(matrix, expected)


def test_bad_results_are_named_errors(gt):
    with pytest.raises(ValueError, match="no detections"):
        analyze_coco_errors(gt, [], "bbox", results_name="r.json")
    other = [{**r, "image_id": r["image_id"] + 100} for r in _perfect(gt)]
    with pytest.raises(ValueError, match="image ids that the ground truth does not have"):
        analyze_coco_errors(gt, other, "bbox", results_name="r.json")


def test_analyze_coco_tool_writes_json_and_pngs(gt, tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = _perfect(gt)
    results.append({"image_id": 2, "category_id": 3, "bbox": [20, 20, 40, 40], "score": 0.95})
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = tmp_path / "analysis"
    tool = _tool("analyze_coco")
    assert (
        run_tool(
            tool.main,
            [
                "--gt",
                str(tmp_path / "gt.json"),
                "--results",
                str(tmp_path / "res.json"),
                "--iou-type",
                "bbox",
                "--output",
                str(out),
            ],
        )
        == 0
    )
    data = json.loads((out / "analysis.json").read_text())
    assert set(data) >= {"overall", "per_category"}
    assert set(data["overall"]) == set(CURVES)
    assert data["per_category"]["car"]["Oth"] == pytest.approx(100.0) and data["per_category"]["car"]["Loc"] < 100
    for name in ("overall-bbox", "cat-bbox", "dog-bbox", "car-bbox", "pr_curves-bbox", "confusion_matrix"):
        image = cv2.imread(str(out / f"{name}.png"))
        assert image is not None and image.shape[0] > 100 and image.std() > 10, name
    assert len(list(out.iterdir())) == 7  # analysis.json, 4 breakdowns, PR curves, confusion matrix
    (tmp_path / "empty.json").write_text("[]")
    assert (
        run_tool(
            tool.main,
            [
                "--gt",
                str(tmp_path / "gt.json"),
                "--results",
                str(tmp_path / "empty.json"),
                "--output",
                str(tmp_path / "x"),
            ],
        )
        == 2
    )
    assert "empty.json: no detections" in capsys.readouterr().err
    assert not (tmp_path / "x" / "analysis.json").exists()


# ------------------------------------------------------------------------------------------- curves


def _write_run(folder: Path, losses, lr0: float, eval_at=None, final_ap=None) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for i, loss in enumerate(losses, 1):
        lines.append(
            {
                "iteration": 10 * i,
                "total_loss": loss,
                "loss_classifier": loss / 2,
                "lr": lr0 * i,
                "images_seen": 40 * i,
                "time": 0.1,
                "data_time": 0.01,
            }
        )
        if eval_at == 10 * i:
            lines.append({"iteration": 10 * i, "bbox/AP": 12.5, "bbox/AP50": 30.0, "images_seen": 40 * i})
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if final_ap is not None:
        (folder / "metrics.json").write_text(json.dumps({"bbox": {"AP": final_ap, "AP50": 50.0, "per_category": {}}}))
    return folder


def test_smooth_is_a_centred_moving_average():
    v = np.array([0.0, 3.0, 6.0, 9.0, 12.0])
    np.testing.assert_allclose(smooth(v, 3), [1.5, 3.0, 6.0, 9.0, 10.5])
    np.testing.assert_allclose(smooth(v, 1), v)


def test_read_run_keeps_the_last_record_of_a_resumed_iteration(tmp_path):
    run_dir = _write_run(tmp_path / "a", [4.0, 3.0, 2.0], 0.01, eval_at=20, final_ap=40.0)
    with open(run_dir / "log.jsonl", "a") as f:  # a resume that repeats iteration 30
        f.write(json.dumps({"iteration": 30, "total_loss": 1.0, "lr": 0.03, "images_seen": 120}) + "\n")
    run = read_run(run_dir)
    its, images, values = run.series["total_loss"]
    np.testing.assert_array_equal(its, [10, 20, 30])
    np.testing.assert_array_equal(values, [4.0, 3.0, 1.0])
    np.testing.assert_array_equal(run.series["bbox/AP"][2], [12.5])
    assert run.final["bbox/AP"] == (30.0, 120.0, 40.0)


def test_plot_logs_overlays_two_runs(tmp_path, capsys):
    a = _write_run(tmp_path / "run_a", [4.0, 3.0, 2.5, 2.0, 1.8], 0.01, eval_at=30, final_ap=41.0)
    b = _write_run(tmp_path / "run_b", [5.0, 3.5, 2.0], 0.02)
    out = tmp_path / "curves.png"
    assert run_tool(_tool("plot_logs").main, [str(a), str(b), "--output", str(out)]) == 0
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] > 800
    printed = capsys.readouterr().out
    assert "total_loss: run_a (5 points), run_b (3 points)" in printed
    assert "bbox/AP: run_a (2 points)" in printed  # the periodic evaluation and the final metrics.json
    drawn = plot_runs([a, b], tmp_path / "lr.png", keys=["lr"], x="images")
    assert drawn == {"lr": {"run_a": 5, "run_b": 3}}


def test_plot_logs_errors_name_the_problem(tmp_path, capsys):
    tool = _tool("plot_logs")
    (tmp_path / "empty_dir").mkdir()
    assert run_tool(tool.main, [str(tmp_path / "empty_dir"), "--output", str(tmp_path / "c.png")]) == 2
    assert "empty_dir has no log.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "log.jsonl").write_text('{"iteration": 1, "total_loss": 1.0}\n{"iteration": 2,\n')
    assert run_tool(tool.main, [str(bad), "--output", str(tmp_path / "c.png")]) == 2
    assert "log.jsonl: line 2: not valid JSON" in capsys.readouterr().err
    good = _write_run(tmp_path / "good", [1.0, 0.5], 0.01)
    assert run_tool(tool.main, [str(good), "--keys", "loss_mask", "--output", str(tmp_path / "c.png")]) == 2
    assert "key 'loss_mask' is in no run's log.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.slow
def test_analyze_coco_tool_config_mode_analyses_the_models_detections(shapes, tmp_path, monkeypatch, capsys):
    """CONFIG --weights runs the model over data.test (here replaced by exact detections of every object but one)
    and analyses what it found."""
    from restransfer.data.build import build_test_dataset
    from restransfer.engine import evaluate as protocol_run

    def predict(cfg, weights=None, dataset=None, model=None, progress=True):
        dataset = build_test_dataset(cfg)
        by_image = {}
        for a in dataset.coco.dataset["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        label = {c: k for k, c in dataset.label_to_cat_id.items()}
        preds = []
        for n, i in enumerate(dataset.image_ids):
            anns = by_image.get(i, [])[1 if n == 0 else 0 :]  # the first object of the first image is missed
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
            preds.append(
                {
                    "image_id": i,
                    "boxes": boxes,
                    "scores": np.full(len(anns), 0.9),
                    "labels": np.array([label[a["category_id"]] for a in anns], dtype=np.int64),
                }
            )
        return dataset, preds

    monkeypatch.setattr(protocol_run, "predict_dataset", predict)  # the tool calls it through the module
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"data:\n  test: {{json: {shapes / 'annotations' / 'val.json'}, image_root: {shapes / 'val'}}}\n"
        f"model: {{num_classes: 3}}\noutput_dir: {tmp_path / 'out'}\n"
    )
    out = tmp_path / "analysis"
    assert run_tool(_tool("analyze_coco").main, [str(config), "--weights", "model.pth", "--output", str(out)]) == 0
    data = json.loads((out / "analysis.json").read_text())
    overall = data["overall"]
    assert overall["C75"] == pytest.approx(overall["BG"]) and overall["BG"] < 100  # only a miss: nothing else
    assert overall["FN"] == pytest.approx(100.0)
    assert "C75" in capsys.readouterr().out


def _reference_relabelled(gt, results, cat_id, relabel):
    """Sim/Oth as the cocoapi's python port computes them: every image, every category id evaluated, the
    category's detections only, the relabelled ground truth as ignored crowd regions; (R, A) at IoU .1."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        for a in coco_gt.dataset["annotations"]:
            if a["category_id"] in relabel:
                a.update(category_id=cat_id, iscrowd=1, ignore=1)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(r) for r in results if r["category_id"] == cat_id])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array([0.1])
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    k = sorted(c["id"] for c in gt["categories"]).index(cat_id)
    p = ev.eval["precision"][0, :, k, :, 0]
    return np.where(p == -1, 0, p)


def test_sim_and_oth_equal_the_reference_computation(gt):
    rng = np.random.default_rng(1)
    results = []
    for a in gt["annotations"] * 2:
        x, y, w, h = a["bbox"]
        cat = a["category_id"] if rng.random() > 0.4 else int(rng.integers(1, 4))
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": cat,
                "score": float(rng.random()),
                "bbox": [x + rng.normal(0, 5), y + rng.normal(0, 5), w, h],
            }
        )
    analysis = analyze_coco_errors(gt, results, "bbox")
    sim_cats = {1: {2}, 2: {1}, 3: set()}
    for k, cat_id in enumerate(analysis.cat_ids):
        valid = analysis.precision[0, 0, k] > -1  # size ranges with objects of the category
        oth = _reference_relabelled(gt, results, cat_id, {1, 2, 3} - {cat_id})
        sim = _reference_relabelled(gt, results, cat_id, sim_cats[cat_id])
        np.testing.assert_allclose(analysis.precision[4, :, k][:, valid], oth[:, valid], atol=1e-12)
        np.testing.assert_allclose(analysis.precision[3, :, k][:, valid], sim[:, valid], atol=1e-12)
    assert analysis.areas()["Sim"] < analysis.areas()["Oth"]  # the fixture has confusions across supercategories


def test_area_all_only_gives_the_same_overall_curves(gt):
    results = _perfect(gt)
    results.append({"image_id": 2, "category_id": 1, "bbox": [20, 20, 40, 40], "score": 0.95})
    results.append({"image_id": 1, "category_id": 3, "bbox": [0, 70, 20, 20], "score": 0.9})
    full = analyze_coco_errors(gt, results, "bbox")
    lean = analyze_coco_errors(gt, results, "bbox", sizes=False)
    assert lean.precision.shape[3] == 1 and full.precision.shape[3] == 4
    np.testing.assert_array_equal(lean.precision[..., 0], full.precision[..., 0])
    assert lean.to_json()["per_area"] == {} and set(full.to_json()["per_area"]) == {"small", "medium", "large"}
