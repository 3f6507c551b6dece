"""Predictor (inputs of every kind, batching, thresholds, class names), drawing, and the demo tool."""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers.tiny_detectors import tiny_model, write_checkpoint, write_config
from pycocotools.coco import COCO

from restransfer.data.image_io import CorruptImageError
from restransfer.predictor import Predictor, checkpoint_class_names, to_rgb_uint8
from restransfer.visualize import color_for_label, draw_detections

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import demo as demo_tool  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")  # small models: one intra-op thread (conftest.py)

NAMES = ["circle", "triangle", "square"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Mask R-CNN checkpoint with class names, its config file, the model and a test image."""
    tmp = tmp_path_factory.mktemp("predictor")
    cfg, model, images = tiny_model()
    ckpt = write_checkpoint(tmp, model, NAMES)
    config = write_config(tmp)
    rgb = (images[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    predictor = Predictor(config, weights=str(ckpt), threshold=0.3, batch_size=2)
    return {"tmp": tmp, "config": config, "ckpt": ckpt, "model": model, "rgb": rgb, "predictor": predictor}


def test_result_format_and_threshold(setup):
    p, rgb = setup["predictor"], setup["rgb"]
    r = p(rgb)
    h, w = rgb.shape[:2]
    n = len(r["boxes"])
    assert n > 0
    assert r["boxes"].shape == (n, 4) and r["boxes"].dtype == np.float32
    assert r["scores"].dtype == np.float32 and (r["scores"] > 0.3).all()
    assert np.all(np.diff(r["scores"]) <= 0)  # best first
    assert r["labels"].dtype == np.int64 and set(r["labels"]) <= {1, 2, 3}
    assert r["class_names"] == [NAMES[k - 1] for k in r["labels"]]  # from the checkpoint
    assert r["masks"].shape == (n, h, w) and r["masks"].dtype == bool
    assert r["image_size"] == (h, w)
    assert p.model.roi_heads.score_thresh == pytest.approx(0.3)  # low scores dropped before the mask head


def test_same_answers_as_the_plain_model(setup):
    """The predictor (optimized model, uint8 input) returns the unoptimized model's detections above the
    threshold."""
    p, rgb, model = setup["predictor"], setup["rgb"], setup["model"]
    with torch.inference_mode():
        ref = model([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])[0]
    keep = ref["scores"] > 0.3
    r = p(rgb)
    assert len(r["boxes"]) == int(keep.sum())
    np.testing.assert_allclose(r["boxes"], ref["boxes"][keep].numpy(), atol=1e-3)
    np.testing.assert_array_equal(r["labels"], ref["labels"][keep].numpy())
    np.testing.assert_array_equal(r["masks"], ref["masks"][keep][:, 0].numpy() > 0.5)


def test_inputs_of_every_kind_agree(setup):
    p, rgb, tmp = setup["predictor"], setup["rgb"], setup["tmp"]
    png = tmp / "img.png"
    cv2.imwrite(str(png), rgb[:, :, ::-1])
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 128, np.uint8)], axis=2)
    inputs = [rgb, str(png), png, rgba, rgb.astype(np.float32) / 255, torch.from_numpy(rgb).permute(2, 0, 1) / 255.0]
    results = p(inputs)
    assert isinstance(results, list) and len(results) == len(inputs)
    for r in results[1:]:
        np.testing.assert_allclose(r["boxes"], results[0]["boxes"], atol=1e-3)
        np.testing.assert_array_equal(r["labels"], results[0]["labels"])
    bgr = Predictor(setup["config"], weights=str(setup["ckpt"]), threshold=0.3, channel_order="BGR")
    np.testing.assert_allclose(bgr(rgb[:, :, ::-1].copy())["boxes"], results[0]["boxes"], atol=1e-3)


def test_grayscale_and_odd_sizes(setup):
    p, rgb = setup["predictor"], setup["rgb"]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    r_gray, r_gray3 = p([gray, np.repeat(gray[:, :, None], 3, axis=2)])
    np.testing.assert_allclose(r_gray["boxes"], r_gray3["boxes"], atol=1e-3)
    for shape in [(37, 211), (300, 41), (7, 9)]:  # any size: the model resizes, boxes come back in input pixels
        img = cv2.resize(rgb, shape[::-1])
        r = p(img)
        assert r["image_size"] == shape and r["masks"].shape[1:] == shape
        if len(r["boxes"]):
            assert r["boxes"][:, [0, 2]].max() <= shape[1] + 1e-3 and r["boxes"][:, [1, 3]].max() <= shape[0] + 1e-3


def test_batching_does_not_change_results(setup):
    p, rgb = setup["predictor"], setup["rgb"]
    single = [p(rgb), p(rgb[::-1].copy()), p(rgb[:, ::-1].copy())]
    batched = p([rgb, rgb[::-1].copy(), rgb[:, ::-1].copy()])  # batch_size 2: one batch of 2, one of 1
    for a, b in zip(single, batched):
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)


def test_bad_inputs_say_what_is_wrong(setup, tmp_path):
    p = setup["predictor"]
    with pytest.raises(ValueError, match=r"input 1: float images must hold values in \[0, 1\]"):
        p([setup["rgb"], setup["rgb"].astype(np.float32)])
    with pytest.raises(ValueError, match="input 0: expected an"):
        p(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        p(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(CorruptImageError, match="missing.png"):
        p(str(tmp_path / "missing.png"))
    with pytest.raises(TypeError, match="input 0"):
        p(12)
    with pytest.raises(ValueError, match="channel_order"):
        Predictor(setup["config"], channel_order="RGBA")


def test_to_rgb_uint8_conversions():
    gray16 = np.full((2, 3), 65535, np.uint16)
    assert to_rgb_uint8(gray16).tolist() == np.full((2, 3, 3), 255).tolist()
    bgra = np.zeros((1, 1, 4), np.uint8)
    bgra[0, 0] = (10, 20, 30, 0)
    assert to_rgb_uint8(bgra, "BGR")[0, 0].tolist() == [30, 20, 10]
    assert to_rgb_uint8(np.ones((1, 1), bool))[0, 0].tolist() == [255, 255, 255]


def test_class_names_from_checkpoint(setup, tmp_path):
    assert checkpoint_class_names(setup["ckpt"]) == NAMES
    plain = tmp_path / "plain.pth"
    torch.save(setup["model"].state_dict(), plain)
    assert checkpoint_class_names(plain) is None
    p = Predictor(setup["config"], weights=str(plain), class_names=["a", "b", "c"], threshold=0.3)
    assert set(p(setup["rgb"])["class_names"]) <= {"a", "b", "c"}
    with pytest.raises(ValueError, match="2 class names"):
        Predictor(setup["config"], weights=str(plain), class_names=["a", "b"])


def test_weights_reach_the_model_without_changing_the_config(setup):
    """``weights`` go to the builders as arguments: a read-only config works, stays as it was, and the
    checkpoint's class names and convention reach the model through its constructor."""
    from omegaconf import OmegaConf

    from restransfer.config import load_config
    from restransfer.models import build_eval_model

    cfg = load_config(setup["config"])
    OmegaConf.set_readonly(cfg, True)
    before = OmegaConf.to_yaml(cfg)
    p = Predictor(cfg, weights=str(setup["ckpt"]), threshold=0.3)
    model = build_eval_model(cfg, str(setup["ckpt"]), None, torch.device("cpu"))
    assert OmegaConf.to_yaml(cfg) == before and cfg.model.weights is None
    assert p.class_names == NAMES and model.pixel_convention == setup["model"].pixel_convention
    torch.testing.assert_close(
        model.roi_heads.box_predictor.cls_score.weight, setup["model"].roi_heads.box_predictor.cls_score.weight
    )


def test_draw_detections(setup):
    rgb = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((1, 60, 80), bool)
    mask[0, 20:40, 30:60] = True
    pred = {
        "boxes": np.array([[30, 20, 60, 40]], np.float32),
        "scores": np.array([0.9], np.float32),
        "labels": np.array([2]),
        "class_names": ["triangle"],
        "masks": mask,
    }
    out = draw_detections(rgb, pred)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (rgb == 100).all()  # the input is not modified
    colour = np.array(color_for_label(2))
    centre = out[30, 45].astype(float)  # inside the mask, away from outline and text: 45% tint
    np.testing.assert_allclose(centre, 100 * 0.55 + colour * 0.45, atol=1.5)
    assert (out[55:, :25] == 100).all()  # far from the detection: untouched
    assert (np.abs(out[20:40, 30].astype(int) - colour).sum(axis=1) < 60).any()  # left box edge drawn
    assert draw_detections(rgb, {"boxes": np.zeros((0, 4)), "scores": [], "labels": []}).tolist() == rgb.tolist()


def test_demo_tool_writes_pngs_and_coco_results(setup, tmp_path):
    rgb = setup["rgb"]
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    cv2.imwrite(str(src / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))  # grayscale file
    rgba = np.concatenate([rgb[:, :, ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    cv2.imwrite(str(src / "sub" / "a.png"), rgba)  # RGBA file, same stem in a sub-folder
    (src / "notes.txt").write_text("not an image")
    out = src / "out"  # inside the input: must not be read back on a second run
    args = [
        str(setup["config"]),
        "--weights",
        str(setup["ckpt"]),
        "--input",
        str(src),
        "--output",
        str(out),
        "--threshold",
        "0.3",
    ]
    for _ in range(2):
        assert demo_tool.main(args) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "sub__a.png"]
    images = json.loads((out / "images.json").read_text())
    assert [Path(i["file_name"]).name for i in images] == ["a.png", "a.png"]
    results = json.loads((out / "predictions.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])
    # loadable as COCO results against a ground truth with these images and categories
    gt = COCO()
    gt.dataset = {"images": images, "categories": json.loads((out / "categories.json").read_text()), "annotations": []}
    gt.createIndex()
    assert len(gt.loadRes(str(out / "predictions.json")).getAnnIds()) == len(results)


def test_demo_tool_empty_folder_is_a_clear_error(setup, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    from restransfer.cli import run_tool

    code = run_tool(
        demo_tool.main, [str(setup["config"]), "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]
    )
    assert code == 2
    assert "no images" in capsys.readouterr().err
    assert run_tool(demo_tool.main, [str(setup["config"]), "--input", str(tmp_path / "nope"), "--output", "o"]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
