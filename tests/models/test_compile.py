"""torch.compile: the solver.compile / test.compile settings, what compile_model compiles, one graph for every
image size, and a tiny Mask R-CNN trained and evaluated compiled with our sparse RPN backward and RoIAlign in
the step. The CUDA cases are in test_cuda.py."""

import copy
import logging
import pickle

import numpy as np
import pytest
import torch
from helpers.tiny_detectors import REPO, tiny_config, tiny_model
from torch import nn

import restransfer.models.compile as compile_module
import restransfer.models.roi_align as roi_align_module
import restransfer.models.rpn_head as rpn_head
from restransfer.benchmark import synthetic_batch
from restransfer.benchmark.compile import coco_like_sizes
from restransfer.classification.config import load_cls_config
from restransfer.config import load_config
from restransfer.devices import (
    AUTO_COMPILE_MIN_STEPS,
    AUTO_RULE,
    auto_compile,
    compile_setting,
    cpu_has_amx,
    resolve_compile,
)
from restransfer.engine import Checkpointer, train
from restransfer.engine.evaluate import evaluate_model
from restransfer.errors import ConfigError
from restransfer.models import build_model
from restransfer.models.build import build_eval_model
from restransfer.models.compile import apply_compile_setting, compile_events, compile_model, compiled_modules
from restransfer.models.system import DetectionSystem, build_test_model

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")
# 16 sampled anchors per image: P2 of a 64 px image (16 x 16 > 9 x 16 positions) takes the sparse RPN backward
SPARSE_RPN = "model.rpn.batch_size_per_image=16"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no graph of an earlier test is reused, none left for a later one."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "given,expected",
    [("auto", "auto"), ("true", "true"), ("false", "false"), ("True", "true"), ("yes", "true"), ("off", "false")],
)
def test_compile_keys_accept_auto_true_false(given, expected):
    # "yes" / "off" are YAML booleans: the schema's string field receives "True" / "False"
    cfg = load_config(None, [f"solver.compile={given}", f"test.compile={given}"])
    assert compile_setting(cfg.solver.compile, "solver.compile") == expected
    assert compile_setting(cfg.test.compile, "test.compile") == expected


