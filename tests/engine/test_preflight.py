"""The pre-flight check: every input a training run needs fails before iteration 1, in both trainers, with
``test.eval_period`` set and not; the summary line; the classification console log; resume with changed
settings."""

import json
import logging
import math
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from restransfer.classification.config import load_cls_config
from restransfer.config import load_config
from restransfer.engine import preflight
from restransfer.errors import DataError, WeightsError

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory):
    """An imagefolder training set (3 classes x 2 images) and its test set (1 image per class), 40x48 px."""
    root = tmp_path_factory.mktemp("cls")
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for k, name in enumerate(("blue", "green", "red")):
            for i in range(n):
                img = np.full((40, 48, 3), 40, np.uint8)
                img[..., k] = 200
                img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
                (root / split / name).mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(root / split / name / f"{i}.png"), img)
    return root


def _det_cfg(shapes, tiny_overrides, out, *extra):
    return load_config(
        None,
        tiny_overrides(
            "training",
            f"data.train=[{{json: {shapes}/annotations/train.json, image_root: {shapes}/train}}]",
            f"data.test={{json: {shapes}/annotations/val.json, image_root: {shapes}/val}}",
            f"output_dir={out}",
            *extra,
        ),
    )


def _cls_cfg(root, out, *extra):
    return load_cls_config(
        None,
        [
            "model.arch=cifar",
            "model.depth=8",
            "model.num_classes=3",
            "input.crop=32",
            "input.scale_min=0",
            "input.test_size=36",
            "input.lighting=0",
            "data.num_workers=0",
            "solver.ims_per_batch=2",
            "solver.max_iter=2",
            "solver.steps=[]",
            "solver.warmup_iters=0",
            "solver.checkpoint_period=0",
            f"data.train=[{{image_root: {root}/train}}]",
            f"data.test={{image_root: {root}/test}}",
            f"output_dir={out}",
            "log_period=1",
            *extra,
        ],
    )


def _edited_json(src: Path, dst: Path, edit) -> Path:
    data = json.loads(src.read_text())
    edit(data)
    dst.write_text(json.dumps(data))
    return dst


# ------------------------------------------------------------------------------- the failure kinds
# each: (tmp_path, data roots) -> (overrides, error type, message pattern); data roots are the detection
# shapes set or the classification folders


def _missing_test_json(tmp, shapes):
    return (
        [f"data.test={{json: {tmp}/nowhere/val.json, image_root: {shapes}/val}}"],
        DataError,
        r"data.test: annotation file not found: .*nowhere/val.json",
    )


def _test_image_root_without_the_images(tmp, shapes):
    (tmp / "empty").mkdir()
    return (
        [f"data.test.image_root={tmp}/empty"],
        DataError,
        r"data.test.image_root: .*empty holds none of the 4 images of .*val.json",
    )


def _test_image_root_missing(tmp, shapes):
    return [f"data.test.image_root={tmp}/absent"], DataError, r"data.test: image folder not found: .*absent"


def _test_images_undecodable(tmp, shapes):
    (tmp / "junk").mkdir()
    for p in (shapes / "val").iterdir():
        (tmp / "junk" / p.name).write_bytes(b"not an image")
    return [f"data.test.image_root={tmp}/junk"], DataError, r"none of the 4 test images sampled can be used"


def _broken_ground_truth(tmp, shapes):
    def edit(d):
        d["annotations"][0]["bbox"][2] = math.nan

    path = _edited_json(shapes / "annotations" / "val.json", tmp / "val.json", edit)
    return [f"data.test.json={path}"], DataError, r"val.json: annotations\[0\] .*non-finite value"


def _categories_in_another_order(tmp, shapes):
    def edit(d):
        names = {1: "triangle", 2: "circle"}  # ids 1 and 2 swap names: a label would score as the other class
        for c in d["categories"]:
            c["name"] = names.get(c["id"], c["name"])

    path = _edited_json(shapes / "annotations" / "val.json", tmp / "val.json", edit)
    return [f"data.test.json={path}"], DataError, r"data.test: .*val.json has the training classes in another order"


def _output_dir_under_a_file(tmp, shapes):
    (tmp / "a_file").write_text("")
    return [f"output_dir={tmp}/a_file/out"], OSError, r"a_file"


