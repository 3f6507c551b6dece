import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from restransfer.config import dump_config, load_config
from restransfer.devices import channels_last_decision, native_bf16, resolve_precision
from restransfer.engine import Checkpointer, NonFiniteLossError, train
from restransfer.engine.checkpoint import atomic_torch_save
from restransfer.engine.loop import HookBase
from restransfer.engine.solver import lr_factor
from restransfer.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


# what the engine runs differ in from the suite's tiny training recipe: an FPN detector with trainable BN
# in every stage, every anchor's proposal kept in training (the default), 6 iterations with warmup, a step
# at 4 and checkpoints every 3, evaluated on the shapes val set
ENGINE = dict(
    model__head="fpn",
    model__backbone__norm="bn",
    model__backbone__freeze_at=0,
    model__rpn__pre_nms_top_n_train=2000,
    solver__max_iter=6,
    solver__warmup_iters=2,
    solver__steps="[4]",
    solver__checkpoint_period=3,
)


@pytest.fixture(scope="module")
def overrides(tiny_overrides, shapes):
    """``overrides(out, arch="faster_rcnn", **extra)``: the engine runs' overrides (of the defaults) writing to
    ``out``. A shorter ``solver__max_iter`` drops the step at 4."""

    def make(out, arch="faster_rcnn", **extra):
        data = dict(
            data__train=f"[{{json: {shapes}/annotations/train.json, image_root: {shapes}/train}}]",
            data__test=f"{{json: {shapes}/annotations/val.json, image_root: {shapes}/val}}",
        )
        return tiny_overrides("training", **{**ENGINE, "model__arch": arch, **data, "output_dir": out, **extra})

    return make


def test_lr_schedule():
    kw = dict(max_iter=100, steps=[50, 80], gamma=0.1, warmup_iters=10, warmup_factor=0.001)
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(5, **kw) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, **kw) == 1.0 and lr_factor(50, **kw) == pytest.approx(0.1)
    assert lr_factor(80, **kw) == pytest.approx(0.01)
    assert lr_factor(50, **{**kw, "schedule": "cosine"}) == pytest.approx(0.5)
    assert lr_factor(100, **{**kw, "schedule": "cosine"}) == pytest.approx(0.0)


def test_auto_precision(monkeypatch):
    from restransfer import devices

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"


def _amx(monkeypatch, amx: bool) -> None:
    caps = {"amx_tile": amx, "amx_bf16": amx, "avx512_bf16": True, "avx2": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)


@pytest.mark.parametrize("amx", [True, False])
def test_channels_last_auto_is_on_for_bf16_training_on_amx_cpus_only(monkeypatch, amx):
    _amx(monkeypatch, amx)
    cpu = torch.device("cpu")
    on, why = channels_last_decision("auto", cpu, "bf16")
    assert on is amx and why.startswith("solver.channels_last=auto: ")
    assert not channels_last_decision("auto", cpu, "fp32")[0]
    assert not channels_last_decision("auto", torch.device("cuda"), "bf16")[0]
    # true / false as given, however YAML and the schema spell them, with nothing to explain
    assert channels_last_decision(True, cpu, "fp32") == (True, "")
    assert channels_last_decision("False", cpu, "bf16") == (False, "")
    with pytest.raises(ConfigError, match="solver.channels_last: 'sometimes' is not one of auto, true, false"):
        channels_last_decision("sometimes", cpu, "bf16")


def test_channels_last_setting_is_checked_when_the_config_is_read():
    assert load_config(None).solver.channels_last == "auto"
    assert str(load_config(None, ["solver.channels_last=true"]).solver.channels_last).lower() == "true"
    with pytest.raises(ConfigError, match="solver.channels_last: 'nhwc' is not one of auto, true, false"):
        load_config(None, ["solver.channels_last=nhwc"])


