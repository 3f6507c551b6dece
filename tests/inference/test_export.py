"""Export round trips: ONNX (when onnx and onnxruntime are installed) and TorchScript give the PyTorch
model's detections at any image size; fixed-size files refuse other sizes; ONNX is written by
torch.export where it captures the model, else by the TorchScript-based exporter with the reason;
no deprecation notice reaches the output."""

import copy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers.tiny_detectors import C4, tiny_model, write_checkpoint
from torch import nn

from restransfer.benchmark import detection_agreement, randomize_weights, synthetic_batch
from restransfer.config import load_config
from restransfer.export import export_onnx, export_outputs, export_torchscript, prepare_for_export, verify_export
from restransfer.inference.export import (
    VERIFY_SIZES,
    ExportError,
    ExportMismatchError,
    describe_verification,
    export_model,
    require_agreement,
    verify_export_sizes,
)
from restransfer.models import build_model

pytestmark = pytest.mark.usefixtures("single_thread")  # small models: one intra-op thread (conftest.py)
REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo_shapes_mask_rcnn_r18.yaml"
DEMO = ["device=cpu", "model.backbone.weights=null"]
SIZE = (96, 128)
FEW = "model.roi_heads.detections_per_img=5"  # tracing and pasting cost grows with the detections


def _eager(model, image):
    with torch.no_grad():
        return prepare_for_export(model)([image])[0]


def _as_dict(outputs):
    return dict(zip(["boxes", "scores", "labels", "masks"], outputs))


def _assert_matches_eager(outputs, ref):
    got = _as_dict(outputs)
    assert len(ref["boxes"]) > 0
    agreement, box_diff = detection_agreement(got, ref)
    assert agreement == 1.0 and box_diff < 1e-3
    torch.testing.assert_close(got["scores"], ref["scores"], rtol=0, atol=1e-4)
    assert got["labels"].dtype == torch.int64
    if "masks" in ref:
        assert got["masks"].shape == ref["masks"].shape
        torch.testing.assert_close(got["masks"], ref["masks"], rtol=0, atol=1e-3)


def _deprecation_notices(records):
    return [
        f"{r.category.__name__}: {r.message}"
        for r in records
        if "deprecat" in str(r.message).lower() or "legacy TorchScript-based" in str(r.message)
    ]


@pytest.fixture(scope="module")
def mask_model():
    _, model, images = tiny_model(FEW, size=SIZE)
    return model, images[0]


@pytest.fixture(scope="module")
def demo_model():
    """The demo's architecture (Mask R-CNN R18-FPN, configs/demo_shapes_mask_rcnn_r18.yaml) with calibrated
    random weights: 20 detections (its detections_per_img) at each verification size."""
    torch.manual_seed(0)
    model = build_model(load_config(DEMO_CONFIG, DEMO)).eval()
    randomize_weights(model, synthetic_batch((128, 128), 1, seed=0)[0])
    return model


def test_torchscript_round_trip_and_size_guard(mask_model, tmp_path):
    model, image = mask_model
    path = export_torchscript(model, tmp_path / "m.pt", size=SIZE, dynamic=False)
    _assert_matches_eager(export_outputs(path, image), _eager(model, image))
    other = synthetic_batch((80, 128), seed=1)[0][0]
    with pytest.raises(Exception, match="expected an image of size 96x128"):
        export_outputs(path, other)
    # the source model is untouched by the export (it works on a copy)
    assert not model._optimized


def test_torchscript_takes_any_size_by_default(mask_model, tmp_path):
    model, _ = mask_model
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        path = export_torchscript(model, tmp_path / "d.pt", size=SIZE)
        for size in [(60, 128), (150, 90)]:  # short-side resize, and the long-side cap
            image = synthetic_batch(size, seed=2)[0][0]
            _assert_matches_eager(export_outputs(path, image), _eager(model, image))
    # torch.jit.trace/script/save/load are deprecated in PyTorch; their notices stay inside the export
    assert _deprecation_notices(records) == []