def _unreadable_weights(tmp, shapes):
    (tmp / "garbage.pth").write_text("not a checkpoint")
    return [f"model.backbone.weights={tmp}/garbage.pth"], WeightsError, r"garbage.pth: cannot read"


DETECTION_FAILURES = [
    _missing_test_json,
    _test_image_root_without_the_images,
    _test_image_root_missing,
    _test_images_undecodable,
    _broken_ground_truth,
    _categories_in_another_order,
    _output_dir_under_a_file,
    _unreadable_weights,
]


def _cls_missing_test_labels(tmp, root):
    return (
        [f"data.test={{image_root: {root}/test/red, format: imagenet_val, labels: {tmp}/nowhere.csv}}"],
        DataError,
        r"data.test: .*nowhere.csv: No such file",
    )


def _cls_test_image_root_missing(tmp, root):
    return [f"data.test.image_root={tmp}/absent"], DataError, r"data.test: .*absent: image folder not found"


def _cls_test_image_root_without_the_images(tmp, root):
    (tmp / "val").mkdir()
    (tmp / "val.csv").write_text("ImageId,PredictionString\nimg_1,red 1 2 20 30 \nimg_2,blue 1 2 20 30 \n")
    return (
        [f"data.test={{image_root: {tmp}/val, format: imagenet_val, labels: {tmp}/val.csv}}"],
        DataError,
        r"data.test.image_root: .*val: none of the 2 test images sampled can be used",
    )


def _cls_broken_ground_truth(tmp, root):
    (tmp / "val").mkdir()
    (tmp / "val.csv").write_text("ImageId,PredictionString\nimg_1,red 1 2 twenty 30 \n")
    return (
        [f"data.test={{image_root: {tmp}/val, format: imagenet_val, labels: {tmp}/val.csv}}"],
        DataError,
        r"val.csv:2: coordinate 'twenty' is not a number",
    )


def _cls_categories_that_do_not_match(tmp, root):
    shutil.copytree(root / "test", tmp / "test")
    shutil.copytree(root / "test" / "red", tmp / "test" / "zebra")
    return (
        [f"data.test.image_root={tmp}/test"],
        DataError,
        r"data.test: .*zebra: class 'zebra' is not one of the model's 3 classes",
    )


def _cls_unreadable_weights(tmp, root):
    (tmp / "garbage.pth").write_text("not a checkpoint")
    return [f"model.weights={tmp}/garbage.pth"], WeightsError, r"garbage.pth: cannot read"


CLASSIFICATION_FAILURES = [
    _cls_missing_test_labels,
    _cls_test_image_root_missing,
    _cls_test_image_root_without_the_images,
    _cls_broken_ground_truth,
    _cls_categories_that_do_not_match,
    _output_dir_under_a_file,
    _cls_unreadable_weights,
]


@pytest.fixture
def no_training(monkeypatch):
    """The training loop (one for both tasks) replaced by one that fails the test: the error must come before
    iteration 1."""
    from restransfer.engine.loop import TrainLoop

    def never(*args, **kwargs):
        raise AssertionError("the training loop started")

    monkeypatch.setattr(TrainLoop, "train", never)


def _no_checkpoint(out: Path) -> bool:
    return not out.exists() or not any(p.suffix == ".pth" for p in out.rglob("*"))


@pytest.mark.parametrize("eval_period", [0, 1])
@pytest.mark.parametrize("failure", DETECTION_FAILURES, ids=lambda f: f.__name__.strip("_"))
def test_detection_input_problems_stop_before_the_first_iteration(
    failure, eval_period, shapes, tiny_overrides, tmp_path, no_training
):
    from restransfer.engine import train

    overrides, error, pattern = failure(tmp_path, shapes)
    out = tmp_path / "out"
    with pytest.raises(error, match=pattern):
        train(_det_cfg(shapes, tiny_overrides, out, f"test.eval_period={eval_period}", *overrides))
    assert _no_checkpoint(out)


@pytest.mark.parametrize("eval_period", [0, 1])
@pytest.mark.parametrize("failure", CLASSIFICATION_FAILURES, ids=lambda f: f.__name__.strip("_"))
def test_classification_input_problems_stop_before_the_first_iteration(
    failure, eval_period, cls_root, tmp_path, no_training
):
    from restransfer.classification.train import train_classifier

    overrides, error, pattern = failure(tmp_path, cls_root)
    out = tmp_path / "out"
    with pytest.raises(error, match=pattern):
        train_classifier(_cls_cfg(cls_root, out, f"test.eval_period={eval_period}", *overrides))
    assert _no_checkpoint(out)


