"""End to end, from devkit files to metrics: tiny ILSVRC layouts (real JPEGs, XML, image lists, class lists) made
here -> datasets/prepare_imagenet_*.py -> a few training iterations with the repository's ImageNet configs
(shrunk by overrides) -> tools/eval_imagenet_*.py in CONFIG mode. The submissions those runs write must pass
the devkit's format rules and evaluate, in the tools' file mode, to the numbers the CONFIG mode reported.

The configs' own ``datasets/ILSVRC/...`` paths are used unchanged: ``RESTRANSFER_DATASETS`` points them here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import pytest
from helpers import imagenet_det_fixtures as det_files
from helpers import imagenet_loc_files as loc_files

pytestmark = pytest.mark.slow  # every test reads a run of train_det and the evaluation tools
REPO = Path(__file__).resolve().parents[2]
COLORS = [(40, 40, 220), (40, 200, 40), (220, 60, 40)]  # BGR fill of class 1, 2, 3


def _tool(relpath: str):
    """A repository script as a module, so its ``main(argv)`` runs in this process (no interpreter start-up)."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_objects(rng: np.random.Generator, w: int, h: int, classes: Sequence[int]) -> List[Tuple[int, tuple]]:
    """One inclusive devkit box (xmin, ymin, xmax, ymax) of 20-40 px inside a w x h image per class index."""
    out = []
    for c in classes:
        bw, bh = int(rng.integers(20, 41)), int(rng.integers(20, 41))
        x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        out.append((c, (x1, y1, x1 + bw - 1, y1 + bh - 1)))
    return out


def _write_jpeg(path: Path, w: int, h: int, objects: Sequence[Tuple[int, tuple]], rng: np.random.Generator) -> None:
    """A w x h JPEG: grey noise with each object's box filled in its class colour (devkit boxes are inclusive)."""
    img = rng.integers(90, 150, size=(h, w, 3), dtype=np.uint8)
    for c, (x1, y1, x2, y2) in objects:
        img[y1 : y2 + 1, x1 : x2 + 1] = COLORS[c]
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img), path


@pytest.fixture(scope="module")
def tiny(tiny_overrides):
    """``tiny(out, num_classes, iters=3)``: overrides that shrink an R-101 C4 ImageNet config to a ResNet-18
    C4 that trains in seconds on CPU (images of 64-96 px, anchors to match, the configs' one image per device,
    a step before the last iteration)."""

    def make(out: Path, num_classes: int, iters: int = 3) -> List[str]:
        return tiny_overrides(
            "training",
            model__num_classes=num_classes,
            model__anchor__sizes="[16,32,64]",
            model__rpn__pre_nms_top_n_test=64,
            model__roi_heads__c4_pooler_resolution=8,
            input__max_size_train=96,
            input__max_size_test=96,
            solver__ims_per_device=1,
            solver__max_iter=iters,
            solver__steps=f"[{iters - 1}]",
            output_dir=out,
        )

    return make


def _in_range(value) -> bool:
    """A percentage."""
    return isinstance(value, float) and 0.0 <= value <= 100.0


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
    """The ILSVRC folder of both pipelines, where the configs' ``datasets/ILSVRC`` paths point."""
    ds = tmp_path_factory.mktemp("datasets")
    mp = pytest.MonkeyPatch()
    mp.setenv("RESTRANSFER_DATASETS", str(ds))
    yield ds / "ILSVRC"
    mp.undo()


# ------------------------------------------------------------------------------------------ ImageNet-DET


