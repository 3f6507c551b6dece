"""GPU readiness: a training step in fp32, fp16 (loss scaling) and bf16 with channels_last, a one-process
DDP step over NCCL, inference after ``optimize_for_inference`` at each precision against the plain fp32
model, training and inference with the backbone under ``torch.compile`` (``solver.compile`` /
``test.compile``) at each precision, and TorchScript/ONNX export of a model that lives on the GPU.

Every test is parametrized by device. The CUDA cases skip without a GPU; the CPU cases (fp32 and bf16
training, a gloo DDP step, fp32/bf16 inference, TorchScript export) run everywhere, so the checks
themselves are exercised on every machine.
"""

import contextlib
import copy
import json
import socket

import numpy as np
import pytest
import torch
from helpers.tiny_detectors import REPO, tiny_model
from torch import nn
from torchvision.ops import box_iou

import restransfer.engine.trainer as trainer
import restransfer.models as models
import restransfer.models.compile as compile_module
from restransfer.benchmark import detection_agreement, synthetic_batch
from restransfer.config import load_config
from restransfer.engine import Checkpointer, train
from restransfer.export import export_onnx, export_outputs, export_torchscript, prepare_for_export
from restransfer.models.compile import compile_events, compile_model

pytestmark = pytest.mark.usefixtures("single_thread")  # small models: one intra-op thread (conftest.py)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_ITER = 3


def _skip_without_bf16(device: str, precision: str) -> None:
    if device == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no native bfloat16")


@contextlib.contextmanager
def _exact_fp32(device: str):
    """fp32 comparisons on CUDA without TF32, which rounds convolution and matmul inputs to 10 bits."""
    if device != "cuda":
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


# ------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def train_config(tiny_overrides, shapes):
    """``train_config(out, device, precision="fp32", channels_last=False)``: the COCO Mask R-CNN R-FPN config
    (frozen BN, stem and res2 frozen) made tiny: ResNet-18, 64 px, MAX_ITER steps without warmup."""

    def make(out, device: str, precision: str = "fp32", channels_last: bool = False):
        return load_config(
            REPO / "configs" / "coco_mask_rcnn_r101_fpn.yaml",
            tiny_overrides(
                "training",
                data__train=f"[{{json: {shapes}/annotations/train.json, image_root: {shapes}/train}}]",
                data__test=None,
                solver__max_iter=MAX_ITER,
                solver__warmup_iters=0,
                solver__precision=precision,
                solver__channels_last=channels_last,
                device=device,
                output_dir=out,
            ),
        )

    return make


def _record_training(monkeypatch, compiled: bool = False) -> dict:
    """Make ``train`` build its model through a wrapper that keeps the initial weights and records, for
    every backbone convolution run in training mode, its output's dtype, device and memory format
    (``compiled``: for every feature map the compiled backbone hands the RPN head, whose hook runs eagerly)."""
    seen = {"convs": []}
    real_build = models.build_model

    def record(module, args, out):
        if module.training and out.dim() == 4 and out.shape[1] > 1 and out.shape[2] * out.shape[3] > 1:
            seen["convs"].append(
                (out.dtype, out.device.type, out.is_contiguous(memory_format=torch.channels_last), out.is_contiguous())
            )

    def record_features(module, args):
        for feature in args[0]:
            record(module, None, feature)

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        seen["initial"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        seen["trainable"] = {k for k, p in model.named_parameters() if p.requires_grad}
        seen["frozen"] = {k for k, p in model.named_parameters() if not p.requires_grad}
        if compiled:
            model.rpn.head.register_forward_pre_hook(record_features)
        for m in model.backbone.modules() if not compiled else ():
            if isinstance(m, nn.Conv2d):
                m.register_forward_hook(record)
        return model

    monkeypatch.setattr(trainer, "build_model", build)  # the name train() builds its model through
    return seen


def _check_training(out, seen, device: str, precision: str, channels_last: bool) -> dict:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == list(range(1, MAX_ITER + 1))
    assert all(np.isfinite(r[k]) for r in losses for k in r if k.startswith("loss_") or k == "total_loss")
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses[0])

    # every backbone convolution ran on the device, in the training precision, in the memory format asked for
    assert seen["convs"], "no backbone convolution ran in training mode"
    assert {c[0] for c in seen["convs"]} == {DTYPES[precision]}
    assert {c[1] for c in seen["convs"]} == {device}
    layout = {c[2] for c in seen["convs"]} if channels_last else {c[3] for c in seen["convs"]}
    assert layout == {True}, f"backbone activations are not all {'NHWC' if channels_last else 'NCHW'}"

    state = Checkpointer.load(out / "model_final.pth")
    assert state["iteration"] == MAX_ITER
    final, initial = state["model"], seen["initial"]
    assert all(v.dtype == initial[k].dtype for k, v in final.items())  # fp32 master weights whatever the precision
    changed = {k for k in seen["trainable"] if not torch.equal(final[k].cpu(), initial[k])}
    for name in (
        "backbone.body.layer4.0.conv1.weight",
        "backbone.fpn.layer_blocks.0.0.weight",
        "rpn.head.cls_logits.weight",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.weight",
    ):
        assert name in changed, f"{name} did not change in {MAX_ITER} steps"
    assert seen["frozen"] and all(torch.equal(final[k].cpu(), initial[k]) for k in seen["frozen"])
    return state


