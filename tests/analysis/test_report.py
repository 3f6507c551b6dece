"""report.html: written beside metrics.json by every evaluation (COCO, ImageNet-DET, ImageNet localization, and
training's final evaluation), self-contained (every image embedded and decodable), with the per-category table
and a gallery of at most ~24 drawn test images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from restransfer.analysis.report import (
    localization_error_split,
    report_images,
    write_coco_report,
)
from restransfer.config import load_config
from restransfer.engine import evaluate as run_module
from restransfer.evaluation.imagenet_loc import evaluate_localization, first_correct_guess, pack_ground_truth


def _decoded(path: Path):
    """(PNG plots, JPEG gallery images) of a report, each decoded by OpenCV."""
    pngs, jpegs = [], []
    for mime, data in report_images(path):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.size > 0, mime
        (pngs if mime == "image/png" else jpegs).append(image)
    return pngs, jpegs


def _predictions(gt: dict, image_ids, cat_to_label, rng_seed: int = 0):
    """Per-image predictions made from the ground truth: every object found with a jittered box except the
    first object of the first image (missed), plus one confident false positive per image."""
    rng = np.random.default_rng(rng_seed)
    by_image = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    preds = []
    for n, image_id in enumerate(image_ids):
        boxes, scores, labels = [], [], []
        for j, a in enumerate(by_image.get(image_id, [])):
            if n == 0 and j == 0:
                continue
            x, y, w, h = a["bbox"]
            boxes.append([x + rng.uniform(-1, 1), y + rng.uniform(-1, 1), x + w, y + h])
            scores.append(float(rng.uniform(0.5, 0.9)))
            labels.append(cat_to_label[a["category_id"]])
        boxes.append([1.0, 1.0, 12.0, 12.0])
        scores.append(0.95)
        labels.append(1)
        preds.append(
            {
                "image_id": int(image_id),
                "boxes": np.array(boxes, dtype=np.float32),
                "scores": np.array(scores, dtype=np.float32),
                "labels": np.array(labels, dtype=np.int64),
            }
        )
    return preds


@pytest.fixture()
def fake_inference(monkeypatch):
    """Evaluation entries see predictions made from the ground truth instead of a model's."""
    from restransfer.data.build import build_test_dataset

    def predict(cfg, weights=None, *, dataset=None, model=None, evaluator=None, progress=True):
        dataset = dataset if dataset is not None else build_test_dataset(cfg)
        cat_to_label = {c: k for k, c in dataset.label_to_cat_id.items()}
        predictions = _predictions(dataset.coco.dataset, dataset.image_ids, cat_to_label)
        if evaluator is not None:
            evaluator.process([{"image_id": p["image_id"]} for p in predictions], predictions)
        return dataset, predictions

    monkeypatch.setattr(run_module, "run_on_test_set", predict)


def _config(json_path, image_root, out, tiny_overrides):
    return load_config(
        None,
        tiny_overrides(
            "inference",
            f"data.test={{json: {json_path}, image_root: {image_root}}}",
            f"output_dir={out}",
            "model.arch=faster_rcnn",
        ),
    )


def test_coco_report_is_self_contained_with_table_plots_and_gallery(shapes, tmp_path):
    gt = json.loads((shapes / "annotations" / "val.json").read_text())
    ids = [im["id"] for im in gt["images"]]
    from restransfer.evaluation.coco import evaluate_coco, predictions_to_coco_results

    results = predictions_to_coco_results(_predictions(gt, ids, {1: 1, 2: 2, 3: 3}), {1: 1, 2: 2, 3: 3})
    metrics = evaluate_coco(gt, results, ["bbox"], engine="pycocotools")
    path = write_coco_report(tmp_path / "metrics.json", metrics, gt, results, image_root=shapes / "val")
    assert path == tmp_path / "report.html"
    text = path.read_text()
    pngs, jpegs = _decoded(path)
    assert len(pngs) == 3  # error breakdown, PR curves, confusion matrix
    assert 4 <= len(jpegs) <= 24
    assert all(max(j.shape[:2]) == 256 for j in jpegs)  # thumbnails, not full images
    assert 'class="sortable"' in text and "<script>" in text
    for c in gt["categories"]:
        assert f"<td>{c['name']}</td>" in text
    assert "missed: " in text and "worst false positive: " in text  # the known errors are shown
    assert f"{metrics['bbox']['AP']:.2f}" in text
    assert not re.search(r'src="(?!data:)', text)  # nothing is loaded from elsewhere