@pytest.fixture(scope="module")
def det_run(ilsvrc, tiny, tmp_path_factory):
    """ILSVRC DET layout (6 train + 8 val images, 3 classes) -> train/val1/val2 jsons -> 3 iterations of
    configs/imagenet_det_faster_rcnn_r101.yaml -> its CONFIG-mode evaluation on val2."""
    root, work = ilsvrc, tmp_path_factory.mktemp("det_work")
    k = 3
    wnids = det_files.WNIDS[:k]
    synsets = det_files.write_synsets(root / "devkit" / "data" / "map_det.txt", k)
    rng = np.random.default_rng(0)

    def layout(subset: str, names: Sequence[str], class_sets: Sequence[Sequence[int]]) -> Dict[str, tuple]:
        images = {}
        for name, classes in zip(names, class_sets):
            w, h = int(rng.integers(64, 97)), int(rng.integers(64, 97))
            objects = _random_objects(rng, w, h, classes)
            _write_jpeg(root / "Data" / "DET" / subset / f"{name}.JPEG", w, h, objects, rng)
            images[name] = (w, h, [(wnids[c], *box) for c, box in objects])
        return images

    train_classes = [[0], [1], [2], [0, 1], [1, 2], [2, 0]]
    train_names = [f"ILSVRC2013_train/{wnids[cs[0]]}/{wnids[cs[0]]}_{i:08d}" for i, cs in enumerate(train_classes)]
    train = layout("train", train_names, train_classes)
    flags = {n: [1 if c in cs else -1 for c in range(k)] for n, cs in zip(train_names, train_classes)}
    det_files.write_train(root, train, k, flags)
    val_classes = [[0], [1], [2], [0, 2], [1], [2], [0], [1, 0]]
    val = layout("val", [f"ILSVRC2012_val_{i:08d}" for i in range(1, 9)], val_classes)
    det_files.write_val(root, val)

    prepare = _tool("datasets/prepare_imagenet_det.py")
    for split in ("train", "val1", "val2"):  # default --root datasets/ILSVRC and outputs: the config's paths
        assert prepare.main(["--split", split]) == 0, split

    config = str(REPO / "configs" / "imagenet_det_faster_rcnn_r101.yaml")
    train_out = work / "train"
    assert _tool("tools/train_det.py").main([config, *tiny(train_out, k), "data.test=null"]) == 0
    eval_out = work / "eval"
    tool = _tool("tools/eval_imagenet_det.py")
    # three iterations leave every class score below the config's 0.05 threshold; keep all detections
    assert (
        tool.main(
            [
                config,
                "--weights",
                str(train_out / "model_final.pth"),
                *tiny(eval_out, k),
                "model.roi_heads.score_thresh=0.0",
            ]
        )
        == 0
    )
    return {
        "root": root,
        "synsets": synsets,
        "val": val,
        "wnids": wnids,
        "eval_out": eval_out,
        "tool": tool,
        "work": work,
    }


def test_det_prepared_splits_follow_the_config(det_run):
    root = det_run["root"]
    jsons = {
        s: json.loads((root / "annotations" / f"imagenet_det_{s}.json").read_text()) for s in ("train", "val1", "val2")
    }
    assert len(jsons["train"]["images"]) == 6
    assert len(jsons["val1"]["images"]) + len(jsons["val2"]["images"]) == 8
    assert len(jsons["val2"]["images"]) >= 3
    # the val2 image list next to its json holds exactly the val2 images with their val.txt indices
    listed = [line.split() for line in (root / "annotations" / "imagenet_det_val2.txt").read_text().splitlines()]
    assert sorted((n, int(i)) for n, i in listed) == sorted(
        (im["ilsvrc_name"], im["ilsvrc_index"]) for im in jsons["val2"]["images"]
    )
    assert (root / "Data" / "DET" / jsons["train"]["images"][0]["file_name"]).is_file()