def test_onnx_round_trip_static_and_dynamic(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    _, model, images = tiny_model(*C4, FEW, size=SIZE)  # C4 here, FPN in the TorchScript and demo tests
    image = images[0]
    static = export_onnx(model, tmp_path / "s.onnx", size=SIZE, dynamic=False, exporter="torchscript")
    _assert_matches_eager(export_outputs(static, image), _eager(model, image))
    with pytest.raises(Exception, match="invalid dimensions for input"):
        export_outputs(static, synthetic_batch((80, 128), seed=1)[0][0])
    dynamic = export_onnx(model, tmp_path / "d.onnx", size=SIZE, exporter="torchscript")
    other = synthetic_batch((150, 90), seed=2)[0][0]
    _assert_matches_eager(export_outputs(dynamic, other), _eager(model, other))
    report = verify_export(model, dynamic, (70, 100))
    assert report["agreement"] == 1.0 and report["detections"] > 0


def test_demo_model_onnx_agrees_with_pytorch_at_three_sizes(demo_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        result = export_model(demo_model, tmp_path / "demo.onnx", "onnx", size=(128, 128))
    assert _deprecation_notices(records) == []
    assert result.format == "onnx" and result.dynamic and result.path.is_file()
    if result.exporter == "torchscript":
        # torch.export could not capture the detector: the reason names the failure and the code it stopped in
        assert result.fallback.startswith("torch.export could not export the detector: ")
        assert " at " in result.fallback and ".py:" in result.fallback
        assert "TorchScript-based exporter wrote the file" in result.describe()
    else:
        assert result.exporter == "torch.export" and result.fallback is None
    # height and width are symbolic in the file, not the example's 128 x 128
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 0, 0] and all(d.dim_param for d in dims[1:])

    assert VERIFY_SIZES == ((96, 128), (128, 128), (160, 224))
    reports = verify_export_sizes(demo_model, result.path)
    for report in reports:
        assert report["detections"] >= 5  # calibrated weights: the comparison covers real detections
        assert report["matched"] == report["detections"] == report["exported_detections"]
        assert report["max_score_difference"] <= 1e-3 and report["min_iou"] > 0.99
        assert describe_verification(report).startswith(
            f"{int(report['height'])}x{int(report['width'])}: {int(report['detections'])}/"
            f"{int(report['detections'])} detections agree"
        )
    require_agreement(reports)


def test_a_changed_model_fails_verification_naming_the_sizes(mask_model, tmp_path):
    model, _ = mask_model
    path = export_torchscript(model, tmp_path / "m.pt", size=SIZE)
    changed = copy.deepcopy(model)
    with torch.no_grad():  # a likelier background: the same boxes with scores ~0.04 lower (tolerance 1e-3)
        changed.roi_heads.box_predictor.cls_score.bias[0] += 3.0
    reports = verify_export_sizes(changed, path, [(96, 128), (100, 100)])
    assert all(r["detections"] > 0 and r["matched"] == 0 and r["max_score_difference"] > 1e-2 for r in reports)
    assert all(r["min_iou"] > 0.99 for r in reports)  # matched by label and IoU, failed on the score
    with pytest.raises(
        ExportMismatchError,
        match=r"differ from the PyTorch model's at 96x128 \(0/\d+ agree\), "
        r"100x100 \(0/\d+ agree\)",
    ):
        require_agreement(reports)
    assert require_agreement(verify_export_sizes(model, path, [(100, 100)])) is None


class _Heads(nn.Module):
    def has_mask(self) -> bool:
        return False


class _DenseDetector(nn.Module):
    """The detector's call convention (a list of images in, one dict per image out) without its
    data-dependent control flow: a fixed number of boxes that scale with the image size, which
    torch.export captures whole."""

    _optimized = False

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 6 * 5)
        self.roi_heads = _Heads()

    def optimize_for_inference(self, **kwargs):
        return self

    def forward(self, images):
        image = images[0]
        x = self.head(torch.relu(self.conv(image[None])).mean((2, 3))).view(6, 5)  # 6 boxes
        h, w = image.shape[-2:]
        corner = torch.sigmoid(x[:, :2]) * 0.5
        boxes = torch.cat([corner, corner + 0.25 + 0.25 * torch.sigmoid(x[:, 2:4])], 1)
        xs, ys = boxes[:, 0::2] * w, boxes[:, 1::2] * h
        boxes = torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)
        return [{"boxes": boxes, "scores": torch.sigmoid(x[:, 4]), "labels": (x[:, 4] > 0).long() + 1}]