def test_coco_report_without_detections_or_images_says_so(shapes, tmp_path):
    gt = json.loads((shapes / "annotations" / "val.json").read_text())
    from restransfer.evaluation.coco import evaluate_coco

    metrics = evaluate_coco(gt, [], ["bbox"], engine="pycocotools", allow_empty=True)
    text = write_coco_report(tmp_path / "metrics.json", metrics, gt, []).read_text()
    assert "detected nothing" in text
    assert report_images(tmp_path / "report.html") == []


def test_run_coco_evaluation_writes_report_next_to_metrics(shapes, tmp_path, tiny_overrides, fake_inference):
    cfg = _config(shapes / "annotations" / "val.json", shapes / "val", tmp_path / "out", tiny_overrides)
    metrics = run_module.run_coco_evaluation(cfg, metrics_path=tmp_path / "out" / "eval" / "metrics.json")
    assert 0 < metrics["bbox"]["AP50"] < 100
    report = tmp_path / "out" / "eval" / "report.html"
    pngs, jpegs = _decoded(report)
    assert len(pngs) == 3 and jpegs
    assert f"{metrics['bbox']['AP50']:.2f}" in report.read_text()


def _ilsvrc_json(shapes: Path, tmp_path: Path) -> Path:
    """The shapes val set as a json of datasets/prepare_imagenet_{det,loc}.py: WNIDs, devkit image indices."""
    data = json.loads((shapes / "annotations" / "val.json").read_text())
    for c in data["categories"]:
        c["wnid"] = f"n0000000{c['id']}"
    for i, im in enumerate(data["images"], 1):
        im["ilsvrc_index"] = i
        im["ilsvrc_name"] = im["name"] = Path(im["file_name"]).stem
    path = tmp_path / "ilsvrc_val.json"
    path.write_text(json.dumps(data))
    return path


def test_imagenet_det_evaluation_writes_report(shapes, tmp_path, tiny_overrides, fake_inference):
    cfg = _config(_ilsvrc_json(shapes, tmp_path), shapes / "val", tmp_path / "det", tiny_overrides)
    ev = run_module.run_imagenet_det_evaluation(cfg)
    text = (tmp_path / "det" / "report.html").read_text()
    pngs, jpegs = _decoded(tmp_path / "det" / "report.html")
    assert len(pngs) == 4  # AP bars, devkit PR curves, PR curves of the COCO matches, confusion matrix
    assert jpegs
    assert f"{ev.result.mean_ap * 100:.2f}" in text
    assert "n00000001" in text and "circle" in text


def test_imagenet_loc_evaluation_writes_report(shapes, tmp_path, tiny_overrides, fake_inference):
    cfg = _config(_ilsvrc_json(shapes, tmp_path), shapes / "val", tmp_path / "loc", tiny_overrides)
    metrics = run_module.run_imagenet_loc_evaluation(cfg, mode="detector")
    text = (tmp_path / "loc" / "report.html").read_text()
    pngs, jpegs = _decoded(tmp_path / "loc" / "report.html")
    assert len(pngs) == 1 and jpegs
    assert f"{metrics['top5_loc_error']:.2f}" in text
    assert "wrong class" in text


