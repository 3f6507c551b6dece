"""The data-loader benchmark: its generated COCO folder is valid COCO, it counts exactly what the training
loader yields and its arithmetic holds, and ``tools/benchmark.py --data`` reports it. Not timing."""

import importlib.util
import json
import statistics
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from omegaconf import OmegaConf

import restransfer.benchmark.data as benchmark_data
from restransfer.benchmark import (
    format_loader_report,
    generate_coco_folder,
    missing_training_data,
    run_loader_benchmark,
)
from restransfer.config import load_config
from restransfer.data.coco import CocoDataset

REPO = Path(__file__).resolve().parents[2]
SMALL = ((48, 64), (64, 48))
# short side 64, long side <= 96: a 48x64 image becomes 64x85, a 64x48 one 85x64
INPUT = ["input.min_size_train=[64]", "input.max_size_train=96", "solver.ims_per_batch=2", "model.num_classes=3"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return generate_coco_folder(tmp_path_factory.mktemp("gen"), 6, num_classes=3, sizes=SMALL, max_objects=3, seed=1)


def _tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_folder_is_valid_coco(folder, tmp_path):
    data = json.loads(Path(folder.json).read_text())
    assert folder.num_images == len(data["images"]) == 6
    assert {(im["height"], im["width"]) for im in data["images"]} == set(folder.sizes) <= set(SMALL)
    per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=7)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 3
    assert folder.objects_per_image == pytest.approx(per_image.mean())
    sizes = [(Path(folder.image_root) / im["file_name"]).stat().st_size for im in data["images"]]
    assert folder.mean_file_kb == pytest.approx(np.mean(sizes) / 1024)
    for im in data["images"]:
        decoded = cv2.imread(str(Path(folder.image_root) / im["file_name"]))
        assert decoded.shape == (im["height"], im["width"], 3)
    # each box is the tight box of its polygon, as in COCO's files
    for ann in data["annotations"]:
        im = data["images"][ann["image_id"] - 1]
        rle = mask_util.frPyObjects(ann["segmentation"], im["height"], im["width"])
        np.testing.assert_allclose(mask_util.toBbox(rle)[0], ann["bbox"], atol=0.02)
        assert 1 <= ann["category_id"] <= 3 and ann["area"] > 0
    ds = CocoDataset(folder.json, folder.image_root, with_masks=True, is_train=True)
    image, target = ds[0]
    assert len(ds) == 6 and target["masks"].shape[0] == len(target["boxes"]) >= 1
    # a pure function of the seed
    again = generate_coco_folder(tmp_path, 6, num_classes=3, sizes=SMALL, max_objects=3, seed=1)
    assert (Path(again.image_root) / "000004.jpg").read_bytes() == (Path(folder.image_root) / "000004.jpg").read_bytes()
    assert json.loads(Path(again.json).read_text())["annotations"] == data["annotations"]


def test_missing_training_data_names_the_missing_piece(folder, tmp_path):
    assert missing_training_data(load_config(None, [])) == "data.train is empty"
    present = load_config(None, [f"data.train=[{{json: {folder.json}, image_root: {folder.image_root}}}]"])
    assert missing_training_data(present) is None
    gone = load_config(None, [f"data.train=[{{json: {folder.json}, image_root: {tmp_path}/nowhere}}]"])
    assert missing_training_data(gone) == f"data.train[0].image_root: {tmp_path}/nowhere not found"
    # a dataset its spec generates counts as present: the loader builder creates it
    shapes = load_config(
        None,
        [
            f"data.train=[{{json: {tmp_path}/s/annotations/train.json, image_root: "
            f"{tmp_path}/s/train, generate: shapes}}]"
        ],
    )
    assert missing_training_data(shapes) is None