class _WatchConv(HookBase):
    """The stem convolution's weight before training and after it, and its memory format during the steps."""

    def before_train(self):
        self.weight = self.loop.module.backbone.body.conv1.weight
        self.before = self.weight.detach().clone()
        self.channels_last = []

    def after_step(self):
        self.channels_last.append(self.weight.is_contiguous(memory_format=torch.channels_last))


@pytest.mark.slow
def test_channels_last_auto_trains_bf16_on_amx_cpus_in_nhwc(overrides, tmp_path, monkeypatch):
    """auto converts the model after the optimizer exists: the parameters it updates are the converted ones."""
    _amx(monkeypatch, True)
    out = tmp_path / "auto"
    watch = _WatchConv()
    cfg = load_config(None, overrides(out, solver__max_iter=2, solver__precision="bf16", data__test="null"))
    train(cfg, hooks=[watch])
    assert "solver.channels_last=auto: channels_last activations" in (out / "log.txt").read_text()
    assert watch.channels_last == [True, True] and not watch.weight.is_contiguous()
    assert not torch.equal(watch.before, watch.weight.detach())  # SGD stepped the converted parameter


@pytest.mark.slow
def test_bf16_channels_last_training_on_cpu(overrides, tmp_path):
    out = tmp_path / "bf16"
    train(
        load_config(
            None,
            overrides(
                out,
                arch="mask_rcnn",
                solver__max_iter=2,
                solver__precision="auto",
                solver__channels_last=True,
                data__test="null",
            ),
        )
    )
    expected = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    assert f"solver.precision=auto: training in {expected}" in (out / "log.txt").read_text()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(np.isfinite(r["total_loss"]) for r in records)
    state = Checkpointer.load(out / "model_final.pth")
    assert all(v.dtype != torch.bfloat16 for v in state["model"].values())  # weights stay fp32


@pytest.mark.slow
def test_train_writes_everything_and_evaluates(overrides, tmp_path):
    out = tmp_path / "run"
    metrics = train(load_config(None, overrides(out, arch="mask_rcnn", solver__max_iter=4, test__eval_period=2)))
    for name in (
        "config.yaml",
        "log.jsonl",
        "model_final.pth",
        "metrics.json",
        "coco_results.json",
        "last_checkpoint",
        "model_best.pth",
    ):
        assert (out / name).is_file(), name
    assert set(metrics) == {"bbox", "segm"} and set(metrics["bbox"]["per_category"]) == {"circle", "triangle", "square"}
    assert json.loads((out / "metrics.json").read_text())["bbox"]["AP"] == pytest.approx(
        metrics["bbox"]["AP"], nan_ok=True
    )
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == [1, 2, 3, 4]
    assert {"total_loss", "lr", "time", "data_time", "loss_mask"} <= set(records[0])
    # the periodic evaluation at iteration 2 is logged and kept as the best checkpoint so far
    assert [r["iteration"] for r in records if "bbox/AP" in r] == [2]
    assert Checkpointer.load(out / "model_best.pth")["iteration"] == 2
    # the resolved config loads back identically
    assert load_config(out / "config.yaml") == load_config(
        None, overrides(out, arch="mask_rcnn", solver__max_iter=4, test__eval_period=2)
    )
    # the final checkpoint is a model.weights file for evaluation and fine-tuning
    state = Checkpointer.load(out / "model_final.pth")
    assert state["iteration"] == 4 and state["class_names"] == ["circle", "triangle", "square"]


