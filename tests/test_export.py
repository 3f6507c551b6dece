"""Export round trips: TorchScript (always) and ONNX (when onnx and onnxruntime are installed) give the
eager model's detections; fixed-size files refuse other sizes, dynamic ones match eager at other sizes."""
import warnings

import pytest
import torch

from restransfer.benchmark import detection_agreement, synthetic_batch
from restransfer.export import export_onnx, export_outputs, export_torchscript, prepare_for_export, verify_export

from tiny_detectors import C4, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")  # small models: one intra-op thread (conftest.py)
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


@pytest.fixture(scope="module")
def mask_model():
    _, model, images = tiny_model(FEW, size=SIZE)
    return model, images[0]


def test_torchscript_round_trip_and_size_guard(mask_model, tmp_path):
    model, image = mask_model
    path = export_torchscript(model, tmp_path / "m.pt", size=SIZE)
    _assert_matches_eager(export_outputs(path, image), _eager(model, image))
    other = synthetic_batch((80, 128), seed=1)[0][0]
    with pytest.raises(Exception, match="expected an image of size 96x128"):
        export_outputs(path, other)
    # the source model is untouched by the export (it works on a copy)
    assert not model._optimized


def test_torchscript_dynamic_matches_eager_at_other_sizes(mask_model, tmp_path):
    model, _ = mask_model
    path = export_torchscript(model, tmp_path / "d.pt", size=SIZE, dynamic=True)
    for size in [(60, 128), (150, 90)]:  # short-side resize, and the long-side cap
        image = synthetic_batch(size, seed=2)[0][0]
        _assert_matches_eager(export_outputs(path, image), _eager(model, image))


def test_onnx_round_trip_static_and_dynamic(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    _, model, images = tiny_model(*C4, FEW, size=SIZE)  # C4 here, FPN in the TorchScript tests
    image = images[0]
    static = export_onnx(model, tmp_path / "s.onnx", size=SIZE)
    _assert_matches_eager(export_outputs(static, image), _eager(model, image))
    with pytest.raises(Exception, match="invalid dimensions for input"):
        export_outputs(static, synthetic_batch((80, 128), seed=1)[0][0])
    dynamic = export_onnx(model, tmp_path / "d.onnx", size=SIZE, dynamic=True)
    other = synthetic_batch((150, 90), seed=2)[0][0]
    _assert_matches_eager(export_outputs(dynamic, other), _eager(model, other))
    report = verify_export(model, dynamic, (70, 100))
    assert report["agreement"] == 1.0 and report["detections"] > 0


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


def test_export_tool_writes_a_verified_file(tmp_path):
    import sys
    from pathlib import Path

    from tiny_detectors import write_checkpoint, write_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import export as export_tool

    _, model, _ = tiny_model(FEW, arch="faster_rcnn", size=SIZE)
    ckpt = write_checkpoint(tmp_path, model, ["a", "b", "c"])
    config = write_config(tmp_path, [FEW], arch="faster_rcnn")
    out = tmp_path / "tool.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = export_tool.main([str(config), "--weights", str(ckpt), "--format", "torchscript", "--output", str(out),
                                 "--size", str(SIZE[0]), str(SIZE[1]), "--verify"])
    assert code == 0 and out.is_file()