def test_counts_what_the_loader_yields(folder, monkeypatch):
    yielded = {}  # worker count -> image shapes, in the order the loader produced them
    real_build = benchmark_data.build_train_loader

    class Counting:
        def __init__(self, loader):
            self.loader, self.num_workers = loader, loader.num_workers
            self.pin_memory, self.batch_sampler = loader.pin_memory, loader.batch_sampler
            yielded[loader.num_workers] = []

        def __iter__(self):
            for images, targets in self.loader:
                assert len(images) == len(targets) == 2
                yielded[self.num_workers].extend(tuple(im.shape[-2:]) for im in images)
                yield images, targets

    monkeypatch.setattr(benchmark_data, "build_train_loader", lambda *a, **k: Counting(real_build(*a, **k)))
    cfg = load_config(None, INPUT + [f"data.train=[{{json: {folder.json}, image_root: {folder.image_root}}}]"])
    result = run_loader_benchmark(cfg, workers=[1], images_per_round=5, rounds=2, warmup=1)
    assert result["data"]["source"] == "config" and result["data"]["images"] == 6
    assert [m.workers for m in result["measurements"]] == [0, 1]
    for m in result["measurements"]:
        shapes = yielded[m.workers]
        # a round reads whole batches until it has 5 images: 3 batches of 2; the warmup round is not counted
        assert m.round_images == [6, 6] and len(shapes) == m.images_yielded == 18
        assert 0 < m.cpu_ms_per_image < float("inf")
        assert sum(m.round_images) == len(shapes) - 6
        assert {min(s) for s in shapes} == {64} and {max(s) for s in shapes} <= {85}
        timed = np.array(shapes[6:], dtype=float)
        assert m.mean_image_hw == pytest.approx(tuple(timed.mean(axis=0)))
        rates = [n / s for n, s in zip(m.round_images, m.round_seconds)]
        assert m.round_rates == pytest.approx(rates)
        assert m.images_per_s_median == pytest.approx(statistics.median(rates))
        assert m.images_per_s_min == pytest.approx(min(rates)) and m.images_per_s_min <= m.images_per_s_median
        assert m.images_per_s_per_worker == pytest.approx(m.images_per_s_median / max(m.workers, 1))
    # the worker's CPU time is counted: it does the decoding and augmenting the main process did without workers
    in_process, worker = result["measurements"]
    assert worker.cpu_ms_per_image > 0.5 * in_process.cpu_ms_per_image
    assert result["config"]["min_size_train"] == [64] and result["config"]["images_per_batch"] == 2
    assert not result["config"]["masks"]  # faster_rcnn: no masks decoded


def test_missing_data_is_replaced_by_a_generated_folder(tmp_path):
    cfg = load_config(
        None, INPUT + ["model.arch=mask_rcnn", f"data.train=[{{json: {tmp_path}/none.json, image_root: {tmp_path}}}]"]
    )
    OmegaConf.set_readonly(cfg, True)  # the generated folder and the worker counts go to the builders as arguments
    result = run_loader_benchmark(
        cfg, workers=[0], images_per_round=2, rounds=1, warmup=0, work_dir=tmp_path / "gen", num_generated=3
    )
    data = result["data"]
    assert data["source"] == "generated" and data["num_images"] == data["images"] == 3
    assert data["reason"] == f"data.train[0].json: {tmp_path}/none.json not found"
    assert len(list((tmp_path / "gen" / "images").glob("*.jpg"))) == 3
    assert result["config"]["masks"] and [m.workers for m in result["measurements"]] == [0]
    assert len(json.loads((tmp_path / "gen" / "annotations" / "train.json").read_text())["categories"]) == 3
    report = format_loader_report(result)
    assert "generated COCO-layout folder" in report and "none.json not found" in report
    assert report.splitlines()[-2].startswith("0 (main)")
    # the caller's config is left as it was
    assert cfg.data.train[0].json == f"{tmp_path}/none.json" and cfg.data.num_workers == 2


def test_bad_arguments_are_clear_errors(folder):
    cfg = load_config(None, INPUT + [f"data.train=[{{json: {folder.json}, image_root: {folder.image_root}}}]"])
    with pytest.raises(ValueError, match="images_per_round"):
        run_loader_benchmark(cfg, workers=[], images_per_round=0)
    with pytest.raises(ValueError, match="worker counts must be >= 0"):
        run_loader_benchmark(cfg, workers=[-1])
    with pytest.raises(ValueError, match="must be at least 1"):
        generate_coco_folder(folder.image_root, 0)


def test_tool_reports_the_loader(folder, tmp_path, capsys):
    tool = _tool()
    out = tmp_path / "loader.json"
    code = tool.main(
        [
            "--data",
            str(REPO / "configs" / "coco_faster_rcnn_r101_fpn.yaml"),
            "--workers",
            "1",
            "--images",
            "2",
            "--iters",
            "2",
            "--warmup",
            "0",
            "--json",
            str(out),
            *INPUT,
            f"data.train=[{{json: {folder.json}, image_root: {folder.image_root}}}]",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "the config's data.train" in printed and "short side 64, long side <= 96" in printed
    saved = json.loads(out.read_text())
    assert [m["workers"] for m in saved["measurements"]] == [0, 1]
    assert all(m["round_images"] == [2, 2] for m in saved["measurements"])
    for flags, message in (
        (["--data", "--train"], "drop --train"),
        (["--data", "--workers", "x"], "--workers 'x'"),
        (["--workers", "2"], "options of --data"),
    ):
        assert tool.main([str(REPO / "configs" / "coco_faster_rcnn_r101_fpn.yaml"), *flags]) == 2
        assert message in capsys.readouterr().err
