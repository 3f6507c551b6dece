"""The one training loop and its hooks, on a model small enough to follow by hand."""

from __future__ import annotations

import copy
from typing import List

import pytest
import torch
from torch import nn

from restransfer.engine.checkpoint import Checkpointer
from restransfer.engine.hooks import EvalHook, ModelEMA, PeriodicCheckpointer
from restransfer.engine.loop import HookBase, TrainLoop
from restransfer.engine.solver import BatchLayout
from restransfer.errors import NonFiniteLossError, TrainingOutOfMemory


def _batches(start: int = 0):
    """An endless, position-addressable stream of (x, y) micro-batches: batch i depends only on i."""
    i = start
    while True:
        g = torch.Generator().manual_seed(1000 + i)
        x = torch.randn(4, 3, generator=g)
        yield x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
        i += 1


def _forward(model, batch):
    x, y = batch
    loss = ((model(x) - y) ** 2).mean()
    return loss, {"mse": float(loss.detach())}


def _loop(max_iter: int, accumulation: int = 1, start_micro: int = 0, seed: int = 0) -> TrainLoop:
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    layout = BatchLayout(total=4 * accumulation, processes=1, per_device=4, accumulation=accumulation)
    return TrainLoop(
        model,
        opt,
        sched,
        loader=_batches(start_micro),
        forward=_forward,
        layout=layout,
        max_iter=max_iter,
        device=torch.device("cpu"),
    )


class _Recorder(HookBase):
    def __init__(self) -> None:
        self.calls: List[str] = []

    def before_train(self):
        self.calls.append("before_train")

    def before_step(self):
        self.calls.append(f"before_step {self.loop.iter}")

    def after_step(self):
        self.calls.append(f"after_step {self.loop.done} lr={self.loop.lr:g}")

    def after_train(self):
        self.calls.append("after_train")


def test_a_user_hook_is_called_around_every_step():
    loop = _loop(max_iter=4)
    rec = _Recorder()
    loop.register_hooks([rec])
    loop.train()
    assert rec.calls == [
        "before_train",
        "before_step 0",
        "after_step 1 lr=0.1",
        "before_step 1",
        "after_step 2 lr=0.1",
        "before_step 2",
        "after_step 3 lr=0.1",
        "before_step 3",
        "after_step 4 lr=0.05",
        "after_train",
    ]
    assert set(loop.values) == {"mse"}


def test_accumulated_micro_steps_give_the_gradient_of_the_whole_step():
    """2 micro-steps of 4 samples = one step of the 8 samples (the loss is a mean over samples)."""
    acc = _loop(max_iter=1, accumulation=2)
    acc.train()
    torch.manual_seed(0)
    ref = nn.Linear(3, 1)
    gen = _batches()
    (x1, y1), (x2, y2) = next(gen), next(gen)
    x, y = torch.cat([x1, x2]), torch.cat([y1, y2])
    ((ref(x) - y) ** 2).mean().backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(acc.model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_ema_weights_equal_the_hand_computed_average():
    decay = 0.9
    loop = _loop(max_iter=5)
    snapshots = []

    class Snap(HookBase):
        def after_step(self):
            snapshots.append(copy.deepcopy(self.loop.model.state_dict()))

    ema = ModelEMA(decay)
    loop.register_hooks([ema, Snap()])
    loop.train()
    # the first step's weights start the average, then ema = decay * ema + (1 - decay) * weights
    expected = {k: v.clone() for k, v in snapshots[0].items()}
    for snap in snapshots[1:]:
        for k in expected:
            expected[k] = decay * expected[k] + (1 - decay) * snap[k]
    got = loop.eval_module().state_dict()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7)
    # the raw weights are the last step's, and they differ from the average
    assert not torch.allclose(loop.model.weight, got["weight"])
    assert loop.state_dict()["model"]["weight"].equal(got["weight"])  # checkpoints carry the average


@pytest.mark.parametrize("ema", [False, True])
def test_resume_is_exact(tmp_path, ema):
    """Stopped after 3 steps and resumed from the checkpoint: the weights (and the EMA) of an uninterrupted
    run, to the bit."""

    def hooks(folder):
        return ([ModelEMA(0.8)] if ema else []) + [PeriodicCheckpointer(Checkpointer(folder), period=3)]

    full = _loop(max_iter=6)
    full.register_hooks(hooks(tmp_path / "full"))
    full.train()

    first = _loop(max_iter=3)
    first.register_hooks(hooks(tmp_path / "cut"))
    first.train()
    state = Checkpointer.load(tmp_path / "cut" / "model_final.pth")
    resumed = _loop(max_iter=6, start_micro=3, seed=123)  # other initial weights: all must come from the file
    resumed.register_hooks(hooks(tmp_path / "cut"))
    resumed.load_state_dict(state)
    assert resumed.start_iter == 3
    resumed.train()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.eval_module().state_dict().values(), resumed.eval_module().state_dict().values()):
        assert torch.equal(a, b)
    final = Checkpointer.load(tmp_path / "full" / "model_final.pth")
    if ema:
        assert final["ema"]["n_averaged"] == 6
        assert torch.equal(final["ema"]["raw_model"]["weight"], full.model.weight.detach())
        assert torch.equal(final["model"]["weight"], full.eval_module().weight.detach())