def test_compile_keys_default_to_auto_and_reject_other_values(tmp_path):
    cfg = load_config(None)
    assert cfg.solver.compile == "auto" and cfg.test.compile == "auto"
    for key in ("solver.compile", "test.compile"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*'sometimes'.*auto, true, false"):
            load_config(None, [f"{key}=sometimes"])
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  compile: true\ntest:\n  compile: false\n")
    cfg = load_config(path)
    assert compile_setting(cfg.solver.compile) == "true" and compile_setting(cfg.test.compile) == "false"
    # classification shares the solver schema and its checks
    assert compile_setting(load_cls_config(None, ["solver.compile=true"]).solver.compile) == "true"
    with pytest.raises(ConfigError, match=r"solver\.compile"):
        load_cls_config(None, ["solver.compile=2"])


def test_resolve_compile():
    assert resolve_compile("true", CPU) and resolve_compile(True, CPU)
    assert not resolve_compile("false", CPU) and not resolve_compile(False, CPU)
    # auto compiles where a benchmark measured a net gain: on no CPU run (README, torch.compile), and CUDA is
    # not measured yet
    assert not resolve_compile("auto", CPU) and not resolve_compile("auto", torch.device("cuda"))
    with pytest.raises(ConfigError, match="test.compile"):
        resolve_compile("maybe", CPU, key="test.compile")


@pytest.mark.parametrize("amx", [True, False])
def test_auto_compiles_long_bf16_training_on_amx_cpus_only(monkeypatch, amx):
    """Where the benchmarks measured compiling paid back: bf16 detection training on a CPU with AMX, runs of
    AUTO_COMPILE_MIN_STEPS steps or more; everything else stays eager, and true / false are as given."""
    caps = {"amx_tile": amx, "amx_bf16": amx, "avx512_bf16": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    assert cpu_has_amx() is amx
    long, short = AUTO_COMPILE_MIN_STEPS, AUTO_COMPILE_MIN_STEPS - 1
    assert resolve_compile("auto", CPU, precision="bf16", steps=long) is amx
    assert not resolve_compile("auto", CPU, precision="bf16", steps=short)
    assert not resolve_compile("auto", CPU, precision="fp32", steps=long)
    assert not resolve_compile("auto", CPU)  # inference, or a run the rule does not cover
    assert not resolve_compile("auto", torch.device("cuda"), precision="bf16", steps=long)
    assert not resolve_compile("false", CPU, precision="bf16", steps=long)
    assert resolve_compile("true", CPU, precision="fp32", steps=1)
    on, why = auto_compile(CPU, "bf16", short)
    assert not on and (f"{short:,}" in why if amx else why == AUTO_RULE)


def test_auto_compile_survives_a_torch_without_the_capability_probe(monkeypatch):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    assert not cpu_has_amx()
    assert not resolve_compile("auto", CPU, precision="bf16", steps=AUTO_COMPILE_MIN_STEPS)


def test_apply_compile_setting_says_why_auto_compiled(monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_tile": True, "amx_bf16": True}, raising=False)
    _, model, _ = tiny_model()
    with caplog.at_level(logging.INFO, logger="restransfer.models.compile"):
        assert apply_compile_setting(
            model, "auto", CPU, key="solver.compile", precision="bf16", steps=AUTO_COMPILE_MIN_STEPS
        )
    assert compiled_modules(model) == ["backbone"]
    assert "solver.compile=auto: torch.compile on backbone" in caplog.text and "AMX" in caplog.text


# ----------------------------------------------------------------------------------------- compile_model


def test_compile_model_compiles_the_backbones_and_keeps_the_state_dict():
    _, model, _ = tiny_model()
    keys = list(model.state_dict())
    assert not apply_compile_setting(model, "false", CPU, key="test.compile") and compiled_modules(model) == []
    assert apply_compile_setting(model, "true", CPU, key="test.compile")
    assert compiled_modules(model) == ["backbone"]
    assert list(model.state_dict()) == keys  # checkpoints are the same compiled or not
    call = model.backbone._compiled_call_impl
    assert compile_model(model) == ["backbone"] and model.backbone._compiled_call_impl is call  # not wrapped twice
    assert compiled_modules(copy.deepcopy(model)) == []  # a copy (the EMA average) runs eagerly

    system = DetectionSystem([tiny_model()[1], tiny_model(seed=1)[1]])
    assert compile_model(system) == ["detectors.0.backbone", "detectors.1.backbone"]
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())  # no backbone: compiled whole (a classifier)
    assert compile_model(net) == [""] and compiled_modules(net) == [""]


@pytest.mark.parametrize("optimize", [False, True], ids=["plain", "optimized"])
def test_one_graph_for_every_image_size(optimize):
    """Dynamic shapes: images of COCO's spread of sizes (resized by the model's transform, so of several
    padded sizes) run through one graph, with the eager model's detections. Dynamo decides what to recompile;
    its eager backend keeps this fast (inductor's compile is the slow tests' and the benchmark's)."""
    _, model, _ = tiny_model()
    if optimize:  # our fused oneDNN layers, BN folded, channels_last: traced by dynamo too
        model.optimize_for_inference()
    compiled = copy.deepcopy(model)
    compile_model(compiled, backend="eager")
    sizes = coco_like_sizes(4, seed=1)
    shapes = {tuple(model.transform([torch.zeros(3, h, w)])[0].tensors.shape[-2:]) for h, w in sizes}
    assert len(shapes) >= 3
    before = compile_events()
    with torch.inference_mode():
        for i, size in enumerate(sizes):
            image = synthetic_batch(size, 1, seed=i)[0][0]
            got, ref = compiled([image])[0], model([image])[0]
            assert torch.equal(got["labels"], ref["labels"])
            torch.testing.assert_close(got["boxes"], ref["boxes"], rtol=0, atol=1e-3)
            torch.testing.assert_close(got["masks"], ref["masks"], rtol=0, atol=1e-3)
    after = compile_events()
    assert after["frames"] - before["frames"] == 1, "an image size made torch.compile recompile"


# ------------------------------------------------------------------------------------------ the trainers


@pytest.fixture
def eager_backend_compiles(monkeypatch):
    """Make solver.compile / test.compile compile with dynamo's eager backend (seconds instead of inductor's
    minutes: the plumbing is under test here) and record what they compiled."""
    compiled = []

    def compile_eagerly(model, **options):
        names = compile_model(model, **{**options, "backend": "eager"})
        compiled.append(names)
        return names

    monkeypatch.setattr(compile_module, "compile_model", compile_eagerly)
    return compiled


def test_detection_training_applies_solver_compile(
    tiny_overrides, shapes, tmp_path, eager_backend_compiles, our_backward_passes
):
    out = tmp_path / "run"
    cfg = load_config(
        None,
        tiny_overrides(
            "training",
            "model.head=fpn",
            "model.rpn.pre_nms_top_n_train=2000",
            SPARSE_RPN,
            solver__compile="true",
            data__train=f"[{{json: {shapes}/annotations/train.json, image_root: {shapes}/train}}]",
            data__test=None,
            output_dir=out,
        ),
    )
    before = compile_events()
    train(cfg)
    assert eager_backend_compiles == [["backbone"]]
    assert compile_events()["frames"] - before["frames"] == 1  # 64 px images of one size: one graph
    assert our_backward_passes["sparse_rpn"] > 0 and our_backward_passes["roi_align"] > 0
    assert "solver.compile=true: torch.compile on backbone" in (out / "log.txt").read_text()

    eager_backend_compiles.clear()
    train(
        load_config(
            None,
            tiny_overrides(
                "training",
                solver__compile="auto",
                data__test=None,
                data__train=f"[{{json: {shapes}/annotations/train.json, image_root: {shapes}/train}}]",
                output_dir=tmp_path / "b",
            ),
        )
    )
    assert eager_backend_compiles == []  # auto: eager on this CPU
    assert "solver.compile=auto: eager on cpu" in (tmp_path / "b" / "log.txt").read_text()


def test_classification_training_applies_solver_compile(tmp_path, eager_backend_compiles):
    from restransfer.classification.train import train_classifier

    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(range(4)), "batch_label": "b"}
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))
    cfg = load_cls_config(
        REPO / "configs" / "cifar10_resnet20.yaml",
        [
            "model.depth=8",
            f"data.train=[{{image_root: {tmp_path}, format: cifar10}}]",
            "data.test=null",
            "data.num_workers=0",
            "solver.ims_per_batch=4",
            "solver.max_iter=2",
            "solver.steps=[1]",
            "solver.checkpoint_period=0",
            "solver.compile=true",
            f"output_dir={tmp_path / 'out'}",
            "log_period=1",
        ],
    )
    before = compile_events()
    train_classifier(cfg)
    assert eager_backend_compiles == [[""]]  # the network as a whole
    assert compile_events()["frames"] > before["frames"]
    assert Checkpointer.load(tmp_path / "out" / "model_final.pth")["iteration"] == 2