def test_det_config_mode_writes_a_devkit_submission_and_metrics(det_run):
    root, val, wnids = det_run["root"], det_run["val"], det_run["wnids"]
    index_size = {}
    for line in (root / "annotations" / "imagenet_det_val2.txt").read_text().splitlines():
        name, index = line.split()
        index_size[int(index)] = val[name][:2]
    lines = (det_run["eval_out"] / "imagenet_det_submission.txt").read_text().splitlines()
    assert lines, "the model made no detections on val2; the checks below would be vacuous"
    for i, line in enumerate(lines, 1):
        fields = line.split()
        assert len(fields) == 7, (i, line)
        index, det_id, score, x1, y1, x2, y2 = int(fields[0]), int(fields[1]), *map(float, fields[2:])
        assert index in index_size, (i, line)
        assert 1 <= det_id <= len(wnids) and 0.0 <= score <= 1.0, (i, line)
        w, h = index_size[index]
        # devkit boxes are inclusive pixel indices: the last column/row of a w x h image is w - 1 / h - 1
        assert 0.0 <= x1 <= x2 + 1.0 and x2 <= w - 1 and 0.0 <= y1 <= y2 + 1.0 and y2 <= h - 1, (i, line, w, h)

    metrics = json.loads((det_run["eval_out"] / "metrics.json").read_text())
    assert set(metrics) == {"mAP", "AP", "coco"}
    assert set(metrics["AP"]) == set(wnids) and set(metrics["coco"]) == {"AP", "AP50"}
    aps = [v for v in metrics["AP"].values() if v is not None]
    assert aps and all(_in_range(v) for v in aps)
    assert _in_range(metrics["mAP"]) and metrics["mAP"] == pytest.approx(np.mean(aps))
    assert _in_range(metrics["coco"]["AP"]) and _in_range(metrics["coco"]["AP50"])