def test_torch_export_writes_the_onnx_file_where_it_captures_the_model(tmp_path):
    pytest.importorskip("onnxscript")  # torch.onnx's torch.export-based exporter translates through it
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _DenseDetector().eval()
    result = export_model(model, tmp_path / "dense.onnx", "onnx", size=(64, 80), exporter="torch.export")
    assert (result.exporter, result.fallback) == ("torch.export", None)
    for size in [(64, 80), (120, 90)]:
        image = synthetic_batch(size, seed=3)[0][0]
        got = _as_dict(export_outputs(result.path, image))
        with torch.no_grad():
            ref = model([image])[0]
        torch.testing.assert_close(got["boxes"], ref["boxes"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got["scores"], ref["scores"], rtol=1e-5, atol=1e-5)
        assert torch.equal(got["labels"], ref["labels"])


def test_torch_export_alone_names_what_it_could_not_do(mask_model, tmp_path):
    pytest.importorskip("onnx")
    model, _ = mask_model
    with pytest.raises(ExportError, match=r"torch.export could not export the detector: \w+: .* at .*\.py:\d+ in "):
        export_model(model, tmp_path / "x.onnx", "onnx", size=SIZE, exporter="torch.export")
    assert not (tmp_path / "x.onnx").exists()


def test_a_failed_write_names_the_file_and_leaves_nothing(mask_model, tmp_path, monkeypatch):
    import errno
    import os

    model, _ = mask_model

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    target = tmp_path / "out" / "m.pt"
    with pytest.raises(OSError, match=r"cannot write .*m\.pt: No space left on device"):
        export_torchscript(model, target, size=SIZE)
    assert list(target.parent.iterdir()) == []  # neither the file nor its temporary


def test_optimized_models_are_refused(tmp_path):
    _, model, _ = tiny_model(FEW, arch="faster_rcnn", size=SIZE)
    model.optimize_for_inference()
    with pytest.raises(ValueError, match="export needs the plain fp32 model"):
        export_torchscript(model, tmp_path / "x.pt", size=SIZE)


def test_export_command_prints_the_agreement_at_each_size(tmp_path, capsys):
    from helpers.tiny_detectors import write_config

    from restransfer.commands.export import main

    _, model, _ = tiny_model(FEW, arch="faster_rcnn", size=SIZE)
    ckpt = write_checkpoint(tmp_path, model, ["a", "b", "c"])
    config = write_config(tmp_path, [FEW], arch="faster_rcnn")
    out = tmp_path / "tool.pt"
    assert (
        main(
            [
                str(config),
                "--weights",
                str(ckpt),
                "--format",
                "torchscript",
                "--output",
                str(out),
                "--size",
                "96",
                "128",
                "--verify-sizes",
                "80x100,120x90",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"wrote {out} (TorchScript, torch.jit.trace, any image height and width)"
    assert [line.split(":")[0] for line in lines[1:]] == ["80x100", "120x90"]
    assert all(" detections agree (same label, IoU > 0.99, score within 0.001)" in line for line in lines[1:])


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt,command", [("onnx", ["-m", "restransfer", "export"]), ("torchscript", [REPO / "tools" / "export.py"])]
)
def test_export_command_verifies_at_three_sizes_without_deprecation_notices(demo_model, tmp_path, fmt, command):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    ckpt = write_checkpoint(tmp_path, demo_model, ["circle", "triangle", "square"])
    out = tmp_path / ("demo.onnx" if fmt == "onnx" else "demo.pt")
    args = [DEMO_CONFIG, "--weights", ckpt, "--format", fmt, "--output", out, "--size", "128", "128", "--verify", *DEMO]
    proc = subprocess.run([sys.executable, *command, *args], cwd=tmp_path, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert out.is_file() and f"wrote {out}" in proc.stdout
    for h, w in VERIFY_SIZES:
        assert f"{h}x{w}: 20/20 detections agree (same label, IoU > 0.99, score within 0.001)" in proc.stdout
    assert "deprecat" not in text.lower() and "DeprecationWarning" not in text and "FutureWarning" not in text