def test_resuming_an_ema_checkpoint_without_ema_continues_from_the_raw_weights(tmp_path):
    run = _loop(max_iter=3)
    run.register_hooks([ModelEMA(0.5), PeriodicCheckpointer(Checkpointer(tmp_path), period=0)])
    run.train()
    state = Checkpointer.load(tmp_path / "model_final.pth")
    plain = _loop(max_iter=3, seed=7)
    plain.load_state_dict(state)
    assert torch.equal(plain.model.weight, run.model.weight)


def test_eval_hook_tracks_the_best_and_saves_it(tmp_path):
    scores = iter([3.0, 5.0, 4.0])
    written = []

    class Writer:
        interactive = False

        def write(self, it, values):
            written.append((it, values))

    loop = _loop(max_iter=6)
    loop.register_hooks(
        [
            EvalHook(
                2,
                lambda m: {"score": next(scores)},
                Writer(),
                metric="score",
                checkpointer=Checkpointer(tmp_path),
                at_end=True,
            )
        ]
    )
    loop.train()
    assert [(it, v["score"]) for it, v in written] == [(2, 3.0), (4, 5.0), (6, 4.0)]
    assert loop.best == 5.0
    assert Checkpointer.load(tmp_path / "model_best.pth")["iteration"] == 4


def test_a_non_finite_loss_names_the_iteration_and_the_last_checkpoint(tmp_path):
    loop = _loop(max_iter=5)

    def forward(model, batch):
        loss, values = _forward(model, batch)
        if loop.iter == 3:
            loss = loss * float("nan")
        return loss, values

    loop.forward = forward
    loop.register_hooks([PeriodicCheckpointer(Checkpointer(tmp_path), period=2)])
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: .*model_0000002\.pth"):
        loop.train()
    assert not (tmp_path / "model_final.pth").exists()


def test_out_of_memory_names_the_images_per_device():
    loop = _loop(max_iter=2)

    def forward(model, batch):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")

    loop.forward = forward
    with pytest.raises(TrainingOutOfMemory, match="solver.ims_per_device"):
        loop.train()


def test_gradient_clipping_sums_the_norm_in_the_module_s_parameter_order():
    """The clipped gradients are bit for bit those of clip_grad_norm_ over model.parameters(), also when the
    optimizer's groups list the parameters in another order (the norm is a float sum: another order rounds
    it otherwise, and a run would drift from one that clipped in module order)."""
    torch.manual_seed(1)
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(6)])
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.mul_(1.5**i)
    params = list(model.parameters())
    # as trainers group them: e.g. biases (no weight decay) first, weights after
    grouped = list(range(1, len(params), 2)) + list(range(0, len(params), 2))
    opt = torch.optim.SGD([{"params": params[1::2]}, {"params": params[0::2]}], lr=0.0)

    def forward(m, batch):
        return (m(batch) * 1e3).square().mean(), {}  # large gradients: the clip is active

    batch = torch.randn(8, 16)
    expected = copy.deepcopy(model)
    forward(expected, batch)[0].backward()
    grads = [p.grad for p in expected.parameters()]
    by_group = [grads[i] for i in grouped]
    norm = torch.linalg.vector_norm
    # the case this test is about: the two orders round the norm differently
    assert norm(torch.stack([norm(g) for g in grads])) != norm(torch.stack([norm(g) for g in by_group]))
    torch.nn.utils.clip_grad_norm_(expected.parameters(), 1.0)

    loop = TrainLoop(
        model,
        opt,
        torch.optim.lr_scheduler.StepLR(opt, step_size=1),
        loader=iter([batch]),
        forward=forward,
        layout=BatchLayout(total=8, processes=1, per_device=8, accumulation=1),
        max_iter=1,
        device=torch.device("cpu"),
        clip_grad_norm=1.0,
    )
    loop.train()
    for p, q in zip(model.parameters(), expected.parameters()):
        assert torch.equal(p.grad, q.grad)
