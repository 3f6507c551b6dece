"""Classification pretraining: readers (imagefolder, ImageNet val, CIFAR-10 batches), the CIFAR networks, the
test views and top-k error arithmetic, training with exact resume, checkpoints as detector backbone and as
localization classifier, and the degradation study's outputs."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from restransfer.classification.cifar import CifarResNet
from restransfer.classification.config import load_cls_config
from restransfer.classification.data import ClassificationDataset, read_cifar10, read_imagefolder, read_imagenet_val
from restransfer.classification.evaluate import evaluate_classifier, image_views, ten_crops, topk_errors
from restransfer.errors import DataError, WeightsError
from restransfer.yaml_config import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[2]
WNIDS = ("n01440764", "n01443537", "n01484850")


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def _colour(label: int, rng, size=(40, 48)) -> np.ndarray:
    """A flat image whose colour says its class (red, green, blue), with a little noise."""
    img = np.full(size + (3,), 40, np.uint8)
    img[..., label % 3] = 200
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def imagenet_layout(tmp_path_factory):
    """train/<wnid>/*.JPEG, a flat val/ folder, Kaggle's LOC_val_solution.csv and the devkit ground truth."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for k, wnid in enumerate(WNIDS):
        for i in range(4):
            _write(root / "train" / wnid / f"{wnid}_{i}.JPEG", _colour(k, rng))
    val_labels = [2, 0, 1, 1, 0, 2]
    rows = ["ImageId,PredictionString"]
    for i, k in enumerate(val_labels, 1):
        name = f"ILSVRC2012_val_{i:08d}"
        _write(root / "val" / f"{name}.JPEG", _colour(k, rng))
        rows.append(f"{name},{WNIDS[k]} 1 2 20 30 ")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    # map_clsloc ids in another order than the sorted WNIDs: the reader must go through the WNIDs
    ids = {WNIDS[2]: 1, WNIDS[0]: 2, WNIDS[1]: 3}
    (root / "map_clsloc.txt").write_text("".join(f"{w} {i} name{i}\n" for w, i in ids.items()))
    (root / "gt.txt").write_text("".join(f"{ids[WNIDS[k]]}\n" for k in val_labels))
    return root, val_labels


# ----------------------------------------------------------------------------------------- readers


def test_imagefolder_and_both_imagenet_val_label_files(imagenet_layout):
    root, val_labels = imagenet_layout
    paths, labels, names = read_imagefolder(root / "train")
    assert names == list(WNIDS) and len(paths) == 12
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert all(Path(p).parent.name == WNIDS[k] for p, k in zip(paths, labels))
    kaggle_paths, kaggle = read_imagenet_val(root / "val", root / "LOC_val_solution.csv", names)
    devkit_paths, devkit = read_imagenet_val(root / "val", root / "gt.txt", names, synsets=root / "map_clsloc.txt")
    assert kaggle.tolist() == devkit.tolist() == val_labels
    assert [Path(p).name for p in kaggle_paths] == [Path(p).name for p in devkit_paths]
    with pytest.raises(ValueError, match="synsets"):
        read_imagenet_val(root / "val", root / "gt.txt", names)
    with pytest.raises(ValueError, match="LOC_val_solution.csv:2: WNID 'n01484850' is not in the class list"):
        read_imagenet_val(root / "val", root / "LOC_val_solution.csv", names[:2])


def _cifar_batch(path: Path, n: int, seed: int, bytes_keys: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {"data": data, "labels": [int(x) for x in rng.integers(0, 10, n)], "batch_label": "b"}
    if bytes_keys:  # what the original python-2 batches look like to python 3 with encoding="bytes"
        batch = {k.encode(): v for k, v in batch.items()}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return data


def test_cifar_batches_are_read_safely(tmp_path):
    parts = [_cifar_batch(tmp_path / f"data_batch_{i}", 3, i, bytes_keys=i % 2 == 0) for i in range(1, 6)]
    _cifar_batch(tmp_path / "test_batch", 4, 9)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    images, labels, names = read_cifar10(tmp_path, "train")
    assert images.shape == (15, 32, 32, 3) and images.dtype == np.uint8 and names[3] == "c3"
    # row layout: 1024 red, then green, then blue values, row-major
    assert images[0, 0, 1, 0] == parts[0][0, 1] and images[0, 0, 0, 1] == parts[0][0, 1024]
    assert read_cifar10(tmp_path, "test")[0].shape == (4, 32, 32, 3)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    with pytest.raises(DataError, match="test_batch: not a CIFAR-10 python batch: .*not allowed"):
        read_cifar10(tmp_path, "test")
    assert not (tmp_path / "pwned").exists()
    _cifar_batch(tmp_path / "test_batch", 4, 9)
    batch = pickle.loads((tmp_path / "test_batch").read_bytes())
    batch["labels"][2] = 10
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match="test_batch: label 10 of image 2"):
        read_cifar10(tmp_path, "test")


def test_train_transform_pads_crops_flips_reproducibly():
    from restransfer.classification.data import TrainTransform

    img = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    t = TrainTransform(crop=32, pad=4, hflip_prob=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    outs = [t(img, np.random.default_rng(s)) for s in range(12)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert torch.equal(outs[3], t(img, np.random.default_rng(3)))  # a pure function of the seed
    ref = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)
    padded = torch.nn.functional.pad(ref, (4, 4, 4, 4))
    for o in outs:  # every output is a 32x32 window of the zero-padded image, flipped or not
        assert any(
            torch.equal(o, w)
            for y in range(9)
            for x in range(9)
            for w in (padded[:, y : y + 32, x : x + 32], padded[:, y : y + 32, x : x + 32].flip(-1))
        )
    assert len({o.sum().item() for o in outs}) > 1
    scaled = TrainTransform(crop=24, scale_min=28, scale_max=40, lighting=0.1)
    assert scaled(img, np.random.default_rng(0)).shape == (3, 24, 24)


def test_cifar10_config_trains_on_the_batches(tmp_path):
    from restransfer.classification.train import train_classifier

    for i in range(1, 6):
        _cifar_batch(tmp_path / f"data_batch_{i}", 8, i)
    _cifar_batch(tmp_path / "test_batch", 10, 9)
    cfg = load_cls_config(
        ROOT / "configs" / "cifar10_resnet20.yaml",
        [
            "model.depth=8",
            f"data.train=[{{image_root: {tmp_path}, format: cifar10}}]",
            f"data.test={{image_root: {tmp_path}, format: cifar10, split: test}}",
            "data.num_workers=0",
            "solver.ims_per_batch=8",
            "solver.ims_per_device=4",
            "solver.max_iter=2",
            "solver.steps=[1]",
            "solver.checkpoint_period=0",
            f"output_dir={tmp_path / 'out'}",
            "log_period=1",
        ],
    )
    metrics = train_classifier(cfg)
    assert metrics["num_images"] == 10 and metrics["top1_error"] in {10.0 * k for k in range(11)}
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if "train_error" in r]
    assert [r["images_seen"] for r in train] == [8, 16]  # 2 micro-steps of 4 images per optimizer step
    assert [r["lr"] for r in train] == [pytest.approx(0.1), pytest.approx(0.01)]
    assert [r["iteration"] for r in log if "test/top1_error" in r] == [2]  # eval_period > max_iter: at the end


# ------------------------------------------------------------------------------------ networks, views


@pytest.mark.parametrize(
    "depth,millions,digits", [(20, 0.27, 2), (32, 0.46, 2), (44, 0.66, 2), (56, 0.85, 2), (110, 1.7, 1)]
)
def test_cifar_parameter_counts_match_the_paper(depth, millions, digits):
    residual = CifarResNet(depth)
    plain = CifarResNet(depth, residual=False)
    count = sum(p.numel() for p in residual.parameters())
    assert round(count / 1e6, digits) == millions
    assert sum(p.numel() for p in plain.parameters()) == count  # option A adds no parameters
    convs = [m for m in residual.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n+1 convolutions and the fc layer
    assert {c.out_channels for c in convs} == {16, 32, 64}


def test_option_a_shortcut_subsamples_and_zero_pads():
    net = CifarResNet(20)
    block = net.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (2, 32, 4, 4)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2]) and not s[:, :8].any() and not s[:, 24:].any()
    net.eval()
    plain = CifarResNet(20, residual=False).eval()
    plain.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert net(x).shape == (1, 10) and not torch.allclose(net(x), plain(x))


def test_ten_crops_are_the_corners_the_center_and_their_flips():
    img = np.arange(6 * 8 * 3).reshape(6, 8, 3)
    crops = ten_crops(img, 4)
    expected = [img[:4, :4], img[:4, 4:], img[2:, :4], img[2:, 4:], img[1:5, 2:6]]
    assert crops.shape == (10, 4, 4, 3)
    for i, e in enumerate(expected):
        assert np.array_equal(crops[i], e), i
        assert np.array_equal(
            crops[5 + i],
            e[:, ::-1]
            if i == 4
            else img[:, ::-1][
                [slice(0, 4), slice(0, 4), slice(2, 6), slice(2, 6)][i],
                [slice(0, 4), slice(4, 8), slice(0, 4), slice(4, 8)][i],
            ],
        ), i


def test_views_of_each_mode():
    img = np.zeros((300, 400, 3), np.uint8)
    (center,) = image_views(img, "center", crop=224, test_size=256)
    assert center.shape == (1, 224, 224, 3)
    (ten,) = image_views(img, "10crop", crop=224, test_size=256)
    assert ten.shape == (10, 224, 224, 3)
    fcn = image_views(img, "fcn", crop=224, test_size=256, scales=[224, 480])
    assert [g.shape for g in fcn] == [(2, 224, 299, 3), (2, 480, 640, 3)]


def test_topk_error_arithmetic():
    scores = np.array(
        [
            [0.1, 0.5, 0.2, 0.0, 0.0, 0.0, 0.2],  # label 1: top-1 hit
            [0.6, 0.1, 0.05, 0.05, 0.05, 0.05, 0.1],  # label 6: rank 2, top-5 hit
            [0.3, 0.25, 0.2, 0.15, 0.05, 0.04, 0.01],  # label 5: rank 6, miss
            [0.2, 0.1, 0.3, 0.25, 0.0, 0.15, 0.0],
        ]
    )  # label 5: rank 4, top-5 hit
    errors = topk_errors(scores, [1, 6, 5, 5])
    assert errors == {"top1_error": 75.0, "top5_error": 25.0}
    # fewer classes than k: every image is a top-5 hit
    assert topk_errors(scores[:3, :3], [1, 0, 2]) == {"top1_error": pytest.approx(100 / 3), "top5_error": 0.0}


class _ColourOracle(nn.Module):
    """Scores from the mean colour: the dominant channel gets 3, the next 2, the last 1; classes 3..5 get
    0.5, 0.25 and 0.125, so that class 5 is always ranked 6th.
    On the flat test images every view of an image has the same ranking, whatever the crop."""

    def classify(self, x):
        means = x.mean(dim=(2, 3))
        ranks = means.argsort(dim=1).argsort(dim=1).float() + 1
        return torch.log(torch.cat([ranks, torch.tensor([[0.5, 0.25, 0.125]]).expand(len(x), 3)], 1))


@pytest.mark.parametrize("mode", ["center", "10crop", "fcn"])
def test_known_scores_give_known_errors_in_every_mode(imagenet_layout, mode):
    root, _ = imagenet_layout
    names = list(WNIDS) + ["n1", "n2", "n3"]
    paths, labels = read_imagenet_val(root / "val", root / "LOC_val_solution.csv", names)
    kwargs = dict(mode=mode, crop=24, test_size=32, scales=[24, 40])
    m = evaluate_classifier(_ColourOracle(), ClassificationDataset(paths, labels, names), **kwargs)
    assert m == {"top1_error": 0.0, "top5_error": 0.0}
    # true labels 2, 0, 1, 1, 0, 2: relabelled, image 1 is ranked 2nd, image 3 4th, image 5 6th (of 6)
    labels[1], labels[3], labels[5] = 2, 4, 5
    m = evaluate_classifier(_ColourOracle(), ClassificationDataset(paths, labels, names), **kwargs)
    assert m == {"top1_error": 50.0, "top5_error": pytest.approx(100 / 6)}


# -------------------------------------------------------------------------------- config, training


def _cfg_file(tmp_path: Path, root: Path, **extra) -> Path:
    cfg = {
        "model": {"arch": "imagenet", "depth": 18, "num_classes": 3},
        "data": {
            "train": [{"image_root": str(root / "train"), "format": "imagefolder"}],
            "test": {
                "image_root": str(root / "val"),
                "format": "imagenet_val",
                "labels": str(root / "LOC_val_solution.csv"),
            },
            "num_workers": 0,
        },
        "input": {
            "scale_min": 36,
            "scale_max": 44,
            "crop": 32,
            "test_size": 36,
            "pixel_mean": [100.0, 110.0, 120.0],
            "pixel_std": [50.0, 51.0, 52.0],
        },
        "solver": {
            "base_lr": 0.05,
            "ims_per_batch": 4,
            "max_iter": 4,
            "steps": [3],
            "warmup_iters": 0,
            "checkpoint_period": 2,
        },
        "test": {"crops": "center", "scales": [32, 40], "ims_per_batch": 4},
        "output_dir": str(tmp_path / "out"),
        "log_period": 1,
    }
    for key, value in extra.items():
        node = cfg
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    path = tmp_path / "cls.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_config_errors_name_the_key(tmp_path, imagenet_layout):
    root, _ = imagenet_layout
    path = _cfg_file(tmp_path, root)
    with pytest.raises(ConfigError, match="model.depth: 20 is not one of 18, 34"):
        load_cls_config(path, ["model.depth=20"])
    with pytest.raises(ConfigError, match="model.depth: 21 is not 6n\\+2"):
        load_cls_config(path, ["model.arch=cifar", "model.depth=21"])
    with pytest.raises(ConfigError, match="data.test.labels is not set"):
        load_cls_config(path, ["data.test.labels=null"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_cls_config(path, ["model.dept=18"])
    for name in (
        "imagenet_cls_r101",
        "cifar10_resnet20",
        "cifar10_resnet56",
        "cifar10_resnet110",
        "cifar10_plain20",
        "cifar10_plain56",
        "demo_degradation",
    ):
        cfg = load_cls_config(ROOT / "configs" / f"{name}.yaml")
        assert cfg.solver.base_lr == 0.1 and cfg.solver.weight_decay == 1e-4
    r110 = load_cls_config(ROOT / "configs" / "cifar10_resnet110.yaml")
    assert (r110.model.depth, r110.solver.steps, r110.solver.max_iter, r110.input.pad) == (
        110,
        [32000, 48000],
        64000,
        4,
    )
    assert load_cls_config(ROOT / "configs" / "cifar10_plain56.yaml").model.residual is False


def test_training_resumes_exactly_and_checkpoint_feeds_every_tester(tmp_path, imagenet_layout):
    from restransfer.classification.evaluate import run_cls_evaluation
    from restransfer.classification.train import train_classifier
    from restransfer.engine.checkpoint import Checkpointer

    root, _ = imagenet_layout
    cfg = load_cls_config(_cfg_file(tmp_path, root))
    metrics = train_classifier(cfg)
    assert set(metrics) >= {"top1_error", "top5_error"} and metrics["num_images"] == 6
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4] and all(0 <= r["train_error"] <= 100 for r in log)
    assert log[-1]["lr"] == pytest.approx(0.005)  # lr / 10 after the step at 3
    final = Checkpointer.load(tmp_path / "out" / "model_final.pth")
    assert final["task"] == "classification" and final["class_names"] == list(WNIDS)
    assert final["pixel_convention"]["mean"] == [100.0, 110.0, 120.0]

    # interrupted after iteration 2 and resumed: the same final weights
    (tmp_path / "out" / "model_final.pth").unlink()
    (tmp_path / "out" / "model_0000004.pth").unlink(missing_ok=True)
    train_classifier(load_cls_config(_cfg_file(tmp_path, root)), resume=True)
    resumed = Checkpointer.load(tmp_path / "out" / "model_final.pth")
    for k, v in final["model"].items():
        assert torch.equal(v, resumed["model"][k]), k

    ckpt = str(tmp_path / "out" / "model_final.pth")
    for mode in ("center", "10crop", "fcn"):
        m = run_cls_evaluation(cfg, ckpt, mode=mode, output=tmp_path / f"{mode}.json")
        saved = json.loads((tmp_path / f"{mode}.json").read_text())
        assert saved["top1_error"] == m["top1_error"] and saved["crops"] == mode
        wrong = m["top1_error"] * 6 / 100  # a whole number of the 6 images; 3 classes: no top-5 error
        assert wrong == pytest.approx(round(wrong)) and m["top5_error"] == 0.0

    # the builder constructs the network with what the checkpoint carries (convention, class names), whatever
    # this config's input normalization says; without weights: the config's convention, no names
    from restransfer.classification import build_classifier

    other = load_cls_config(_cfg_file(tmp_path, root), ["input.pixel_mean=[1.0,2.0,3.0]"])
    net = build_classifier(other, ckpt)
    assert tuple(net.pixel_convention.mean) == (100.0, 110.0, 120.0) and net.class_names == list(WNIDS)
    assert torch.equal(net.fc.weight.detach(), final["model"]["fc.weight"])
    fresh = build_classifier(other)
    assert tuple(fresh.pixel_convention.mean) == (1.0, 2.0, 3.0) and fresh.class_names is None
    with pytest.raises(WeightsError, match="model.depth"):
        build_classifier(load_cls_config(_cfg_file(tmp_path, root), ["model.depth=34"]), ckpt)


def test_training_skips_unreadable_images_mid_run_and_counts_them(tmp_path, imagenet_layout):
    """A text file named .jpg and a 0-byte PNG among the training images, a 0-byte JPEG among the test images:
    the run finishes, names each file once and counts them; the test error leaves the unreadable image out."""
    import shutil

    from restransfer.classification.train import train_classifier

    src, _ = imagenet_layout
    root = tmp_path / "layout"
    shutil.copytree(src, root)
    mid = root / "train" / WNIDS[1]  # the middle class: the bad files sort between readable ones
    (mid / f"{WNIDS[1]}_1b.jpg").write_text("not an image\n")
    (mid / f"{WNIDS[1]}_2b.png").write_bytes(b"")
    bad_val = "ILSVRC2012_val_00000099"
    (root / "val" / f"{bad_val}.JPEG").write_bytes(b"")
    with open(root / "LOC_val_solution.csv", "a") as f:
        f.write(f"{bad_val},{WNIDS[0]} 1 2 20 30 \n")
    # 4 iterations of 4 images: the first 14 draw every one of the 14 training images once
    metrics = train_classifier(load_cls_config(_cfg_file(tmp_path, root)))
    out = tmp_path / "out"
    assert (out / "model_final.pth").is_file() and metrics["num_skipped"] == 1
    log = (out / "log.txt").read_text()
    for name in (f"{WNIDS[1]}_1b.jpg", f"{WNIDS[1]}_2b.png", f"{bad_val}.JPEG"):
        assert log.count(f"skipping an unreadable image: {root}") and log.count(name) >= 1, name
    assert "2 of the 14 training images could not be read and were skipped" in log
    assert "1 of 7 test images could not be read and are left out of the error rates" in log
    wrong = metrics["top1_error"] * 6 / 100  # the error is over the 6 readable test images
    assert wrong == pytest.approx(round(wrong))


def test_checkpoint_is_detector_backbone_and_localization_classifier(tmp_path, imagenet_layout, tiny_overrides):
    from restransfer.classification.train import train_classifier
    from restransfer.config import load_config
    from restransfer.engine.checkpoint import Checkpointer
    from restransfer.localization import load_classifier
    from restransfer.models import build_model

    root, _ = imagenet_layout
    train_classifier(load_cls_config(_cfg_file(tmp_path, root, solver__max_iter=1, solver__steps=[], data__test=None)))
    path = tmp_path / "out" / "model_final.pth"
    state = Checkpointer.load(path)["model"]

    cfg = load_config(None, tiny_overrides("inference", f"model.backbone.weights={path}"))
    detector = build_model(cfg)
    conv = detector.pixel_convention
    assert (conv.channel_order, tuple(conv.mean), tuple(conv.std)) == ("RGB", (100.0, 110.0, 120.0), (50.0, 51.0, 52.0))
    body = dict(detector.named_parameters())
    conv1 = next(v for k, v in body.items() if k.endswith("conv1.weight") and "layer" not in k)
    assert torch.equal(conv1.detach(), state["conv1.weight"])

    classifier = load_classifier(101, str(path))  # the checkpoint's own depth (18) and class count (3)
    assert classifier.depth == 18 and classifier.fc.out_features == 3 and classifier.class_names == list(WNIDS)
    assert tuple(classifier.pixel_convention.mean) == (100.0, 110.0, 120.0)
    assert torch.equal(classifier.fc.weight.detach(), state["fc.weight"])


# ------------------------------------------------------------------------------------ degradation study


def _fake_run(folder: Path, train_errors, test_errors) -> None:
    folder.mkdir(parents=True)
    lines = [
        {"iteration": 10 * (i + 1), "loss": 1.0, "train_error": e, "images_seen": 320 * (i + 1)}
        for i, e in enumerate(train_errors)
    ]
    lines += [
        {"iteration": 20 * (i + 1), "test/top1_error": e, "test/top5_error": 0.0} for i, e in enumerate(test_errors)
    ]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / "model_final.pth").write_bytes(b"finished")  # run_study does not train a finished run again


def test_degradation_study_writes_figure_curves_and_table(tmp_path):
    from restransfer.classification.degradation import plan_runs, run_study

    cfg = ROOT / "configs" / "demo_degradation.yaml"
    runs = plan_runs([cfg], tmp_path, depths=[8, 20], overrides=["solver.max_iter=40", "solver.steps=[30]"])
    assert [r.name for r in runs] == ["plain-8", "resnet-8", "plain-20", "resnet-20"]
    assert runs[2].cfg.model.depth == 20 and runs[2].cfg.model.residual is False
    assert runs[2].cfg.output_dir == str(tmp_path / "plain-20") and runs[3].cfg.solver.max_iter == 40
    with pytest.raises(ValueError, match="a second resnet-8"):
        plan_runs([cfg, cfg], tmp_path, overrides=["model.depth=8"])
    finals = {"plain-8": (40, 45), "resnet-8": (38, 44), "plain-20": (50, 52), "resnet-20": (30, 36)}
    for name, (train, test) in finals.items():
        _fake_run(tmp_path / name, [90, 70, 60, train, train, train], [80, 60, test])
    curves = run_study(runs, tmp_path, title="test")
    saved = json.loads((tmp_path / "curves.json").read_text())
    assert saved == curves and saved["plain-20"]["test_iteration"] == [20, 40, 60]
    assert saved["resnet-20"]["train_error"] == [90, 70, 60, 30, 30, 30]
    table = (tmp_path / "table.md").read_text()
    assert "| plain-20 | 50.00 | 52.00 |" in table and "| resnet-20 | 30.00 | 36.00 |" in table
    png = (tmp_path / "degradation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] > 2 * img.shape[0] * 0.9  # two panels side by side


@pytest.mark.slow
def test_tools_train_eval_and_degradation_end_to_end(tmp_path, imagenet_layout):
    root, _ = imagenet_layout
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RESTRANSFER_NO_PROGRESS": "1"}
    cfg = _cfg_file(tmp_path, root, solver__max_iter=2, solver__steps=[])

    def tool(*args):
        return subprocess.run(
            [sys.executable, str(ROOT / "tools" / args[0]), *map(str, args[1:])],
            capture_output=True,
            text=True,
            env=env,
        )

    r = tool("train_cls.py", cfg)
    assert r.returncode == 0, r.stderr
    r = tool(
        "eval_cls.py",
        cfg,
        "--weights",
        tmp_path / "out" / "model_final.pth",
        "--crops",
        "10crop",
        "--output",
        tmp_path / "m.json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["crops"] == "10crop" and "top-5 error" in r.stdout
    r = tool("eval_cls.py", cfg, "--weights", tmp_path / "missing.pth")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "missing.pth" in r.stderr
    r = tool("train_cls.py", cfg)  # the folder holds a finished run
    assert r.returncode == 2 and "--resume" in r.stderr

    shapes = tmp_path / "shapes"
    from restransfer.classification.synthetic import generate_shape_classes

    generate_shape_classes(shapes, num_train=40, num_test=20)
    r = tool(
        "degradation.py",
        ROOT / "configs" / "demo_degradation.yaml",
        "--depths",
        8,
        "--output",
        tmp_path / "deg",
        f"data.train=[{{image_root: {shapes / 'train'}, format: imagefolder}}]",
        f"data.test={{image_root: {shapes / 'test'}, format: imagefolder}}",
        "solver.max_iter=4",
        "solver.steps=[]",
        "test.eval_period=2",
        "log_period=1",
    )
    assert r.returncode == 0, r.stderr
    curves = json.loads((tmp_path / "deg" / "curves.json").read_text())
    assert sorted(curves) == ["plain-8", "resnet-8"] and curves["resnet-8"]["test_iteration"] == [2, 4]
    assert (tmp_path / "deg" / "degradation.png").stat().st_size > 1000


@pytest.mark.parametrize("setting", ["true", "auto"])
def test_classification_trains_on_channels_last_where_the_setting_says(tmp_path, imagenet_layout, setting):
    """solver.channels_last is the detectors' setting with the same rule: true trains the network on NHWC
    activations (the optimizer steps the converted parameters), auto on this fp32 run stays NCHW and says why."""
    from restransfer.classification.train import train_classifier
    from restransfer.engine.loop import HookBase

    class Watch(HookBase):
        def before_train(self):
            self.weight = self.loop.module.conv1.weight
            self.before = self.weight.detach().clone()

    root, _ = imagenet_layout
    watch = Watch()
    cfg = _cfg_file(
        tmp_path, root, solver__max_iter=1, solver__steps=[], data__test=None, solver__channels_last=setting
    )
    train_classifier(load_cls_config(cfg), hooks=[watch])
    on = setting == "true"
    assert watch.weight.is_contiguous(memory_format=torch.channels_last) is on
    assert watch.weight.is_contiguous() is not on
    assert not torch.equal(watch.before, watch.weight.detach())
    log = (tmp_path / "out" / "log.txt").read_text()
    assert ("solver.channels_last=auto: NCHW activations (fp32 on cpu)" in log) is (not on)