TRAIN_CASES = [
    pytest.param("cpu", "fp32", False, id="cpu-fp32"),
    pytest.param("cpu", "bf16", True, id="cpu-bf16-channels_last"),
    pytest.param("cuda", "fp32", False, id="cuda-fp32", marks=CUDA),
    pytest.param("cuda", "fp16", False, id="cuda-fp16", marks=CUDA),
    pytest.param("cuda", "bf16", True, id="cuda-bf16-channels_last", marks=CUDA),
]


@pytest.mark.slow
@pytest.mark.parametrize("device,precision,channels_last", TRAIN_CASES)
def test_training_steps(train_config, tmp_path, monkeypatch, device, precision, channels_last):
    _skip_without_bf16(device, precision)
    seen = _record_training(monkeypatch)
    out = tmp_path / "run"
    train(train_config(out, device, precision, channels_last))
    state = _check_training(out, seen, device, precision, channels_last)
    if precision == "fp16":
        # loss scaling: the scaler's state is checkpointed; a step it skipped (inf/NaN gradients) halves the
        # scale and restarts the growth count, and the steps it took are counted
        scaler = state["scaler"]
        assert scaler is not None and np.isfinite(scaler["scale"]) and 0 < scaler["scale"] <= 2.0**16
        assert scaler["_growth_tracker"] == MAX_ITER or scaler["scale"] < 2.0**16
    else:
        assert state["scaler"] is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_CASES = [pytest.param("cpu", "gloo", id="cpu-gloo"), pytest.param("cuda", "nccl", id="cuda-nccl", marks=CUDA)]


def _ddp_matches_bare_model(cfg, device: str, steps: int = 2) -> int:
    """Forward and backward ``steps`` training batches through DistributedDataParallel and through a copy of
    the bare model; the all-reduced gradients must equal the bare ones (one process: the mean of one).
    A parameter without a gradient would also make DDP raise at the second forward. Returns how many
    parameters were compared."""
    from restransfer.data.build import build_train_loader
    from restransfer.models.build import build_model  # not the recording wrapper of _record_training

    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    loader = iter(build_train_loader(cfg))
    batches = [next(loader) for _ in range(steps)]
    model = build_model(cfg).to(dev).train()
    bare = copy.deepcopy(model)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[0] if device == "cuda" else None)
    trainable = [(p, q) for p, q in zip(model.parameters(), bare.parameters()) if p.requires_grad]
    for step, (images, targets) in enumerate(batches):
        images = [im.to(dev) for im in images]
        targets = [{k: v.to(dev) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        for net in (ddp, bare):
            net.zero_grad(set_to_none=True)
            torch.manual_seed(step)  # the same proposal and RoI sampling in both
            losses = net(images, targets)
            assert all(torch.isfinite(v) for v in losses.values())
            sum(losses.values()).backward()
        for p, q in trainable:
            assert p.grad is not None and q.grad is not None
            # CUDA backward kernels accumulate atomically: equal up to summation order
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5)
    return len(trainable)


@pytest.mark.slow
@pytest.mark.parametrize("device,backend", DDP_CASES)
def test_one_process_ddp_step(train_config, tmp_path, monkeypatch, device, backend):
    """In a one-process group (as torchrun --nproc_per_node=1 sets up, joined here because
    init_distributed joins only for WORLD_SIZE > 1) train() runs its collectives over ``backend`` and
    trains, and the model steps through DistributedDataParallel with the bare model's gradients."""
    import torch.distributed as dist

    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }.items():
        monkeypatch.setenv(key, value)
    seen = _record_training(monkeypatch)
    out = tmp_path / "ddp"
    cfg = train_config(out, device)
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend)
    try:
        assert dist.get_backend() == backend and dist.get_world_size() == 1
        train(cfg)
        compared = _ddp_matches_bare_model(cfg, device)
    finally:
        dist.destroy_process_group()
    assert compared == len(seen["trainable"])
    _check_training(out, seen, device, "fp32", channels_last=False)