def test_det_file_mode_reproduces_config_mode(det_run):
    root, out = det_run["root"], det_run["work"] / "file_metrics.json"
    assert (
        det_run["tool"].main(
            [
                "--submission",
                str(det_run["eval_out"] / "imagenet_det_submission.txt"),
                "--annotations",
                str(root / "Annotations" / "DET" / "val"),
                "--image-list",
                str(root / "annotations" / "imagenet_det_val2.txt"),
                "--synsets",
                str(det_run["synsets"]),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    # the submission stores float64 exactly and the json keeps the devkit's integer boxes: identical numbers
    assert json.loads(out.read_text()) == json.loads((det_run["eval_out"] / "metrics.json").read_text())


def test_det_training_tracks_devkit_map_at_each_periodic_evaluation(det_run, tiny):
    """An ImageNet-DET config trained with test.eval_period: test.evaluator=auto picks the devkit evaluator
    for the imagenet_det test set, so log.jsonl gets imagenet_det/mAP (not COCO's bbox/AP), model_best.pth
    keeps the best of it, and the final metrics.json is the devkit's."""
    config = str(REPO / "configs" / "imagenet_det_faster_rcnn_r101.yaml")
    out = det_run["work"] / "periodic"
    assert (
        _tool("tools/train_det.py").main(
            [config, *tiny(out, 3, iters=3), "test.eval_period=1", "model.roi_heads.score_thresh=0.0"]
        )
        == 0
    )
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "imagenet_det/mAP" in r]
    assert [r["iteration"] for r in evaluations] == [1, 2]  # the final evaluation is metrics.json's
    assert all(_in_range(r["imagenet_det/mAP"]) for r in evaluations)
    assert not any("bbox/AP" in r for r in records)
    best = max(evaluations, key=lambda r: r["imagenet_det/mAP"])
    from restransfer.engine.checkpoint import Checkpointer

    state = Checkpointer.load(out / "model_best.pth")
    assert state["best"] == pytest.approx(best["imagenet_det/mAP"])
    assert set(json.loads((out / "metrics.json").read_text())) == {"mAP", "AP", "coco"}
    assert (out / "imagenet_det_submission.txt").is_file() and (out / "report.html").is_file()


def _metrics_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _metrics_equal(a[key], b[key])
        else:
            assert a[key] == pytest.approx(b[key]), key


def test_det_tool_runs_the_paper_system(det_run, tiny):
    """The paper's test-time switches through the DET tool: a model ensembled with itself gives its own
    metrics; box refinement with flipped testing writes a devkit submission of the same classes and images."""
    config = str(REPO / "configs" / "imagenet_det_faster_rcnn_r101.yaml")
    weights = str(det_run["work"] / "train" / "model_final.pth")
    ensemble = det_run["work"] / "ensemble"
    assert (
        det_run["tool"].main(
            [config, "--weights", weights, weights, *tiny(ensemble, 3), "model.roi_heads.score_thresh=0.0"]
        )
        == 0
    )
    _metrics_equal(
        json.loads((ensemble / "metrics.json").read_text()),
        json.loads((det_run["eval_out"] / "metrics.json").read_text()),
    )
    refined = det_run["work"] / "refined"
    assert (
        det_run["tool"].main(
            [
                config,
                "--weights",
                weights,
                *tiny(refined, 3),
                "model.roi_heads.score_thresh=0.0",
                "test.box_refinement=true",
                "test.aug.flip=true",
            ]
        )
        == 0
    )
    plain_lines = (det_run["eval_out"] / "imagenet_det_submission.txt").read_text().splitlines()
    lines = (refined / "imagenet_det_submission.txt").read_text().splitlines()
    assert lines and {ln.split()[0] for ln in lines} <= {ln.split()[0] for ln in plain_lines}
    assert {int(ln.split()[1]) for ln in lines} <= set(range(1, 4))
    assert set(json.loads((refined / "metrics.json").read_text())) == {"mAP", "AP", "coco"}


# --------------------------------------------------------------------------------------------- CLS-LOC

BIG = (1, 4)  # the CLS-LOC val images (1-based) with one object of over half the image area
LOC_KEYS = {
    "top1_loc_error",
    "top5_loc_error",
    "top1_cls_error",
    "top5_cls_error",
    "num_images",
    "num_blacklisted",
    "gt_class_loc_error",
}


@pytest.fixture(scope="module")
def loc_run(ilsvrc, tiny, tmp_path_factory):
    """ILSVRC CLS-LOC devkit layout (6 train + 6 val images, 3 classes, shuffled devkit ids) -> train/val jsons
    -> 3 iterations of configs/imagenet_loc_faster_rcnn_r101.yaml."""
    root, work = ilsvrc, tmp_path_factory.mktemp("loc_work")
    root.mkdir(parents=True, exist_ok=True)
    wnids, names, devkit_order = loc_files.make_classes(3, seed=1)
    assert devkit_order != wnids  # devkit ids differ from the sorted-WNID order of classifiers
    by_wnid = dict(zip(wnids, names))
    map_clsloc = loc_files.write_map_clsloc(root / "map_clsloc.txt", devkit_order, by_wnid)
    rng = np.random.default_rng(1)

    def image(name: str, c: int, n_objects: int, subset: str, folder: str = "", big: bool = False) -> dict:
        w, h = int(rng.integers(64, 97)), int(rng.integers(64, 97))
        # a big object covers over half of its image, so a whole-image box localizes it (IoU = area ratio);
        # the 20-40 px objects of the other images cover under 40% of theirs
        objects = [(c, (2, 2, w - 3, h - 3))] if big else _random_objects(rng, w, h, [c] * n_objects)
        _write_jpeg(root / "Data" / "CLS-LOC" / subset / folder / f"{name}.JPEG", w, h, objects, rng)
        return {
            "name": name,
            "labels": [wnids[c]],
            "objects": [(wnids[c], b) for _, b in objects],
            "width": w,
            "height": h,
        }

    for i, c in enumerate([0, 1, 2, 0, 1, 2]):
        img = image(f"{wnids[c]}_{i}", c, 1 + i % 2, "train", wnids[c])
        xml = root / "Annotations" / "CLS-LOC" / "train" / wnids[c] / f"{img['name']}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(loc_files.xml_text(img, folder=wnids[c]))
    val = [
        image(f"ILSVRC2012_val_{i:08d}", c, 1 + i % 2, "val", big=i in BIG) for i, c in enumerate([2, 0, 1, 1, 0, 2], 1)
    ]
    xml_dir, ground_truth = loc_files.write_devkit(root, val, devkit_order)
    solution = loc_files.write_kaggle_solution(root / "LOC_val_solution.csv", val)
    blacklist = root / "blacklist.txt"
    blacklist.write_text("2\n")

    prepare = _tool("datasets/prepare_imagenet_loc.py")
    common = ["--synsets", str(map_clsloc), "--image-root", "datasets/ILSVRC/Data/CLS-LOC"]
    assert (
        prepare.main(
            [
                "--split",
                "train",
                *common,
                "--annotations",
                str(xml_dir.parent / "train"),
                "--output",
                "datasets/ILSVRC/annotations/imagenet_loc_train.json",
            ]
        )
        == 0
    )
    assert (
        prepare.main(
            [
                "--split",
                "val",
                *common,
                "--annotations",
                str(xml_dir),
                "--ground-truth",
                str(ground_truth),
                "--output",
                "datasets/ILSVRC/annotations/imagenet_loc_val.json",
            ]
        )
        == 0
    )

    config = str(REPO / "configs" / "imagenet_loc_faster_rcnn_r101.yaml")
    train_out = work / "train"
    assert _tool("tools/train_det.py").main([config, *tiny(train_out, 3), "data.test=null"]) == 0
    return {
        "root": root,
        "config": config,
        "weights": str(train_out / "model_final.pth"),
        "val": val,
        "wnids": wnids,
        "devkit_order": devkit_order,
        "map_clsloc": map_clsloc,
        "xml_dir": xml_dir,
        "ground_truth": ground_truth,
        "solution": solution,
        "blacklist": blacklist,
        "work": work,
        "tool": _tool("tools/eval_imagenet_loc.py"),
        "tiny": tiny,
    }


def _loc_config_mode(run, mode: str, *extra: str) -> Tuple[dict, Path]:
    out = run["work"] / mode
    assert (
        run["tool"].main([run["config"], "--weights", run["weights"], "--mode", mode, *extra, *run["tiny"](out, 3)])
        == 0
    )
    return json.loads((out / "metrics.json").read_text()), out


def _loc_file_mode(run, submission: Path, *layout: str) -> dict:
    out = submission.with_name(submission.name + ".metrics.json")
    assert (
        run["tool"].main(
            ["--submission", str(submission), "--synsets", str(run["map_clsloc"]), *layout, "--output", str(out)]
        )
        == 0
    )
    return json.loads(out.read_text())


def _check_loc_submission(path: Path, run, max_labels: int) -> None:
    """One line per val image (devkit order); each at most ``max_labels`` guesses ``devkit_id x1 y1 x2 y2``."""
    lines = path.read_text().split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    val = sorted(run["val"], key=lambda im: im["name"])
    assert len(lines) == len(val) and any(lines), "no guesses at all: the checks below would be vacuous"
    for i, (line, im) in enumerate(zip(lines, val), 1):
        fields = line.split()
        assert len(fields) % 5 == 0 and len(fields) // 5 <= max_labels, (i, line)
        for g in range(0, len(fields), 5):
            label, (x1, y1, x2, y2) = int(fields[g]), map(float, fields[g + 1 : g + 5])
            assert 1 <= label <= len(run["wnids"]), (i, line)
            assert (
                0.0 <= x1 <= x2 + 1.0 and x2 <= im["width"] - 1 and 0.0 <= y1 <= y2 + 1.0 and y2 <= im["height"] - 1
            ), (i, line)


def test_loc_detector_mode_and_file_mode_agree(loc_run):
    metrics, out = _loc_config_mode(loc_run, "detector", "--blacklist", str(loc_run["blacklist"]))
    assert set(metrics) == LOC_KEYS
    assert metrics["num_images"] == 6 and metrics["num_blacklisted"] == 1
    assert all(_in_range(metrics[k]) for k in LOC_KEYS - {"num_images", "num_blacklisted"})
    assert metrics["top5_loc_error"] <= metrics["top1_loc_error"]
    assert metrics["top5_cls_error"] <= metrics["top1_cls_error"]
    _check_loc_submission(out / "loc_submission.txt", loc_run, 5)
    devkit = [
        "--annotations",
        str(loc_run["xml_dir"]),
        "--ground-truth",
        str(loc_run["ground_truth"]),
        "--blacklist",
        str(loc_run["blacklist"]),
    ]
    from_text = _loc_file_mode(loc_run, out / "loc_submission.txt", *devkit)
    from_csv = _loc_file_mode(
        loc_run,
        out / "loc_submission.csv",
        "--solution",
        str(loc_run["solution"]),
        "--blacklist",
        str(loc_run["blacklist"]),
    )
    expected = {k: v for k, v in metrics.items() if k != "gt_class_loc_error"}
    assert from_text == pytest.approx(expected) and from_csv == pytest.approx(expected)


def test_loc_gt_class_mode_and_file_mode_agree(loc_run):
    metrics, out = _loc_config_mode(loc_run, "gt_class")
    assert set(metrics) == {"gt_class_loc_error"} and _in_range(metrics["gt_class_loc_error"])
    _check_loc_submission(out / "loc_submission.txt", loc_run, 1)  # single-label images: one guess each
    devkit = ["--annotations", str(loc_run["xml_dir"]), "--ground-truth", str(loc_run["ground_truth"])]
    # the gt-class submission given as both files: its top-5 error is the GT-class error, its classes all right
    from_file = _loc_file_mode(
        loc_run, out / "loc_submission.txt", *devkit, "--gt-class-submission", str(out / "loc_submission.txt")
    )
    assert from_file["gt_class_loc_error"] == pytest.approx(metrics["gt_class_loc_error"])
    assert from_file["top5_loc_error"] == pytest.approx(metrics["gt_class_loc_error"])
    assert from_file["top1_cls_error"] == 0.0


def test_loc_classifier_mode_with_saved_scores_and_whole_image_fallback(loc_run):
    # a perfect classifier whose columns are in sorted-WNID order (torchvision/timm), rows in dataset order
    val = sorted(loc_run["val"], key=lambda im: im["name"])
    columns = sorted(loc_run["wnids"])
    scores = np.full((len(val), len(columns)), 0.1, dtype=np.float32)
    for i, im in enumerate(val):
        scores[i, columns.index(im["labels"][0])] = 0.8
    np.save(loc_run["work"] / "val_logits.npy", scores)
    # score_thresh 1 leaves no detections: every guess falls back to the whole image, which localizes exactly
    # the big objects, so the errors are known in advance
    metrics, out = _loc_config_mode(
        loc_run,
        "classifier",
        "--classifier-scores",
        str(loc_run["work"] / "val_logits.npy"),
        "model.roi_heads.score_thresh=1.0",
    )
    assert set(metrics) == LOC_KEYS and metrics["num_blacklisted"] == 0
    assert metrics["top1_cls_error"] == 0.0 and metrics["top5_cls_error"] == 0.0
    missed = 100.0 * (len(val) - len(BIG)) / len(val)
    assert metrics["top1_loc_error"] == pytest.approx(missed) and metrics["top5_loc_error"] == pytest.approx(missed)
    assert metrics["gt_class_loc_error"] == pytest.approx(missed)
    for line, im in zip((out / "loc_submission.txt").read_text().splitlines(), val):
        assert line.split()[1:5] == ["0", "0", str(im["width"] - 1), str(im["height"] - 1)]
    _check_loc_submission(out / "loc_submission.txt", loc_run, 3)  # 3 classes: at most 3 guesses
    devkit = ["--annotations", str(loc_run["xml_dir"]), "--ground-truth", str(loc_run["ground_truth"])]
    from_file = _loc_file_mode(loc_run, out / "loc_submission.txt", *devkit)
    assert from_file == pytest.approx({k: v for k, v in metrics.items() if k != "gt_class_loc_error"})


def test_loc_tool_runs_the_paper_system(loc_run):
    """Detector-mode localization with an ensemble of one model twice gives that model's metrics; with box
    refinement and flipped testing it writes well-formed submissions."""
    single, _ = _loc_config_mode(loc_run, "detector")
    out = loc_run["work"] / "ensemble"
    assert (
        loc_run["tool"].main(
            [
                loc_run["config"],
                "--weights",
                loc_run["weights"],
                loc_run["weights"],
                "--mode",
                "detector",
                *loc_run["tiny"](out, 3),
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(single)
    refined = loc_run["work"] / "refined"
    assert (
        loc_run["tool"].main(
            [
                loc_run["config"],
                "--weights",
                loc_run["weights"],
                "--mode",
                "detector",
                *loc_run["tiny"](refined, 3),
                "test.box_refinement=true",
                "test.aug.flip=true",
            ]
        )
        == 0
    )
    assert set(json.loads((refined / "metrics.json").read_text())) == LOC_KEYS
    _check_loc_submission(refined / "loc_submission.txt", loc_run, 5)