def test_build_eval_model_applies_test_compile(eager_backend_compiles):
    cfg = tiny_config("test.compile=true")
    model = build_eval_model(cfg, None, None, CPU)
    assert eager_backend_compiles == [["backbone"]] and compiled_modules(model) == ["backbone"]
    assert model._optimized  # compiled after optimize_for_inference, on the optimized modules
    system = build_test_model(tiny_config("test.compile=true", "test.aug.flip=true"), None, None, CPU)
    assert compiled_modules(system) == ["detectors.0.backbone"]
    assert compiled_modules(build_eval_model(tiny_config("test.compile=false"), None, None, CPU)) == []


# ----------------------------------------------------------------------------------------- end to end


@pytest.fixture
def our_backward_passes(monkeypatch):
    """How often the RPN head's sparse backward and our RoIAlign backward ran."""
    calls = {"sparse_rpn": 0, "roi_align": 0}
    sparse, roi_grad = rpn_head._sparse_grads, roi_align_module.roi_align_grad

    def counted_sparse(*args):
        calls["sparse_rpn"] += 1
        return sparse(*args)

    def counted_roi(*args, **kwargs):
        calls["roi_align"] += 1
        return roi_grad(*args, **kwargs)

    monkeypatch.setattr(rpn_head, "_sparse_grads", counted_sparse)
    monkeypatch.setattr(roi_align_module, "roi_align_grad", counted_roi)
    return calls


@pytest.mark.slow
def test_training_and_evaluation_compiled(tiny_overrides, shapes, tmp_path, our_backward_passes):
    """Two steps with solver.compile=true (inductor), then the final checkpoint evaluated with
    test.compile=true: our sparse RPN backward and RoIAlign backward still in the step, the weights trained, a
    checkpoint a plain detector loads."""
    out = tmp_path / "run"

    def config(**extra):
        return load_config(
            None,
            tiny_overrides(
                "training",
                "model.head=fpn",
                "model.arch=mask_rcnn",
                "model.rpn.pre_nms_top_n_train=2000",
                SPARSE_RPN,
                "model.backbone.norm=bn",
                "model.backbone.freeze_at=0",
                solver__compile="true",
                test__compile="true",
                data__train=f"[{{json: {shapes}/annotations/train.json, image_root: {shapes}/train}}]",
                output_dir=out,
                **extra,
            ),
        )

    cfg = config(data__test=None)  # training only: the evaluation below builds its own test model
    torch.manual_seed(0)
    initial = build_model(cfg).state_dict()
    before = compile_events()
    train(cfg)
    trained = compile_events()
    assert trained["frames"] > before["frames"], "solver.compile=true compiled nothing"
    assert "solver.compile=true: torch.compile on backbone" in (out / "log.txt").read_text()
    assert our_backward_passes["sparse_rpn"] > 0 and our_backward_passes["roi_align"] > 0

    state = Checkpointer.load(out / "model_final.pth")["model"]
    assert list(state) == list(initial)
    name = "backbone.body.layer4.0.conv1.weight"
    assert not torch.equal(state[name], initial[name])
    build_model(cfg, load_weights=False).load_state_dict(state)  # the compiled run's checkpoint is a plain one

    test_cfg = config(data__test=f"{{json: {shapes}/annotations/val.json, image_root: {shapes}/val}}")
    metrics = evaluate_model(test_cfg, weights=str(out / "model_final.pth"), output_dir=str(tmp_path / "eval"))
    assert compile_events()["frames"] > trained["frames"], "test.compile=true compiled nothing"
    assert set(metrics) == {"bbox", "segm"}
