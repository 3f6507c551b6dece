"""The inference fast paths give the plain model's answers: BN folding, fused oneDNN kernels,
channels_last, parallel RoIAlign and single-allocation mask pasting (fp32, float noise only), and bf16
feature layers (agreement on a small calibrated model; fp32 outputs). Correctness, not timing."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_detectors import C4, tiny_config, tiny_model
from torchvision.models.detection.roi_heads import paste_masks_in_image

from restransfer.benchmark import detection_agreement, randomize_weights, synthetic_batch
from restransfer.models import build_model, inference_kwargs
from restransfer.models.fused import FusedConv2d, FusedResidualBlock, onednn_fusion_available
from restransfer.models.postprocess import FastDetectionTransform, paste_masks

pytestmark = pytest.mark.usefixtures("single_thread")  # small models: one intra-op thread (conftest.py)


def _run(model, images):
    with torch.inference_mode():
        return model(images)[0]


def _assert_same_detections(a, b, box_tol=1e-3):
    agreement, box_diff = detection_agreement(a, b)
    assert agreement == 1.0, f"only {agreement:.0%} of the detections agree"
    assert box_diff <= box_tol
    assert len(a["boxes"]) == len(b["boxes"]) > 0
    # same detections in the same order (no near-ties here): scores and masks compare one to one
    assert torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-5)
    if "masks" in a:
        assert a["masks"].shape == b["masks"].shape
        torch.testing.assert_close(a["masks"], b["masks"], rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "extra",
    [
        [],  # FPN Mask R-CNN, frozen BN
        C4 + ["model.backbone.style=caffe", "model.backbone.norm=bn"],  # C4, trainable BN in eval mode
    ],
)
def test_fp32_fast_path_matches_plain_model(extra):
    _, model, images = tiny_model(*extra)
    plain = _run(model, images)
    fast = copy.deepcopy(model).optimize_for_inference()
    assert fast._optimized == {"fold_bn": True, "fuse": True, "channels_last": True, "precision": "fp32"}
    # every BatchNorm is gone and the ResNet blocks run fused
    assert not any(
        isinstance(m, (torch.nn.BatchNorm2d,)) or type(m).__name__ == "FrozenBatchNorm2d" for m in fast.modules()
    )
    assert any(isinstance(m, FusedResidualBlock) for m in fast.modules())
    assert isinstance(fast.transform, FastDetectionTransform)
    _assert_same_detections(_run(fast, images), plain)


def test_each_lever_alone_matches_plain_model():
    _, model, images = tiny_model()
    plain = _run(model, images)
    for kwargs in (
        dict(fuse=False, channels_last=False),
        dict(fuse=True, channels_last=False),
        dict(fold_bn=False, fuse=False, channels_last=True),
    ):
        _assert_same_detections(_run(copy.deepcopy(model).optimize_for_inference(**kwargs), images), plain)


def test_fast_path_is_no_further_from_float64_than_plain_fp32():
    """The fast path's differences are rounding: against the exact (float64) result it is as close as
    the plain fp32 model (up to a small factor, both being float noise)."""
    _, model, images = tiny_model(arch="faster_rcnn")
    exact = copy.deepcopy(model).double()
    with torch.inference_mode():
        ref = {
            k: v.float() if v.is_floating_point() else v for k, v in exact([im.double() for im in images])[0].items()
        }
    _, plain_diff = detection_agreement(_run(model, images), ref)
    agreement, fast_diff = detection_agreement(_run(copy.deepcopy(model).optimize_for_inference(), images), ref)
    assert agreement == 1.0
    assert fast_diff <= 4 * plain_diff + 1e-4


def test_bf16_agrees_with_fp32_on_small_model():
    _, model, images = tiny_model()
    fp32 = _run(copy.deepcopy(model).optimize_for_inference(), images)
    low = copy.deepcopy(model).optimize_for_inference(precision="bf16")
    # the feature layers are bf16, every score/box layer fp32
    assert low.backbone.body.conv1.weight.dtype == torch.bfloat16
    assert low.roi_heads.box_head.fc6.weight.dtype == torch.bfloat16
    assert low.roi_heads.mask_head[0][0].weight.dtype == torch.bfloat16
    assert low.roi_heads.box_predictor.cls_score.weight.dtype == torch.float32
    assert low.rpn.head.cls_logits.weight.dtype == torch.float32
    out = _run(low, images)
    assert out["boxes"].dtype == out["scores"].dtype == out["masks"].dtype == torch.float32
    agreement, _ = detection_agreement(out, fp32)
    assert agreement >= 0.8, f"bf16 agrees on only {agreement:.0%} of the detections"
    # the strongest detection is the same, with a close score
    assert int(out["labels"][0]) == int(fp32["labels"][0])
    assert abs(float(out["scores"][0]) - float(fp32["scores"][0])) < 0.03


def test_fused_kernels_follow_cpu_autocast():
    """Code that wraps an optimized fp32 model in ``torch.autocast`` gets what autocast gives the plain model
    (the fused kernels are invisible to autocast, so they cast like ``F.conv2d`` would)."""
    _, model, images = tiny_model()
    fast = copy.deepcopy(model).optimize_for_inference()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain, ours = model(images)[0], fast(images)[0]
        batch = fast.transform(images)[0].tensors
        assert all(f.dtype == torch.bfloat16 for f in fast.backbone(batch).values())
    assert ours["boxes"].dtype == plain["boxes"].dtype
    agreement, _ = detection_agreement(ours, plain)
    assert agreement >= 0.7  # bf16 rounding differs (folded weights) and reorders near-ties


def test_fp16_on_cpu_without_support_is_a_clear_error():
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", None)
    if probe is not None and probe():
        pytest.skip("this CPU runs fp16 natively")
    _, model, _ = tiny_model(arch="faster_rcnn")
    with pytest.raises(ValueError, match="use bf16"):
        model.optimize_for_inference(precision="fp16")


def test_optimizing_twice_with_other_options_raises():
    _, model, _ = tiny_model(arch="faster_rcnn")
    model.optimize_for_inference()
    assert model.optimize_for_inference() is model
    with pytest.raises(RuntimeError, match="already optimized"):
        model.optimize_for_inference(precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        copy.deepcopy(model).optimize_for_inference(precision="int8")


def test_inference_kwargs_follow_the_config():
    assert inference_kwargs(tiny_config()) == dict(fold_bn=True, fuse=True, channels_last=True, precision="fp32")
    cfg = tiny_config("test.optimize=false", "test.precision=bf16")
    assert inference_kwargs(cfg) == dict(fold_bn=False, fuse=False, channels_last=False, precision="bf16")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_conv_matches_plain_ops(dtype, channels_last):
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1).to(dtype)
    x = torch.randn(2, 8, 11, 13, generator=g).to(dtype)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 16, 6, 7, generator=g).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    with torch.inference_mode():
        ref = conv(x)
        torch.testing.assert_close(FusedConv2d(conv)(x), ref, **tol)
        torch.testing.assert_close(FusedConv2d(conv, relu=True)(x), F.relu(ref), **tol)
        torch.testing.assert_close(FusedConv2d(conv, relu=True)(x, residual), F.relu(ref + residual), **tol)
    # with autograd recording, the plain ops run (the fused kernels have no backward)
    xg = x.float().detach().requires_grad_()
    y = FusedConv2d(conv.float(), relu=True)(xg)
    y.sum().backward()
    assert xg.grad is not None


def test_onednn_probe_says_whether_the_fused_kernels_run_and_are_used(monkeypatch):
    """The probe answers True exactly when this build's fused conv + ReLU and linear + ReLU kernels run and
    give the plain ops' results (checked here on other shapes), and FusedConv2d calls the kernel exactly
    then; otherwise it computes with the plain ops, and gets the same answer either way."""
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(2, 5, 9, 6, generator=g), torch.randn(7, 5, 3, 3, generator=g), torch.randn(7, generator=g)
    xl, wl, bl = torch.randn(4, 10, generator=g), torch.randn(3, 10, generator=g), torch.randn(3, generator=g)
    ref = F.relu(F.conv2d(x, w, b, 2, 1))
    try:
        with torch.no_grad():
            conv = torch.ops.mkldnn._convolution_pointwise(x, w, b, [1, 1], [2, 2], [1, 1], 1, "relu", [], "")
            linear = torch.ops.mkldnn._linear_pointwise(xl, wl, bl, "relu", [], "")
        runs = torch.allclose(conv, ref, rtol=1e-4, atol=1e-4) and torch.allclose(
            linear, F.relu(F.linear(xl, wl, bl)), rtol=1e-4, atol=1e-4
        )
    except (AttributeError, RuntimeError, TypeError):
        runs = False
    assert onednn_fusion_available() is runs

    calls = []
    kernel = torch.ops.mkldnn._convolution_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", lambda *a: calls.append(a) or kernel(*a))
    plain = torch.nn.Conv2d(5, 7, 3, stride=2, padding=1)
    with torch.no_grad():
        plain.weight.copy_(w)
        plain.bias.copy_(b)
    with torch.inference_mode():
        out = FusedConv2d(plain, relu=True)(x)
    assert bool(calls) is runs
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_paste_masks_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 1, 28, 28, generator=g)
    boxes = torch.tensor(
        [
            [10.0, 12.0, 50.0, 40.0],  # inside
            [-15.0, -8.0, 20.0, 30.0],  # partly outside, top-left
            [90.0, 50.0, 140.0, 90.0],  # partly outside, bottom-right
            [30.5, 20.2, 30.9, 20.7],  # smaller than a pixel
            [200.0, 200.0, 230.0, 240.0],  # entirely outside
            [0.0, 0.0, 99.0, 63.0],
        ]
    )  # the whole image
    ours = paste_masks(masks, boxes, (64, 100))
    theirs = paste_masks_in_image(masks, boxes, (64, 100))
    assert ours.shape == (6, 1, 64, 100)
    assert torch.equal(ours, theirs)
    assert paste_masks(masks[:0], boxes[:0], (64, 100)).shape == (0, 1, 64, 100)


def test_randomized_weights_are_calibrated_and_biased():
    torch.manual_seed(0)
    model = build_model(tiny_config(arch="faster_rcnn")).eval()
    images, _ = synthetic_batch((96, 128))
    randomize_weights(model, images, num_biased_classes=2, residual_gain=0.2)
    body = model.backbone.body
    with torch.inference_mode():
        x = model.transform(images)[0].tensors
        stem = body.bn1(body.conv1(x))  # normalized with the statistics of this very input
        out = model(images)[0]
    torch.testing.assert_close(stem.mean(dim=(0, 2, 3)), torch.zeros(64), atol=1e-3, rtol=0)
    torch.testing.assert_close(stem.var(dim=(0, 2, 3)), torch.ones(64), atol=1e-2, rtol=0)
    block = body.layer1[0]
    assert torch.allclose(block.bn2.weight, torch.full_like(block.bn2.weight, 0.2))  # closes the residual branch
    assert torch.allclose(block.bn1.weight, torch.ones_like(block.bn1.weight))
    assert len(out["boxes"]) > 0 and set(out["labels"].tolist()) <= {1, 2}


# ------------------------------------------------------------------------------------- benchmark


def _det(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


def test_detection_agreement_is_one_to_one_and_order_free():
    ref = _det([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 30]], [1, 2, 1])
    shuffled = _det([[50, 0, 60, 30], [0, 0, 10, 10.05], [20, 20, 40, 40]], [1, 1, 2])
    agreement, diff = detection_agreement(shuffled, ref)
    assert agreement == 1.0 and diff == pytest.approx(0.05, abs=1e-5)
    relabelled = _det([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 30]], [1, 3, 1])
    assert detection_agreement(relabelled, ref)[0] == pytest.approx(2 / 3)
    doubled = _det([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1])  # one reference box cannot match twice
    assert detection_agreement(doubled, ref)[0] == pytest.approx(1 / 3)
    assert detection_agreement(_det([], []), _det([], []))[0] == 1.0


def test_torchvision_reference_is_the_same_network():
    from restransfer.benchmark import reference_incompatibility, torchvision_reference

    cfg = tiny_config("model.fpn_out_channels=256", "model.roi_heads.mask_conv_dim=256")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images, _ = synthetic_batch((96, 128))
    randomize_weights(model, images)
    assert reference_incompatibility(cfg) is None
    ref = torchvision_reference(cfg)
    ref.load_state_dict(model.state_dict())
    _assert_same_detections(_run(ref.eval(), images), _run(model, images), box_tol=1e-4)
    assert "C4" in reference_incompatibility(tiny_config(*C4))
    assert "BGR" in reference_incompatibility(tiny_config("model.channel_order=BGR"))


@pytest.mark.slow
def test_run_benchmark_reports_every_figure():
    """Running is the point here (timings are not checked), plus the fp32 agreement."""
    from restransfer.benchmark import format_report, run_benchmark

    cfg = tiny_config("model.fpn_out_channels=256", "model.roi_heads.mask_conv_dim=256")
    result = run_benchmark(cfg, precision=["fp32", "bf16"], iters=2, warmup=1, size=(64, 80), memory_repeats=1)
    names = ["restransfer fp32", "restransfer bf16", "torchvision fp32"]
    assert list(result["measurements"]) == names
    for m in result["measurements"].values():
        assert m.images_per_s > 0 and m.latency_p25 <= m.latency_median <= m.latency_p75
        assert m.flops_per_image > 1e8 and m.gflops_per_s > 0 and m.peak_memory_mb >= 0
    assert set(result["ratios"]) == set(names[:2])
    assert result["agreement"]["restransfer fp32"]["fraction"] == 1.0
    report = format_report(result)
    assert "torchvision fp32" in report and "agreement" in report


@pytest.mark.slow
def test_run_benchmark_training_step_counts_each_model_s_work():
    """--train times both networks; each is credited with its own FLOPs (the sparse RPN backward does less)."""
    from restransfer.benchmark import format_report, run_benchmark

    cfg = tiny_config("model.fpn_out_channels=256", "model.rpn.batch_size_per_image=16", arch="faster_rcnn")
    result = run_benchmark(cfg, train=True, iters=1, warmup=1, size=(64, 80), memory="off")  # FLOPs, not memory
    ours, theirs = result["measurements"]["restransfer fp32"], result["measurements"]["torchvision fp32"]
    assert 0 < ours.flops_per_image < theirs.flops_per_image
    assert set(result["ratios"]) == {"restransfer fp32"}
    assert "torchvision fp32" in format_report(result)