def test_localization_error_split_adds_up_to_the_top5_error():
    from restransfer.data.ilsvrc import Synsets
    from restransfer.data.imagenet_loc import LocImage
    from restransfer.evaluation.imagenet_loc_io import LocSubmission

    syn = Synsets(("n1", "n2", "n3"), ("a", "b", "c"), "test", "test")
    box = np.array([[10.0, 10.0, 49.0, 49.0]])
    images = [
        LocImage(name=f"im{i}", file_name=f"im{i}.JPEG", labels=(w,), box_wnids=(w,), boxes=box)
        for i, w in enumerate(["n1", "n2", "n3", "n1"])
    ]
    gt = pack_ground_truth(images, syn)
    labels = np.array([[1, 2, 3, 0, 0], [1, 3, 0, 0, 0], [3, 0, 0, 0, 0], [2, 3, 0, 0, 0]])
    boxes = np.zeros((4, 5, 4))
    boxes[:] = [10, 10, 49, 49]
    boxes[2, 0] = [100, 100, 140, 140]  # right class, bad box
    sub = LocSubmission(labels=labels, boxes=boxes)
    # image 0 correct, image 1 wrong class (n2 never named), image 2 bad box, image 3 wrong class
    metrics = evaluate_localization(gt, sub)
    cls_rank, loc_rank = first_correct_guess(gt, sub)
    split = localization_error_split(cls_rank, loc_rank, gt.labels, np.ones(4, dtype=bool))
    assert split == pytest.approx({"correct": 25.0, "wrong class": 50.0, "right class, bad box": 25.0})
    assert split["wrong class"] + split["right class, bad box"] == pytest.approx(metrics["top5_loc_error"])


@pytest.mark.slow
def test_training_final_evaluation_writes_report(shapes, tmp_path, tiny_overrides):
    """train_det's final evaluation (through engine/evaluate.py) leaves report.html beside metrics.json."""
    from restransfer.engine.trainer import train

    out = tmp_path / "run"
    cfg = load_config(
        None,
        tiny_overrides(
            "training",
            f"data.train=[{{json: {shapes / 'annotations' / 'train.json'}, image_root: {shapes / 'train'}}}]",
            f"data.test={{json: {shapes / 'annotations' / 'val.json'}, image_root: {shapes / 'val'}}}",
            f"output_dir={out}",
            "model.arch=faster_rcnn",
            "model.roi_heads.score_thresh=0.0",
        ),
    )
    metrics = train(cfg)
    assert (out / "metrics.json").is_file()
    text = (out / "report.html").read_text()
    pngs, jpegs = _decoded(out / "report.html")
    assert f"{metrics['bbox']['AP']:.2f}" in text
    assert len(pngs) == 3 and 0 < len(jpegs) <= 24  # an untrained model with no score threshold detects plenty