# ------------------------------------------------------------------------------------ inference


def _detect(model, images):
    with torch.inference_mode():
        return model(images)[0]


INFERENCE_CASES = [
    pytest.param("cpu", "fp32", id="cpu-fp32"),
    pytest.param("cpu", "bf16", id="cpu-bf16"),
    pytest.param("cuda", "fp32", id="cuda-fp32", marks=CUDA),
    pytest.param("cuda", "bf16", id="cuda-bf16", marks=CUDA),
    pytest.param("cuda", "fp16", id="cuda-fp16", marks=CUDA),
]


@pytest.mark.parametrize("device,precision", INFERENCE_CASES)
def test_optimized_inference_agrees_with_plain_fp32(device, precision):
    _skip_without_bf16(device, precision)
    _, model, images = tiny_model()  # calibrated random weights, Mask R-CNN R18-FPN
    model = model.to(device)
    images = [im.to(device) for im in images]
    with _exact_fp32(device):
        ref = _detect(model, images)
        fast = copy.deepcopy(model).optimize_for_inference(precision=precision)
        features = []
        fast.backbone.register_forward_hook(lambda m, a, out: features.extend(out.values()))
        got = _detect(fast, images)
    assert fast._optimized["precision"] == precision and fast._optimized["channels_last"]
    assert features and {f.dtype for f in features} == {DTYPES[precision]}
    assert all(f.device.type == device and f.is_contiguous(memory_format=torch.channels_last) for f in features)
    # outputs stay fp32 on the model's device
    for key in ("boxes", "scores", "masks"):
        assert got[key].dtype == torch.float32 and got[key].device.type == device
    assert len(ref["boxes"]) > 0

    agreement, box_diff = detection_agreement(got, ref)
    if precision == "fp32":
        assert agreement == 1.0 and box_diff < 1e-3
        assert torch.equal(got["labels"], ref["labels"])
        torch.testing.assert_close(got["scores"], ref["scores"], rtol=0, atol=1e-4)
        torch.testing.assert_close(got["masks"], ref["masks"], rtol=0, atol=1e-3)
        return
    assert agreement >= 0.8, f"{precision} agrees on only {agreement:.0%} of the detections"
    # each of the five highest-scoring fp32 detections has a low-precision one with its label on (nearly) the
    # same box and a close score (the random-weight scores are near-ties, so their order may change)
    top = ref["scores"].argsort(descending=True)[:5].cpu()
    iou = box_iou(ref["boxes"].float().cpu()[top], got["boxes"].float().cpu())
    same = (iou > 0.9) & (ref["labels"].cpu()[top][:, None] == got["labels"].cpu()[None, :])
    score_diff = (ref["scores"].cpu()[top][:, None] - got["scores"].cpu()[None, :]).abs()
    assert bool(same.any(dim=1).all()), "a top fp32 detection has no low-precision counterpart"
    assert float(score_diff.masked_fill(~same, float("inf")).min(dim=1).values.max()) < 0.03


# ------------------------------------------------------------------------------------ torch.compile

COMPILE_TRAIN_CASES = [
    pytest.param("cpu", "fp32", id="cpu-fp32"),
    pytest.param("cuda", "fp32", id="cuda-fp32", marks=CUDA),
    pytest.param("cuda", "fp16", id="cuda-fp16", marks=CUDA),
    pytest.param("cuda", "bf16", id="cuda-bf16", marks=CUDA),
]


@pytest.mark.slow
@pytest.mark.parametrize("device,precision", COMPILE_TRAIN_CASES)
def test_compiled_training_steps(train_config, tmp_path, monkeypatch, device, precision):
    """solver.compile=true: the backbone is compiled (it compiles at the first step) and the steps train as
    the eager ones do: losses, the backbone's outputs on the device in the precision, the trained and frozen
    weights, fp32 master weights, a plain detector's checkpoint."""
    _skip_without_bf16(device, precision)
    torch._dynamo.reset()
    if device == "cpu":
        # this test's own checks, on graphs traced as on CUDA but without inductor's code generation (minutes of
        # it on a cold cache); CPU training under inductor is test_compile.py's test_training_and_evaluation_compiled
        compile_model_ = compile_module.compile_model
        monkeypatch.setattr(
            compile_module, "compile_model", lambda model, **kw: compile_model_(model, **{"backend": "aot_eager", **kw})
        )
    seen = _record_training(monkeypatch, compiled=True)
    out = tmp_path / "run"
    cfg = train_config(out, device, precision)
    cfg.solver.compile = "true"
    before = compile_events()
    train(cfg)
    assert compile_events()["frames"] > before["frames"], "solver.compile=true compiled nothing"
    assert "solver.compile=true: torch.compile on backbone" in (out / "log.txt").read_text()
    state = _check_training(out, seen, device, precision, channels_last=False)
    assert list(state["model"]) == list(seen["initial"])  # the state dict's keys as without compile