@pytest.mark.slow
@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_resume_gives_the_same_weights(overrides, tmp_path, monkeypatch, ema):
    if ema:  # solver.ema: the saved "model" is the average; the raw weights ride along for resume
        overrides = (
            lambda make: lambda out, **kw: make(out, solver__ema__enabled="true", solver__ema__decay=0.5, **kw)
        )(overrides)
    full = tmp_path / "full"
    train(load_config(None, overrides(full, data__test="null")))

    # the same run, killed right after its checkpoint at iteration 3, then resumed
    broken = tmp_path / "broken"
    real_save = Checkpointer.save

    def save_then_die(self, name, state, periodic=False):
        path = real_save(self, name, state, periodic)
        if name == "model_0000003.pth":
            raise KeyboardInterrupt("simulated kill")
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, overrides(broken, data__test="null")))
    monkeypatch.setattr(Checkpointer, "save", real_save)
    assert not (broken / "model_final.pth").exists()
    train(load_config(None, overrides(broken, data__test="null")), resume=True)

    final_a, final_b = Checkpointer.load(full / "model_final.pth"), Checkpointer.load(broken / "model_final.pth")
    a, b = final_a["model"], final_b["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    if ema:
        assert final_a["ema"]["n_averaged"] == final_b["ema"]["n_averaged"] == 6
        raw_a, raw_b = final_a["ema"]["raw_model"], final_b["ema"]["raw_model"]
        for k in raw_a:
            torch.testing.assert_close(raw_a[k], raw_b[k], rtol=1e-5, atol=1e-6, msg=k)
        assert any(not torch.equal(a[k], raw_a[k]) for k in a if a[k].is_floating_point())  # average != raw
    # and differs from a run that did not train the last three iterations at all
    c = Checkpointer.load(broken / "model_0000003.pth")["model"]
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_a_user_hook_is_called_by_training_and_its_state_is_checkpointed(overrides, tmp_path):
    from restransfer.engine.loop import HookBase

    class CountSteps(HookBase):
        state_key = "count_steps"

        def __init__(self):
            self.seen = []

        def after_step(self):
            self.seen.append((self.loop.done, round(self.loop.lr, 8), sorted(self.loop.values)))

        def state_dict(self):
            return {"steps": len(self.seen)}

    hook = CountSteps()
    out = tmp_path / "run"
    train(
        load_config(None, overrides(out, data__test="null", solver__max_iter=2, solver__checkpoint_period=0)),
        hooks=[hook],
    )
    assert [d for d, _, _ in hook.seen] == [1, 2]
    assert "loss_classifier" in hook.seen[0][2] and "loss_objectness" in hook.seen[0][2]
    assert Checkpointer.load(out / "model_final.pth")["count_steps"] == {"steps": 2}


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(overrides, tmp_path, monkeypatch):
    from restransfer.models.detector import Detector

    out = tmp_path / "nan"
    real_forward = Detector.forward
    calls = {"n": 0}

    def forward(self, images, targets=None):
        losses = real_forward(self, images, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:  # iteration index 4
                losses["loss_box_reg"] = losses["loss_box_reg"] * float("nan")
        return losses

    monkeypatch.setattr(Detector, "forward", forward)
    with pytest.raises(NonFiniteLossError, match=r"iteration 4: .*loss_box_reg=nan.*model_0000003\.pth"):
        train(load_config(None, overrides(out, data__test="null")))
    assert Checkpointer(out).last().name == "model_0000003.pth"
    assert Checkpointer.load(out / "model_0000003.pth")["iteration"] == 3
    assert not (out / "model_final.pth").exists()


def test_atomic_save_never_leaves_a_half_written_file(tmp_path):
    path = tmp_path / "model.pth"
    atomic_torch_save({"w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"w": torch.zeros(3), "x": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_keep_last_checkpoints(tmp_path):
    ckpt = Checkpointer(tmp_path, keep_last=2)
    for it in (1, 2, 3):
        ckpt.save(f"model_{it:07d}.pth", {"iteration": it}, periodic=True)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000002.pth", "model_0000003.pth"]
    assert ckpt.last().name == "model_0000003.pth"


def _log_records(out: Path):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_gloo_run_keeps_the_schedule_of_one_process(overrides, tmp_path):
    """ims_per_batch counts images per step in total: 2 processes x 2 images and 1 process accumulating
    4 micro-steps of 1 image follow the same (iteration, lr) schedule and see the same number of images."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RESTRANSFER_NO_PROGRESS": "1"}
    common = dict(solver__max_iter=3, solver__ims_per_batch=4, solver__steps="[2]", solver__warmup_iters=2)
    config = tmp_path / "tiny.yaml"
    dump_config(load_config(None, overrides(out, **common)), config)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "tools" / "train_det.py"),
        str(config),
        "solver.checkpoint_period=0",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "4 images per step = 2 processes x 2 images x 1 accumulation step" in log
    assert (out / "log.rank1.txt").is_file() and (out / "metrics.json").is_file()
    results = json.loads((out / "coco_results.json").read_text())
    # the distributed evaluation gathered the predictions of both shards (4 val images)
    assert {r["image_id"] for r in results} <= {1, 2, 3, 4}
    state = Checkpointer.load(out / "model_final.pth")
    assert state["iteration"] == 3

    single = tmp_path / "single"
    train(
        load_config(
            None, overrides(single, solver__ims_per_device=1, data__test="null", solver__checkpoint_period=0, **common)
        )
    )
    assert "4 images per step = 1 process x 1 image x 4 accumulation steps" in (single / "log.txt").read_text()
    schedule = [[(r["iteration"], r["lr"]) for r in _log_records(d) if "lr" in r] for d in (out, single)]
    assert schedule[0] == schedule[1] and [it for it, _ in schedule[0]] == [1, 2, 3]
    assert len({lr for _, lr in schedule[0]}) == 3  # warmup, then the step at 2: the lr really changes
    assert [r["images_seen"] for r in _log_records(out) if "lr" in r][-1] == 12
    assert [r["images_seen"] for r in _log_records(single) if "lr" in r][-1] == 12


@pytest.mark.slow
def test_one_step_of_four_images_equals_four_accumulated_micro_steps(overrides, tmp_path, monkeypatch):
    from torchvision.models.detection import _utils as det_utils

    def first_k(self, matched_idxs):
        """The sampler without its random permutation: the first positives and negatives by index."""
        pos, neg = [], []
        for m in matched_idxs:
            p, n = torch.where(m >= 1)[0], torch.where(m == 0)[0]
            num_pos = min(p.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(n.numel(), self.batch_size_per_image - num_pos)
            pm, nm = torch.zeros_like(m, dtype=torch.uint8), torch.zeros_like(m, dtype=torch.uint8)
            pm[p[:num_pos]], nm[n[:num_neg]] = 1, 1
            pos.append(pm)
            neg.append(nm)
        return pos, neg

    monkeypatch.setattr(det_utils.BalancedPositiveNegativeSampler, "__call__", first_k)
    common = dict(
        solver__max_iter=1,
        solver__ims_per_batch=4,
        model__backbone__norm="frozen_bn",
        model__backbone__freeze_at=0,
        data__aspect_ratio_grouping=False,
        input__hflip_prob=0.0,
        data__test="null",
        solver__warmup_iters=0,
        solver__base_lr=0.1,
        solver__checkpoint_period=0,
        model__rpn__post_nms_top_n_train=200,
        model__roi_heads__batch_size_per_image=16,
    )
    train(load_config(None, overrides(tmp_path / "batch", **common)))
    train(load_config(None, overrides(tmp_path / "accum", solver__ims_per_device=1, **common)))
    assert "1 process x 1 image x 4 accumulation steps" in (tmp_path / "accum" / "log.txt").read_text()
    init = build_model_like(tmp_path / "batch")
    a = Checkpointer.load(tmp_path / "batch" / "model_final.pth")["model"]
    b = Checkpointer.load(tmp_path / "accum" / "model_final.pth")["model"]
    moved = 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7, msg=k)
        moved += int(not torch.equal(a[k], init[k]))
    assert moved > 10  # the step really changed the weights


def build_model_like(out: Path):
    """The initial weights of the run in ``out`` (same seed, same config)."""
    from restransfer.models import build_model

    cfg = load_config(out / "config.yaml")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    import random

    random.seed(cfg.seed)
    return build_model(cfg, class_names=["circle", "triangle", "square"]).state_dict()


def test_batch_layouts():
    from restransfer.config import ConfigError
    from restransfer.engine.solver import batch_layout

    assert batch_layout(8, 1, 1) == (8, 1, 1, 8) and batch_layout(8, 1, 8) == (8, 8, 1, 1)
    assert batch_layout(8, None, 2) == (8, 2, 4, 1) and batch_layout(16, 2, 2) == (16, 2, 2, 4)
    with pytest.raises(
        ValueError,
        match=r"ims_per_batch=8 .* 3 process\(es\) x solver.ims_per_device=1 .*"
        r"run on a number of processes that divides it \(1, 2, 4, 8\)",
    ):
        batch_layout(8, 1, 3)
    # more processes than the reference had: each computes its share of the step
    assert batch_layout(16, 2, 16) == (16, 16, 1, 1) and batch_layout(8, 4, 4) == (8, 4, 2, 1)
    with pytest.raises(ValueError, match=r"ims_per_device=3 .*set solver.ims_per_device to one of 1, 2, 4, 8"):
        batch_layout(8, 3, 1)
    for bad, key in (
        ("solver.ims_per_batch=0", "solver.ims_per_batch: 0 must be greater than 0"),
        ("solver.ims_per_device=-1", "solver.ims_per_device: -1 must be greater than 0"),
        ("solver.max_iter=-5", "solver.max_iter: -5 must be greater than 0"),
        ("solver.ims_per_device=3", "solver.ims_per_device: 3 does not divide solver.ims_per_batch=16"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match=r"solver.steps: 60000 is outside 1..solver.max_iter \(100\)"):
        load_config(None, ["solver.max_iter=100"])


# --------------------------------------------------------------------------------- run safety


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(out: Path, pid: int, host: str = None) -> None:
    import socket

    out.mkdir(parents=True, exist_ok=True)
    (out / "run.lock").write_text(
        json.dumps({"pid": pid, "host": host or socket.gethostname(), "purpose": "training", "started": "earlier"})
    )


def test_a_second_run_on_a_live_output_dir_is_refused(overrides, tmp_path):
    from restransfer.engine import evaluate_only
    from restransfer.engine.lock import OutputDirLocked

    out = tmp_path / "locked"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_lock(out, owner.pid)
        cfg = load_config(None, overrides(out, solver__max_iter=1, data__test="null"))
        for run in (
            lambda: train(cfg),
            lambda: train(cfg, resume=True),
            lambda: evaluate_only(load_config(None, overrides(out))),
        ):
            with pytest.raises(OutputDirLocked, match=rf"{out} is in use by process {owner.pid}"):
                run()
        assert json.loads((out / "run.lock").read_text())["pid"] == owner.pid  # the owner keeps its lock
        assert not (out / "log.jsonl").exists()
        # a run on another host cannot be checked for liveness: refused too, naming the host
        _write_lock(out, owner.pid, host="elsewhere")
        with pytest.raises(OutputDirLocked, match="on host elsewhere"):
            train(cfg)
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_and_released(overrides, tmp_path, caplog):
    out = tmp_path / "stale"
    pid = _dead_pid()
    _write_lock(out, pid)
    train(load_config(None, overrides(out, solver__max_iter=1, data__test="null")))
    assert (
        f"taking over the lock of process {pid}" in (out / "log.txt").read_text()
        or f"taking over the lock of process {pid}" in caplog.text
    )
    assert (out / "model_final.pth").is_file() and not (out / "run.lock").exists()


@pytest.mark.slow
def test_existing_checkpoints_need_resume_or_restart(overrides, tmp_path):
    out = tmp_path / "again"
    cfg = load_config(None, overrides(out, solver__max_iter=2, data__test="null"))
    train(cfg)
    final = Checkpointer.load(out / "model_final.pth")
    with pytest.raises(ValueError, match=r"already holds checkpoints.*--resume.*--restart"):
        train(cfg)
    assert torch.equal(
        Checkpointer.load(out / "model_final.pth")["model"]["roi_heads.box_predictor.cls_score.weight"],
        final["model"]["roi_heads.box_predictor.cls_score.weight"],
    )
    with pytest.raises(ValueError, match="exclude each other"):
        train(cfg, resume=True, restart=True)
    train(cfg, restart=True)
    aside = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / "model_final.pth").is_file()
    assert Checkpointer.load(out / "model_final.pth")["iteration"] == 2


def _flip_byte_in_largest_tensor(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_damaged_checkpoints_are_named_never_trained_on(tmp_path):
    from restransfer.models.checkpoint import read_detector_checkpoint
    from restransfer.serialization import CheckpointError

    ckpt = Checkpointer(tmp_path / "c")
    path = ckpt.save("model_0000001.pth", {"iteration": 1, "model": {"w": torch.arange(4096.0)}}, periodic=True)
    Checkpointer.load(path)
    _flip_byte_in_largest_tensor(path)
    # the archive itself still loads, with a changed value: only the checksum tells
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.arange(4096.0))
    for read in (Checkpointer.load, read_detector_checkpoint):
        with pytest.raises(CheckpointError, match=rf"{path}: checksum mismatch"):
            read(str(path))

    for name, content in (
        ("empty.pth", b""),
        ("random.pth", os.urandom(4096)),
        ("truncated.pth", (tmp_path / "c" / "model_0000001.pth").read_bytes()[:3000]),
    ):
        bad = tmp_path / name
        bad.write_bytes(content)
        for read in (Checkpointer.load, read_detector_checkpoint):
            with pytest.raises(Exception) as e:
                read(str(bad))
            msg = str(e.value)
            assert str(bad) in msg and "weights_only" not in msg and not isinstance(e.value, IndexError), msg


@pytest.mark.slow
def test_resume_past_a_truncated_newest_checkpoint(overrides, tmp_path, monkeypatch):
    full = tmp_path / "full"
    over = dict(data__test="null", solver__checkpoint_period=2)
    train(load_config(None, overrides(full, **over)))

    broken = tmp_path / "broken"
    real_save = Checkpointer.save

    def save_then_die(self, name, state, periodic=False):
        path = real_save(self, name, state, periodic)
        if name == "model_0000004.pth":
            (self.dir / ".model_0000006.pth.tmp999").write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt("simulated kill")
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, overrides(broken, **over)))
    monkeypatch.setattr(Checkpointer, "save", real_save)
    newest = broken / "model_0000004.pth"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (broken / "last_checkpoint").unlink()
    train(load_config(None, overrides(broken, **over)), resume=True)

    log = (broken / "log.txt").read_text()
    assert "last_checkpoint is missing" in log and f"skipping damaged checkpoint: {newest}" in log
    assert "resumed from" in log and "model_0000002.pth at iteration 2" in log
    assert not (broken / ".model_0000006.pth.tmp999").exists()
    a = Checkpointer.load(full / "model_final.pth")["model"]
    b = Checkpointer.load(broken / "model_final.pth")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_never_silently_restarts_when_every_checkpoint_is_damaged(overrides, tmp_path):
    from restransfer.serialization import CheckpointError

    out = tmp_path / "alldamaged"
    out.mkdir()
    (out / "model_0000003.pth").write_bytes(b"")
    (out / "model_final.pth").write_bytes(os.urandom(100))
    cfg = load_config(None, overrides(out, data__test="null"))
    with pytest.raises(CheckpointError, match=r"none of its 2 checkpoints can be read.*--restart"):
        train(cfg, resume=True)
    assert not (out / "log.jsonl").exists()
