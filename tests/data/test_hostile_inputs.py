"""Hostile and careless inputs: decompression-bomb images and CIFAR batches, files outside the image folder,
duplicated and non-integer COCO ids, deeply nested JSON, undecodable logs, ``$`` and colliding category names
in plots, empty results files and a CUDA device without CUDA. Each is skipped with a warning or refused with
an error naming the file (tools: ``error: ...``, exit status 2), and none takes memory in proportion to what
it claims."""

import importlib.util
import json
import logging
import os
import pickle
import resource
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from restransfer.analysis.curves import read_run
from restransfer.analysis.detection_plots import safe_name, unique_file_stems
from restransfer.analysis.report import report_images, write_coco_report
from restransfer.classification.config import load_cls_config
from restransfer.classification.data import ClassificationDataset, TrainTransform, read_cifar10, read_imagefolder
from restransfer.cli import run_tool
from restransfer.config import load_config
from restransfer.data import image_io
from restransfer.data.coco import CocoDataset
from restransfer.data.coco_checks import load_coco_json
from restransfer.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, image_size, read_image
from restransfer.data.json_io import read_json
from restransfer.devices import resolve_device
from restransfer.errors import ConfigError, DataError, DeviceError
from restransfer.evaluation.coco import evaluate_coco

REPO = Path(__file__).resolve().parents[2]
BOMB_SIDE = 30000


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _user_error(capsys, *names) -> str:
    """The ``error:`` report of the last tool run (one line starting with ``error: ``, no traceback),
    checked to name each of ``names``."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines and lines[-1] != "error: ", err
    for name in names:
        assert str(name) in lines[-1], (name, lines[-1])
    return lines[-1]


@pytest.fixture()
def restransfer_logs(monkeypatch, caplog):
    """caplog for the toolkit's logger (a training run's setup_logging stops it propagating)."""
    monkeypatch.setattr(logging.getLogger("restransfer"), "propagate", True)
    caplog.set_level(logging.WARNING)
    return caplog


# ------------------------------------------------------------------------------------------ bombs


def _bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid 1-bit greyscale PNG of side x side pixels whose rows are zeros: about 0.5 MB on disk, 2.7 GB
    once decoded to RGB. Written from its chunks (IHDR, one IDAT compressed in blocks of rows, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\0" * (1 + (side + 7) // 8)) * 1000  # filter byte 0 + the packed row
    z = zlib.compressobj(1)
    idat = b"".join(z.compress(rows) for _ in range(side // 1000)) + z.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture()
def decoded(monkeypatch):
    """The (height, width) of every image OpenCV decodes while the test runs."""
    sizes = []
    real = cv2.imdecode

    def spy(buf, flags):
        out = real(buf, flags)
        sizes.append(None if out is None else out.shape[:2])
        return out

    monkeypatch.setattr(image_io.cv2, "imdecode", spy)
    return sizes


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def test_the_bomb_is_a_png_its_header_declares(tmp_path):
    from PIL import Image

    path = _bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 1_000_000
    assert image_size(path.read_bytes()) == (BOMB_SIDE, BOMB_SIDE)
    # Pillow (another decoder) accepts the file: chunk CRCs and structure are valid
    Image.MAX_IMAGE_PIXELS, limit = None, Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as im:
            assert im.size == (BOMB_SIDE, BOMB_SIDE) and im.mode == "1"
            im.verify()
    finally:
        Image.MAX_IMAGE_PIXELS = limit


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_image_size_reads_each_header_without_decoding(ext):
    img = np.zeros((37, 53, 3), np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok and image_size(buf.tobytes()) == (53, 37)


def test_read_image_refuses_an_image_above_the_limit_before_decoding(tmp_path, decoded):
    path = _bomb_png(tmp_path / "bomb.png")
    before = _max_rss_bytes()
    with pytest.raises(image_io.ImageTooLargeError, match=r"bomb.png: 30000x30000 pixels .*data.max_image_pixels"):
        read_image(path)
    assert decoded == [] and _max_rss_bytes() - before < 500 * 2**20
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((40, 30, 3), np.uint8))
    with pytest.raises(image_io.ImageTooLargeError):
        read_image(small, max_pixels=1000)
    assert read_image(small, max_pixels=1200).shape == (40, 30, 3)


def _coco_with_bomb(tmp_path: Path) -> Path:
    """Images 1 and 4 are small PNGs; image 2 is the bomb with its true size in the json, image 3 the bomb
    under a json entry that claims 64x64."""
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.png", "d.png"):
        cv2.imwrite(str(root / name), np.full((64, 64, 3), 90, np.uint8))
    _bomb_png(root / "bomb.png")
    _bomb_png(root / "liar.png")
    images = [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 64},
        {"id": 2, "file_name": "bomb.png", "width": BOMB_SIDE, "height": BOMB_SIDE},
        {"id": 3, "file_name": "liar.png", "width": 64, "height": 64},
        {"id": 4, "file_name": "d.png", "width": 64, "height": 64},
    ]
    anns = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}
        for i in range(1, 5)
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return path


def test_bomb_png_is_skipped_in_detection_without_being_decoded(tmp_path, decoded, restransfer_logs):
    json_path = _coco_with_bomb(tmp_path)
    before = _max_rss_bytes()
    ds = CocoDataset(json_path, tmp_path / "images", is_train=True)
    assert ds.image_ids == [1, 3, 4]  # image 2 is left out by the json's size, never read
    assert "bomb.png" in restransfer_logs.text and "larger than data.max_image_pixels" in restransfer_logs.text
    image, target = ds[1]  # the liar: refused by its header, the next image is used instead
    assert target["image_id"] == 4 and image.shape == (3, 64, 64)
    assert ds.num_skipped == 1 and "liar.png: 30000x30000 pixels" in restransfer_logs.text
    assert all(size == (64, 64) for size in decoded)
    assert _max_rss_bytes() - before < 500 * 2**20
    test_set = CocoDataset(json_path, tmp_path / "images", max_image_pixels=None)  # no limit: all four listed
    assert test_set.image_ids == [1, 2, 3, 4]


def test_max_image_pixels_is_a_config_key_of_both_tasks(tmp_path):
    cfg = load_config(None, ["data.max_image_pixels=5000"])
    assert load_config(None).data.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS and cfg.data.max_image_pixels == 5000
    with pytest.raises(ConfigError, match="data.max_image_pixels: 0 must be at least 1"):
        load_config(None, ["data.max_image_pixels=0"])
    (tmp_path / "c.yaml").write_text("data: {train: [{image_root: x}]}\n")
    cls = load_cls_config(tmp_path / "c.yaml", ["data.max_image_pixels=7", "data.allow_outside_root=true"])
    assert cls.data.max_image_pixels == 7 and cls.data.allow_outside_root is True
    assert load_cls_config(tmp_path / "c.yaml").data.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS


def test_bomb_png_is_skipped_in_classification_without_being_decoded(tmp_path, decoded, restransfer_logs):
    root = tmp_path / "train"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        cv2.imwrite(str(root / cls / "0.png"), np.full((40, 40, 3), 100, np.uint8))
    _bomb_png(root / "a" / "1.png")
    paths, labels, names = read_imagefolder(root)
    ds = ClassificationDataset(paths, labels, names, TrainTransform(crop=32))
    before = _max_rss_bytes()
    x, label = ds[(1, 0)]  # a/1.png is the bomb: b/0.png comes instead, with its own label
    assert x.shape == (3, 32, 32) and label == 1
    assert ds.num_skipped == 1 and ds.skipped_names() == [str(root / "a" / "1.png")]
    assert "1.png: 30000x30000 pixels" in restransfer_logs.text
    assert all(size == (40, 40) for size in decoded)
    assert _max_rss_bytes() - before < 500 * 2**20


# ----------------------------------------------------------------------------------------- CIFAR


def _hostile_cifar_batch(path: Path, rows: int = 2**19) -> Path:
    """A protocol-2 pickle of ``{"data": <uint8 array of shape (rows, 3072)>, "labels": []}`` that declares the
    array's shape to numpy's ``_reconstruct`` instead of giving its bytes: under 200 bytes that would
    allocate rows * 3 KB."""
    path.write_bytes(
        b"\x80\x02}(X\x04\x00\x00\x00data"
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + b"J"
        + struct.pack("<i", rows)
        + b"M\x00\x0c\x86"  # shape (rows, 3072)
        + b"C\x01B\x87R"  # dtype code 'B' (uint8); _reconstruct(ndarray, shape, dtype)
        b"X\x06\x00\x00\x00labels]u."
    )
    return path


def _cifar_folder(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [0, 1]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def test_cifar_batch_claiming_2_19_rows_is_refused_before_allocating(tmp_path):
    root = _cifar_folder(tmp_path)
    path = _hostile_cifar_batch(root / "test_batch")
    assert path.stat().st_size < 240
    before = _max_rss_bytes()
    with pytest.raises(
        DataError,
        match=r"test_batch: not a CIFAR-10 python batch: .*declares an array of shape "
        r"\(524288, 3072\)",
    ):
        read_cifar10(root, "test")
    assert _max_rss_bytes() - before < 500 * 2**20


@pytest.mark.parametrize(
    "meta",
    [[1, 2], {"label_names": None}, {"label_names": [3, 4]}, {"other": 1}, b"junk"],
    ids=["list", "none", "ints", "no-key", "not-a-pickle"],
)
def test_malformed_batches_meta_is_a_data_error(tmp_path, meta):
    root = _cifar_folder(tmp_path)
    (root / "batches.meta").write_bytes(meta if isinstance(meta, bytes) else pickle.dumps(meta, protocol=2))
    with pytest.raises(DataError, match="batches.meta"):
        read_cifar10(root, "test")


def _cifar_cfg(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "cifar.yaml"
    path.write_text(
        json.dumps(
            {
                "model": {"arch": "cifar", "depth": 8, "num_classes": 10},
                "data": {"train": [{"image_root": str(root), "format": "cifar10"}], "num_workers": 0},
                "input": {"scale_min": 0, "crop": 32, "test_size": 32, "pad": 4},
                "solver": {"ims_per_batch": 2, "max_iter": 1, "steps": [], "warmup_iters": 0},
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    return path


def test_train_cls_tool_malformed_meta_and_cuda_without_gpu_exit_2(tmp_path, capsys):
    root = _cifar_folder(tmp_path)
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": "airplane"}, protocol=2))
    tool = _tool("train_cls")
    assert run_tool(tool.main, [str(_cifar_cfg(tmp_path, root)), "device=cpu"]) == 2
    _user_error(capsys, root / "batches.meta", "label_names")
    if torch.cuda.is_available():
        return
    assert run_tool(tool.main, [str(_cifar_cfg(tmp_path, root)), "device=cuda"]) == 2
    _user_error(capsys, "device=cuda", "device=cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_device_error():
    with pytest.raises(DeviceError, match=r"device=cuda:1: CUDA was requested but .*set device=cpu"):
        resolve_device("cuda:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_det_tool_cuda_without_gpu_exits_2(tmp_path, capsys):
    tool = _tool("train_det")
    argv = [str(REPO / "configs" / "coco_faster_rcnn_r101.yaml"), "device=cuda", f"output_dir={tmp_path / 'out'}"]
    assert run_tool(tool.main, argv) == 2
    _user_error(capsys, "device=cuda", "CUDA was requested", "device=cpu")


# --------------------------------------------------------------------------------- image folders


def test_images_and_class_folders_outside_the_root_are_left_out(tmp_path, restransfer_logs):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for name in ("o1.png", "o2.png"):
        cv2.imwrite(str(outside / name), np.full((8, 8, 3), 10, np.uint8))
    root = tmp_path / "train"
    (root / "a").mkdir(parents=True)
    cv2.imwrite(str(root / "a" / "in.png"), np.full((8, 8, 3), 10, np.uint8))
    os.symlink(outside / "o1.png", root / "a" / "link.png")  # a file leading out
    os.symlink(root / "a" / "in.png", root / "a" / "inside_link.png")  # a link that stays inside
    os.symlink(outside, root / "b")  # a class folder leading out
    paths, labels, names = read_imagefolder(root)
    assert names == ["a", "b"]  # the class stays: a test set's labels keep their meaning
    assert sorted(Path(p).name for p in paths) == ["in.png", "inside_link.png"] and set(labels) == {0}
    assert "3 of 5 images resolve outside the image folder" in restransfer_logs.text
    assert "data.allow_outside_root" in restransfer_logs.text
    paths, labels, _ = read_imagefolder(root, allow_outside_root=True)
    assert len(paths) == 5 and sorted(labels.tolist()) == [0, 0, 0, 1, 1]


# --------------------------------------------------------------------------------- COCO ground truth


def _gt(images=None, anns=None, cats=None) -> dict:
    images = (
        images
        if images is not None
        else [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2)]
    )
    anns = (
        anns
        if anns is not None
        else [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}
            for i in (1, 2)
        ]
    )
    return {
        "images": images,
        "annotations": anns,
        "categories": cats if cats is not None else [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
    }


def _results() -> list:
    return [{"image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "score": 0.9} for i in (1, 2)]


def _duplicated(kind: str) -> dict:
    gt = _gt()
    if kind == "annotation":
        gt["annotations"].append(dict(gt["annotations"][0], bbox=[40, 40, 10, 10]))
    elif kind == "image":
        gt["images"].append(dict(gt["images"][0], file_name="other.png"))
    else:
        gt["categories"].append({"id": 2, "name": "z"})
    return gt


@pytest.mark.parametrize("kind", ["annotation", "image", "category"])
def test_duplicated_ids_are_errors_in_evaluation(tmp_path, kind):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_duplicated(kind)))
    with pytest.raises(DataError, match=rf"gt.json: 1 {kind} ids appear more than once \({kind} id [12] at"):
        evaluate_coco(path, _results(), engine="pycocotools")
    with pytest.raises(DataError, match=f"{kind} id"):  # a dict given directly is checked the same way
        evaluate_coco(_duplicated(kind), _results(), engine="pycocotools")


def test_duplicated_ids_are_left_out_with_a_warning_in_training(tmp_path, restransfer_logs):
    root = tmp_path / "images"
    root.mkdir()
    for i in (1, 2):
        cv2.imwrite(str(root / f"{i}.png"), np.zeros((64, 64, 3), np.uint8))
    gt = _duplicated("annotation")
    path = tmp_path / "train.json"
    path.write_text(json.dumps(gt))
    ds = CocoDataset(path, root, is_train=True)
    assert ds.num_targets == 2 and "annotation id 1 at annotations[0], annotations[2]" in restransfer_logs.text
    assert "only the first entry of each id is used" in restransfer_logs.text
    with pytest.raises(DataError, match="annotation id 1"):  # a test set refuses it
        CocoDataset(path, root)
    # without the duplicate the AP is 100; the duplicate would have lowered it silently
    assert evaluate_coco(_gt(), _results(), engine="pycocotools")["bbox"]["AP"] == pytest.approx(100.0)


def test_missing_annotation_ids_never_repeat_given_ones(tmp_path):
    gt = _gt()
    gt["annotations"][0].pop("id")  # the other annotation has id 2: the new one must not be 1 + 1
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert sorted(load_coco_json(path).anns) == [2, 3]


@pytest.mark.parametrize("where", ["images", "annotations.image_id", "categories", "annotations.category_id"])
def test_string_ids_are_an_error_that_says_so(tmp_path, where):
    gt = _gt()
    section, _, key = where.partition(".")
    gt[section][0][key or "id"] = "000001"
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with pytest.raises(DataError, match=rf"gt.json: {section}\[0\].{key or 'id'}: '000001' is not an integer"):
        load_coco_json(path)


def test_eval_coco_tool_string_image_ids_and_deep_json_exit_2(tmp_path, capsys):
    tool = _tool("eval_coco")
    gt = _gt()
    for img, ann in zip(gt["images"], gt["annotations"]):
        img["id"] = ann["image_id"] = f"img{img['id']}"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(_results()))
    assert run_tool(tool.main, ["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json")]) == 2
    _user_error(capsys, "gt.json", "'img1' is not an integer")
    (tmp_path / "good.json").write_text(json.dumps(_gt()))
    strings = [dict(r, image_id=str(r["image_id"])) for r in _results()]
    (tmp_path / "strings.json").write_text(json.dumps(strings))
    assert run_tool(tool.main, ["--gt", str(tmp_path / "good.json"), "--results", str(tmp_path / "strings.json")]) == 2
    _user_error(capsys, "strings.json: results[0]: image_id '1'", "integer")

    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text(deep)
    for args in (["--gt", "deep.json", "--results", "res.json"], ["--gt", "good.json", "--results", "deep.json"]):
        assert run_tool(tool.main, [str(tmp_path / a) if a.endswith(".json") else a for a in args]) == 2
        _user_error(capsys, tmp_path / "deep.json", "nested too deeply")


def test_json_reader_names_the_file_for_every_kind_of_damage(tmp_path):
    cases = {
        "deep.json": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "latin1.json": b'{"name": "caf\xe9"}',
        "cut.json": b'{"images": [\n1,\n',
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"{name}"):
            read_json(tmp_path / name)
    with pytest.raises(DataError, match=r"cut.json: line 3: not valid JSON"):
        read_json(tmp_path / "cut.json")


# -------------------------------------------------------------------------------------- logs, plots


def test_undecodable_log_bytes_name_the_file_and_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_bytes(b'{"iteration": 1, "loss": 1.0}\n{"iteration": 2, "loss": \xff\xfe}\n')
    with pytest.raises(DataError, match=r"log.jsonl: line 2: not UTF-8 text \(byte 0xff at column 26\)"):
        read_run(run)
    assert run_tool(_tool("plot_logs").main, [str(run), "--output", str(tmp_path / "c.png")]) == 2
    _user_error(capsys, run / "log.jsonl", "line 2")
    (run / "log.jsonl").write_text('{"iteration": 1, "loss": 1.0}\n' + "[" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"log.jsonl: line 2: the JSON is nested too deeply"):
        read_run(run)


def test_file_stems_are_distinct_and_safe():
    names = ["a/b", "a?b", "Cat", "cat", "overall", "$x^{$", "..", "é" * 300, "plain"]
    stems = unique_file_stems(names, ("overall", "pr_curves"))
    assert len({s.lower() for s in stems}) == len(names)
    assert stems[-1] == "plain" and all(len(s) <= 90 and not s.startswith(".") and "/" not in s for s in stems)
    assert stems == unique_file_stems(names, ("overall", "pr_curves"))  # deterministic
    assert unique_file_stems(["a?b"])[0] == safe_name("a?b") == "a_b"  # no collision: the plain form


def _named_gt(names) -> dict:
    cats = [{"id": k + 1, "name": n, "supercategory": "s"} for k, n in enumerate(names)]
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(len(names))]
    anns = [
        {"id": i + 1, "image_id": i + 1, "category_id": i + 1, "bbox": [20, 20, 40, 40], "area": 1600, "iscrowd": 0}
        for i in range(len(names))
    ]
    return {"images": images, "annotations": anns, "categories": cats}


def _named_results(gt) -> list:
    res = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    res.append({"image_id": 1, "category_id": 2, "bbox": [60, 60, 20, 20], "score": 0.5})
    return res


NAMES = ["$x^{$", "a/b", "a?b", "A?B", "$5 bill", "overall"]


def test_dollar_names_draw_in_a_report(tmp_path):
    gt = _named_gt(NAMES)
    results = _named_results(gt)
    metrics = evaluate_coco(gt, results, engine="pycocotools")
    path = write_coco_report(tmp_path / "metrics.json", metrics, gt, results)
    images = report_images(path)
    assert len(images) >= 3 and all(data[:4] == b"\x89PNG" for _, data in images)
    assert "$x^{$" in path.read_text(encoding="utf-8")


def test_analyze_coco_tool_draws_dollar_names_and_keeps_colliding_names_apart(tmp_path, capsys):
    gt = _named_gt(NAMES)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(_named_results(gt)))
    out = tmp_path / "analysis"
    assert (
        run_tool(
            _tool("analyze_coco").main,
            ["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json"), "--output", str(out)],
        )
        == 0
    )
    assert "error" not in capsys.readouterr().err
    pngs = sorted(p.name for p in out.glob("*-bbox.png"))
    # overall, pr_curves and one per category, none overwriting another (also on case-insensitive disks)
    assert len(pngs) == 2 + len(NAMES) and len({p.lower() for p in pngs}) == len(pngs)
    assert "overall-bbox.png" in pngs and "pr_curves-bbox.png" in pngs


# ---------------------------------------------------------------------------------- empty results


def test_eval_coco_allow_empty_scores_an_empty_results_file(tmp_path, capsys):
    tool = _tool("eval_coco")
    (tmp_path / "gt.json").write_text(json.dumps(_gt()))
    (tmp_path / "empty.json").write_text("[]")
    argv = ["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "empty.json")]
    assert run_tool(tool.main, argv) == 2
    _user_error(capsys, "empty.json: no detections", "--allow-empty")
    out = tmp_path / "metrics.json"
    assert run_tool(tool.main, argv + ["--allow-empty", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "empty.json holds no detections: every metric with ground truth is 0" in printed
    metrics = json.loads(out.read_text())["bbox"]
    assert metrics["AP"] == 0.0 and metrics["per_category"]["x"] == 0.0 and metrics["per_category"]["y"] is None