COMPILE_INFERENCE_CASES = [
    pytest.param("cpu", "fp32", id="cpu-fp32", marks=pytest.mark.slow),  # inductor's CPU compile takes minutes
    pytest.param("cuda", "fp32", id="cuda-fp32", marks=CUDA),
    pytest.param("cuda", "bf16", id="cuda-bf16", marks=CUDA),
    pytest.param("cuda", "fp16", id="cuda-fp16", marks=CUDA),
]
# five padded input sizes after the model's resize (96 px short side, 160 px long side at most)
COMPILE_SIZES = [(96, 128), (128, 96), (90, 160), (160, 90), (96, 96)]


@pytest.mark.parametrize("device,precision", COMPILE_INFERENCE_CASES)
def test_compiled_inference_agrees_without_a_graph_per_size(device, precision):
    """test.compile=true on the optimized model (build_eval_model's order): its detections are the eager
    optimized model's on images of five sizes, and dynamic shapes compile no graph per size."""
    _skip_without_bf16(device, precision)
    torch._dynamo.reset()
    _, model, _ = tiny_model()
    eager = model.to(device).optimize_for_inference(precision=precision)
    compiled = copy.deepcopy(eager)
    assert compile_model(compiled) == ["backbone"]
    before = compile_events()
    with _exact_fp32(device):
        for i, size in enumerate(COMPILE_SIZES):
            image = synthetic_batch(size, 1, seed=i)[0][0].to(device)
            got, ref = _detect(compiled, [image]), _detect(eager, [image])
            assert len(ref["boxes"]) > 0 and got["boxes"].device.type == device
            agreement, box_diff = detection_agreement(got, ref)
            if precision == "fp32":
                assert agreement == 1.0 and box_diff < 1e-2
                torch.testing.assert_close(got["scores"], ref["scores"], rtol=0, atol=1e-3)
            else:  # the compiler's kernels round low-precision sums in another order
                assert agreement >= 0.8, f"{precision}: {agreement:.0%} of the detections agree"
    # one graph for all sizes; a second one where the size crosses a threshold of PyTorch's convolution backend
    # choice, which the compiler's shape function asks (on CPUs: 2 graphs for 15 sizes of COCO images at 256 px)
    compiled_frames = compile_events()["frames"] - before["frames"]
    assert 1 <= compiled_frames <= 2, f"{compiled_frames} compilations for {len(COMPILE_SIZES)} image sizes"
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------ export

EXPORT_SIZE = (96, 128)
EXPORT_CASES = [
    pytest.param("cpu", "torchscript", id="cpu-torchscript"),
    pytest.param("cuda", "torchscript", id="cuda-torchscript", marks=CUDA),
    pytest.param("cuda", "onnx", id="cuda-onnx", marks=CUDA),
]


@pytest.mark.parametrize("device,fmt", EXPORT_CASES)
def test_export_of_a_model_on_the_device(tmp_path, device, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    _, model, images = tiny_model("model.roi_heads.detections_per_img=5", size=EXPORT_SIZE)
    model = model.to(device)
    export = export_onnx if fmt == "onnx" else export_torchscript
    path = export(model, tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}", size=EXPORT_SIZE)
    # the model itself stays where it was, unoptimized
    assert next(model.parameters()).device.type == device and not model._optimized
    image = images[0]
    ref = _detect(prepare_for_export(model), [image])
    got = dict(zip(["boxes", "scores", "labels", "masks"], export_outputs(path, image)))
    assert len(ref["boxes"]) > 0
    agreement, box_diff = detection_agreement(got, ref)
    assert agreement == 1.0 and box_diff < 1e-3
    torch.testing.assert_close(got["scores"], ref["scores"], rtol=0, atol=1e-4)
    assert got["labels"].dtype == torch.int64 and got["masks"].shape == ref["masks"].shape