def _tool(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_coco_results_file_mode_writes_report(shapes, tmp_path):
    from restransfer.cli import run_tool
    from restransfer.evaluation.coco import predictions_to_coco_results

    gt_path = shapes / "annotations" / "val.json"
    gt = json.loads(gt_path.read_text())
    results = predictions_to_coco_results(
        _predictions(gt, [im["id"] for im in gt["images"]], {1: 1, 2: 2, 3: 3}), {1: 1, 2: 2, 3: 3}
    )
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = tmp_path / "eval" / "metrics.json"
    assert (
        run_tool(
            _tool("eval_coco").main,
            [
                "--gt",
                str(gt_path),
                "--results",
                str(tmp_path / "res.json"),
                "--iou-type",
                "bbox",
                "--output",
                str(out),
                "--engine",
                "pycocotools",
            ],
        )
        == 0
    )
    pngs, jpegs = _decoded(out.with_name("report.html"))
    assert len(pngs) == 3 and not jpegs  # no gallery: the images are not known in this mode
    metrics = json.loads(out.read_text())
    assert f"{metrics['bbox']['AP75']:.2f}" in out.with_name("report.html").read_text()


def test_eval_imagenet_det_file_mode_writes_report(tmp_path):
    from helpers import imagenet_det_fixtures as det_files

    from restransfer.cli import run_tool

    w = det_files.WNIDS
    ann_dir, image_list = det_files.write_val(
        tmp_path / "ILSVRC",
        {
            "val_1": (100, 100, [(w[0], 10, 10, 49, 49), (w[1], 60, 60, 89, 89)]),
            "val_2": (100, 100, [(w[2], 20, 20, 59, 59)]),
        },
    )
    synsets = det_files.write_synsets(tmp_path / "map_det.txt", 3)
    # image 1: class 1 found, class 2 missed with a false positive; image 2: class 3 found
    (tmp_path / "sub.txt").write_text("1 1 0.9 10 10 49 49\n1 2 0.8 0 0 9 9\n2 3 0.7 20 20 59 59\n")
    out = tmp_path / "metrics.json"
    assert (
        run_tool(
            _tool("eval_imagenet_det").main,
            [
                "--submission",
                str(tmp_path / "sub.txt"),
                "--annotations",
                str(ann_dir),
                "--image-list",
                str(image_list),
                "--synsets",
                str(synsets),
                "--output",
                str(out),
            ],
        )
        == 0
    )
    text = (tmp_path / "report.html").read_text()
    pngs, jpegs = _decoded(tmp_path / "report.html")
    assert len(pngs) == 2 and not jpegs  # AP bars and the devkit PR curves
    assert "<td>accordion</td>" in text and "<td>100.00</td>" in text and "<td>0.00</td>" in text


def test_eval_imagenet_loc_file_mode_writes_report_with_the_error_split(tmp_path):
    from helpers import imagenet_loc_files as loc_files

    from restransfer.cli import run_tool

    wnids, names, order = loc_files.make_classes(3)
    box = (10, 10, 49, 49)
    images = [
        {"name": f"ILSVRC2012_val_{i:08d}", "labels": [w], "objects": [(w, box)], "width": 64, "height": 64}
        for i, w in enumerate([wnids[0], wnids[1], wnids[2], wnids[0]], 1)
    ]
    xml_dir, gt_file = loc_files.write_devkit(tmp_path, images, order)
    synsets = loc_files.write_map_clsloc(tmp_path / "map_clsloc.txt", order, dict(zip(wnids, names)))
    far = (0, 0, 5, 5)
    sub = loc_files.write_devkit_submission(
        tmp_path / "sub.txt",
        [
            [(wnids[0], box)],  # correct
            [(wnids[0], box), (wnids[2], box)],  # wrong class
            [(wnids[2], far)],  # right class, bad box
            [(wnids[0], far), (wnids[1], box)],  # right class, bad box
        ],
        order,
    )
    out = tmp_path / "metrics.json"
    assert (
        run_tool(
            _tool("eval_imagenet_loc").main,
            [
                "--submission",
                str(sub),
                "--annotations",
                str(xml_dir),
                "--ground-truth",
                str(gt_file),
                "--synsets",
                str(synsets),
                "--output",
                str(out),
            ],
        )
        == 0
    )
    assert json.loads(out.read_text())["top5_loc_error"] == pytest.approx(75.0)
    text = (tmp_path / "report.html").read_text()
    pngs, jpegs = _decoded(tmp_path / "report.html")
    assert len(pngs) == 1 and not jpegs
    cells = re.findall(r"<td>([0-9.]+)</td>", text.split("Localization errors")[1])[:3]
    assert cells == ["25.00", "25.00", "50.00"]  # correct, wrong class, right class with a bad box


def test_large_sets_are_analysed_on_evenly_spaced_images(shapes, tmp_path, monkeypatch):
    from restransfer.analysis import report
    from restransfer.evaluation.coco import evaluate_coco, predictions_to_coco_results

    monkeypatch.setattr(report, "MAX_ANALYSED_IMAGES", 2)
    gt = json.loads((shapes / "annotations" / "val.json").read_text())
    ids = [im["id"] for im in gt["images"]]
    results = predictions_to_coco_results(_predictions(gt, ids, {1: 1, 2: 2, 3: 3}), {1: 1, 2: 2, 3: 3})
    metrics = evaluate_coco(gt, results, ["bbox"], engine="pycocotools")
    text = write_coco_report(tmp_path / "metrics.json", metrics, gt, results, image_root=shapes / "val").read_text()
    assert "cover 2 evenly spaced images of the 4 evaluated" in text
    files = {im["id"]: im["file_name"] for im in gt["images"]}
    shown = set(re.findall(r"<figcaption>[^<]*\((\d+\.png)\)</figcaption>", text))
    assert shown and shown <= {files[ids[0]], files[ids[2]]}


# ------------------------------------------------------------------------------------ test.report


@pytest.mark.parametrize("mode, written", [("final", True), ("always", True), ("never", False)])
def test_eval_only_writes_the_report_unless_never(shapes, tmp_path, tiny_overrides, fake_inference, mode, written):
    """--eval-only is a final evaluation: report.html under test.report final and always, none under never
    (the metrics are written either way)."""
    from restransfer.engine.trainer import evaluate_only

    out = tmp_path / "out"
    cfg = _config(shapes / "annotations" / "val.json", shapes / "val", out, tiny_overrides)
    cfg.test.report = mode
    cfg.model.weights = str(tmp_path / "unused.pth")  # the fake inference builds no model
    metrics = evaluate_only(cfg)
    assert 0 < metrics["bbox"]["AP50"] < 100 and (out / "metrics.json").is_file()
    assert (out / "report.html").is_file() == written


@pytest.mark.parametrize("mode, tool_reports", [("final", True), ("never", False)])
def test_eval_tools_follow_test_report(shapes, tmp_path, tiny_overrides, fake_inference, mode, tool_reports):
    """The ImageNet-DET and localization config modes are final evaluations too."""
    cfg = _config(_ilsvrc_json(shapes, tmp_path), shapes / "val", tmp_path / "det", tiny_overrides)
    cfg.test.report = mode
    assert run_module.run_imagenet_det_evaluation(cfg) is not None
    assert (tmp_path / "det" / "metrics.json").is_file()
    assert (tmp_path / "det" / "report.html").is_file() == tool_reports
    cfg.output_dir = str(tmp_path / "loc")
    run_module.run_imagenet_loc_evaluation(cfg, mode="detector")
    assert (tmp_path / "loc" / "report.html").is_file() == tool_reports


@pytest.mark.slow
@pytest.mark.parametrize("mode, reports", [("final", 1), ("always", 2), ("never", 0)])
def test_periodic_evaluations_write_no_report_under_final(shapes, tmp_path, tiny_overrides, monkeypatch, mode, reports):
    """Two iterations with test.eval_period=1: one periodic evaluation (iteration 1) and the final one. Only
    test.report=always makes the periodic one write report.html; never writes none at all."""
    from restransfer.engine.trainer import train

    calls = []

    def counted(evaluator, dataset):
        calls.append(evaluator.name)
        return report_of(evaluator, dataset)

    report_of = run_module.evaluation_report
    monkeypatch.setattr(run_module, "evaluation_report", counted)
    out = tmp_path / "run"
    cfg = load_config(
        None,
        tiny_overrides(
            "training",
            f"data.train=[{{json: {shapes / 'annotations' / 'train.json'}, image_root: {shapes / 'train'}}}]",
            f"data.test={{json: {shapes / 'annotations' / 'val.json'}, image_root: {shapes / 'val'}}}",
            f"output_dir={out}",
            "model.arch=faster_rcnn",
            "test.eval_period=1",
            f"test.report={mode}",
        ),
    )
    train(cfg)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "bbox/AP" in r] == [1]  # the periodic evaluation ran
    assert calls == ["coco"] * reports
    assert (out / "report.html").is_file() == (mode != "never")


def test_a_report_that_cannot_be_made_is_a_warning_not_an_error(tmp_path, caplog):
    from restransfer.analysis import run_reports

    metrics_path = tmp_path / "eval" / "metrics.json"
    metrics_path.parent.mkdir()
    metrics_path.write_text("{}")
    with caplog.at_level("WARNING", logger=run_reports.__name__):
        # the ground truth and results files do not exist: the report fails inside, after the metrics
        assert (
            run_reports.coco_files_report(metrics_path, {}, tmp_path / "missing.json", tmp_path / "none.json") is None
        )
    assert f"{metrics_path.with_name('report.html')} not written" in caplog.text
    assert not metrics_path.with_name("report.html").exists()
    with pytest.raises(TypeError):  # a call that does not fit the function is a bug, not a report failure
        run_reports.coco_files_report(metrics_path, {}, tmp_path / "missing.json")