@pytest.mark.parametrize("task", ["detection", "classification"])
def test_no_room_for_a_checkpoint_is_an_error_naming_the_folder(
    task, shapes, cls_root, tiny_overrides, tmp_path, monkeypatch, no_training
):
    from restransfer.classification.train import train_classifier
    from restransfer.engine import train

    monkeypatch.setattr(preflight, "free_bytes", lambda path: 5_000)
    out = tmp_path / "out"
    with pytest.raises(
        OSError,
        match=rf"output_dir: {out} has 5 KB free but a checkpoint of this model needs about "
        r"\d+ [KM]B",
    ):
        if task == "detection":
            train(_det_cfg(shapes, tiny_overrides, out))
        else:
            train_classifier(_cls_cfg(cls_root, out))
    assert _no_checkpoint(out)


def test_an_evaluator_that_cannot_run_is_an_error_before_training(shapes, tiny_overrides, tmp_path, no_training):
    from omegaconf import OmegaConf

    from restransfer.engine import train
    from restransfer.errors import ConfigError

    cfg = _det_cfg(shapes, tiny_overrides, tmp_path / "out")
    if OmegaConf.select(cfg, "test.evaluator", default=None) is None:
        pytest.skip("this config schema has no test.evaluator")
    pytest.importorskip("restransfer.evaluation.coco_evaluator")  # registers "coco"
    cfg.test.evaluator = "cocoa"
    with pytest.raises(ConfigError, match="test.evaluator: unknown evaluator 'cocoa'"):
        train(cfg)
    assert _no_checkpoint(tmp_path / "out")


# ---------------------------------------------------------------------------------------- what passes


@pytest.fixture
def restransfer_log(caplog):
    """caplog on the toolkit's logger, which does not propagate to the root logger once a run set it up."""
    log = logging.getLogger("restransfer")
    caplog.set_level(logging.INFO, logger="restransfer")
    log.addHandler(caplog.handler)
    yield caplog
    log.removeHandler(caplog.handler)


def test_summary_and_a_sample_of_images_decoded(shapes, tiny_overrides, tmp_path, monkeypatch, restransfer_log):
    """A 20-image test set: 8 images spread over it are decoded, one unreadable among them is a warning; the
    summary names the set, its classes, the evaluator, the free space and the checkpoint size."""
    from restransfer.models import build_model

    images = tmp_path / "images"
    images.mkdir()
    src = json.loads((shapes / "annotations" / "val.json").read_text())
    first = src["images"][0]
    data = {"images": [], "annotations": [], "categories": src["categories"]}
    for i in range(1, 21):
        os.link(shapes / "val" / first["file_name"], images / f"{i}.png")
        data["images"].append({**first, "id": i, "file_name": f"{i}.png"})
        data["annotations"].append(
            {"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}
        )
    (tmp_path / "val.json").write_text(json.dumps(data))
    (images / "20.png").unlink()
    (images / "20.png").write_bytes(b"truncated")  # the last image, always in the sample
    cfg = _det_cfg(
        shapes,
        tiny_overrides,
        tmp_path / "out",
        f"data.test={{json: {tmp_path}/val.json, image_root: {images}}}",
        "test.eval_period=1",
    )
    (tmp_path / "out").mkdir()
    decoded = []
    real_read = preflight.read_image
    monkeypatch.setattr(preflight, "read_image", lambda path: decoded.append(path) or real_read(path))
    model = build_model(cfg, class_names=["circle", "triangle", "square"])
    report = preflight.check_detection_run(cfg, model, ["circle", "triangle", "square"])
    assert len(decoded) == preflight.SAMPLE_IMAGES and len(set(decoded)) == preflight.SAMPLE_IMAGES
    assert {Path(p).name for p in decoded} >= {"1.png", "20.png"}
    caplog = restransfer_log
    assert "20.png" in caplog.text and "evaluation counts it as unreadable" in caplog.text
    summary = report.summary()
    assert summary.startswith(
        "pre-flight: test set val.json: 20 images, 3 classes (circle, triangle, square), "
        "evaluator coco (bbox) every iteration and at the end (metrics.json, report final); "
        "output_dir has "
    )
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert report.checkpoint_bytes == 2 * size and report.free_bytes > 0
    assert summary in caplog.text
    assert not (tmp_path / "out" / ".preflight-probe").exists()


def test_classification_console_shows_the_periodic_test_errors(cls_root, tmp_path, capsys):
    from restransfer.classification.train import train_classifier

    out = tmp_path / "out"
    train_classifier(_cls_cfg(cls_root, out, "test.eval_period=1"))
    console = capsys.readouterr().out
    for it in (1, 2):
        assert f"iter {it}/2 test error (center crop, 3 images): top-1 " in console
    assert (
        "pre-flight: test set test: 3 images, 3 classes (blue, green, red), evaluator top-1/top-5 error center "
        "crop every iteration, center at the end (metrics.json)" in console
    )
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    logged = [r for r in records if "test/top1_error" in r]
    assert [r["iteration"] for r in logged] == [1, 2]
    assert f"top-1 {logged[0]['test/top1_error']:.2f}%" in console


def test_resume_with_other_settings_names_them_and_keeps_the_original_config(cls_root, tmp_path):
    from restransfer.classification.train import train_classifier

    out = tmp_path / "out"
    first = ("solver.checkpoint_period=1", "data.test=null")
    train_classifier(_cls_cfg(cls_root, out, *first))
    original = (out / "config.yaml").read_text()
    (out / "model_final.pth").unlink()  # as if killed after the checkpoint of iteration 1
    train_classifier(_cls_cfg(cls_root, out, *first, "solver.base_lr=0.05", "solver.weight_decay=0.0002"), resume=True)
    log = (out / "log.txt").read_text()
    assert (
        "--resume with 2 setting(s) that differ from the checkpoint's config (model_0000001.pth): "
        "solver.base_lr: 0.02 -> 0.05, solver.weight_decay: 0.0001 -> 0.0002" in log
    )
    # and says that those two are restored with the optimizer state: the resumed step ran at the old lr
    assert "so solver.base_lr, solver.weight_decay keep the checkpoint's values" in log
    assert "iter 2/2 loss" in log.rsplit("resumed from", 1)[1] and "lr 2.00e-02" in log.rsplit("resumed from", 1)[1]
    assert (out / "config.yaml").read_text() == original
    resumed = load_cls_config(out / "config.resumed-1.yaml")
    assert resumed.solver.base_lr == 0.05 and resumed.solver.weight_decay == 0.0002
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    changes = [r for r in records if "config_changes" in r]
    assert changes == [
        {
            "iteration": 1,
            "resumed_from": "model_0000001.pth",
            "config_changes": {
                "solver.base_lr": {"checkpoint": 0.02, "now": 0.05},
                "solver.weight_decay": {"checkpoint": 0.0001, "now": 0.0002},
            },
        }
    ]

    # the checkpoint's own settings: nothing to report
    (out / "model_final.pth").unlink()
    train_classifier(_cls_cfg(cls_root, out, *first), resume=True)
    assert (out / "log.txt").read_text().count("differ from the checkpoint") == 1
    assert (out / "config.yaml").read_text() == original


@pytest.mark.slow
def test_every_process_of_a_torchrun_stops_with_the_main_process_error(shapes, tiny_overrides, tmp_path):
    """Two processes: the main one checks, both stop with its one-line error (none is left waiting)."""
    import subprocess
    import sys

    from restransfer.config import dump_config

    config = tmp_path / "tiny.yaml"
    dump_config(
        _det_cfg(
            shapes,
            tiny_overrides,
            tmp_path / "out",
            "solver.ims_per_batch=2",
            f"data.test.json={tmp_path}/nowhere.json",
        ),
        config,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RESTRANSFER_NO_PROGRESS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(Path(__file__).resolve().parents[2] / "tools" / "train_det.py"),
        str(config),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    # both processes raise the main process's error; torchrun ends the other worker as soon as one has exited
    # with an error, which can be before that one has printed its line: one or two lines, always the same
    assert 1 <= len(errors) <= 2 and len(set(errors)) == 1, errors
    assert errors[0].startswith(f"error: data.test: annotation file not found: {tmp_path}/nowhere.json")
    assert _no_checkpoint(tmp_path / "out")
