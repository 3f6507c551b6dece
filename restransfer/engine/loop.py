"""The one training loop, shared by detection and classification.

:class:`TrainLoop` runs optimizer steps of ``layout.total`` images: ``layout.accumulation`` micro-steps of
``layout.per_device`` images per process, gradients synchronised once per step under
DistributedDataParallel, autocast in ``precision``, loss scaling with a GradScaler (fp16), gradient
clipping, then the optimizer and learning-rate schedule step. What a task supplies is only ``forward``:
``forward(model, batch) -> (loss, values)``, the loss of one micro-step (the mean over its images) and
the scalars to log for it (loss terms, a training error, ...).

Everything else a run does is a hook (:mod:`restransfer.engine.hooks`): checkpoints, periodic evaluation
and the best model, logging, TensorBoard and the progress bar, model EMA. A hook sees the loop and may
add entries to the checkpoint (``state_dict`` / ``load_state_dict``), as detectron2's ``HookBase`` does::

    class PrintLR(HookBase):
        def after_step(self):
            print(self.loop.iter, self.loop.lr)

    loop.register_hooks([PrintLR()])

Two failures are the user's to fix and say so: a non-finite loss (:class:`NonFiniteLossError`, naming the
iteration, the loss terms and the last good checkpoint; nothing is saved) and running out of memory
(:class:`TrainingOutOfMemory`, naming ``solver.ims_per_device``, which gradient accumulation lets one lower
without changing the schedule).
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..devices import autocast_context
from ..errors import NonFiniteLossError, TrainingOutOfMemory, is_out_of_memory
from .checkpoint import rng_state, set_rng_state
from .solver import BatchLayout

__all__ = ["HookBase", "TrainLoop", "ForwardFn", "unwrap"]

# forward(model, batch) -> (loss of the micro-step: a scalar tensor, the scalars to log for it)
ForwardFn = Callable[[nn.Module, Any], Tuple[torch.Tensor, Dict[str, float]]]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class HookBase:
    """A behaviour of the training loop. ``self.loop`` is the :class:`TrainLoop` it is registered with.

    ``before_train`` / ``after_train`` run once (``after_train`` also when training was already finished);
    ``before_step`` / ``after_step`` around each optimizer step, where ``loop.iter`` is the step's 0-based
    index and, after it, ``loop.done == loop.iter + 1`` steps are complete. A hook with state that must
    survive ``--resume`` returns it from ``state_dict`` (stored in the checkpoint under ``state_key``) and
    takes it back in ``load_state_dict``.
    """

    loop: "TrainLoop"
    state_key: Optional[str] = None

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return None

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class TrainLoop:
    """Optimizer steps ``start_iter .. max_iter - 1`` over ``loader`` (see the module docstring).

    Args:
        model: what ``forward`` calls (DistributedDataParallel-wrapped under torch.distributed).
        module: the module whose weights are trained and saved (default: ``model`` unwrapped); a classifier
            trains its network through a logits wrapper, whose checkpoints hold the network's own keys.
        optimizer, scheduler: stepped once per iteration (the scheduler after the optimizer).
        loader: yields micro-batches of ``layout.per_device`` images; its position must already be
            ``start_iter * layout.accumulation`` micro-batches in (the resumable samplers do that).
        forward: see :data:`ForwardFn`.
        layout: images per step = processes x images per micro-step x accumulation steps.
        device, precision: where and in which autocast precision the forward pass runs.
        scaler: a GradScaler for fp16, else None.
        clip_grad_norm: clip the gradient norm to this before stepping (0: no clipping).
        extra_state: entries every checkpoint carries besides the loop's own (config, class names, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        loader: Iterable,
        forward: ForwardFn,
        layout: BatchLayout,
        max_iter: int,
        device: torch.device,
        precision: str = "fp32",
        scaler: Optional[torch.amp.GradScaler] = None,
        clip_grad_norm: float = 0.0,
        extra_state: Optional[Callable[[], Dict[str, Any]]] = None,
        module: Optional[nn.Module] = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.module = module if module is not None else unwrap(model)
        self.loader, self.forward, self.layout = loader, forward, layout
        self.max_iter, self.device, self.precision = max_iter, device, precision
        self.clip_grad_norm = clip_grad_norm
        self.extra_state = extra_state or dict
        self.hooks: List[HookBase] = []
        self.start_iter = 0
        self.iter = 0
        self.best: Optional[float] = None
        # the last step's measurements, for hooks
        self.values: Dict[str, float] = {}
        self.lr = 0.0
        self.step_time = 0.0
        self.data_time = 0.0
        # where the last good checkpoint is (a hook that saves them sets it); named on a non-finite loss
        self.last_checkpoint: Optional[Path] = None
        # the weights evaluation and model_final.pth use (the EMA hook replaces them by the average)
        self.eval_module: Callable[[], nn.Module] = lambda: self.module

    # --------------------------------------------------------------------------------------------- hooks
    def register_hooks(self, hooks: Sequence[Optional[HookBase]]) -> None:
        for h in hooks:
            if h is None:
                continue
            h.loop = weakref.proxy(self)  # no reference cycle between a loop and its hooks
            self.hooks.append(h)

    @property
    def done(self) -> int:
        """Completed optimizer steps (``iter + 1`` after a step)."""
        return self.iter + 1

    @property
    def images_seen(self) -> int:
        return self.done * self.layout.total

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self, iteration: Optional[int] = None) -> Dict[str, Any]:
        """A checkpoint of the run at ``iteration`` (default: the steps done): the model the run evaluates
        under ``"model"``, optimizer, schedule, scaler, RNG states, best metric, the hooks' entries and the
        task's ``extra_state``."""
        state = {
            "model": self.eval_module().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "iteration": self.done if iteration is None else iteration,
            "rng": rng_state(),
            "best": self.best,
            **self.extra_state(),
        }
        for h in self.hooks:
            if h.state_key:
                hook_state = h.state_dict()
                if hook_state is not None:
                    state[h.state_key] = hook_state
        return state

    def load_state_dict(self, state: Dict[str, Any], source: str = "the checkpoint") -> None:
        """Restore a run from :meth:`state_dict`'s output: the loop continues at ``state["iteration"]``."""
        claimed = {h.state_key for h in self.hooks if h.state_key}
        model_state = state["model"]
        if "ema" in state and "ema" not in claimed and isinstance(state["ema"], dict):
            # saved with solver.ema on, resumed with it off: continue from the raw weights, not the average
            model_state = state["ema"].get("raw_model", model_state)
        self.module.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for h in self.hooks:
            if h.state_key and h.state_key in state:
                h.load_state_dict(state[h.state_key])
        set_rng_state(state["rng"])
        self.start_iter = int(state["iteration"])
        self.best = state.get("best")

    # --------------------------------------------------------------------------------------------- loop
    def train(self) -> None:
        """Run the remaining steps, calling the hooks around them."""
        self.iter = self.start_iter - 1
        for h in self.hooks:
            h.before_train()
        try:
            self._iterator = iter(self.loader) if self.start_iter < self.max_iter else None
            for self.iter in range(self.start_iter, self.max_iter):
                for h in self.hooks:
                    h.before_step()
                self.run_step()
                for h in self.hooks:
                    h.after_step()
            self.iter = self.max_iter - 1
        finally:
            self._iterator = None
        for h in self.hooks:
            h.after_train()

    def run_step(self) -> None:
        """One optimizer step: ``layout.accumulation`` micro-steps, then clip, step and schedule."""
        start = time.perf_counter()
        model, accumulation = self.model, self.layout.accumulation
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        self.optimizer.zero_grad(set_to_none=True)
        values: Dict[str, float] = {}
        data_time = 0.0
        for micro in range(accumulation):
            t_data = time.perf_counter()
            batch = next(self._iterator)
            data_time += time.perf_counter() - t_data
            # DDP averages gradients over processes once per step, on the last micro-step's backward
            sync = not ddp or micro == accumulation - 1
            try:
                with contextlib.nullcontext() if sync else model.no_sync():
                    with autocast_context(self.device, self.precision):
                        loss, micro_values = self.forward(model, batch)
                    if not math.isfinite(float(loss.detach())):
                        self._non_finite(float(loss.detach()), micro_values)
                    # each micro-step's loss is the mean over its images: dividing by the number of
                    # micro-steps makes the accumulated gradient that of the mean over the step's images
                    scaled = loss / accumulation
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            except RuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                raise TrainingOutOfMemory(
                    f"iteration {self.iter}: out of memory on {self.device} computing {self.layout.per_device} "
                    f"image(s) per forward/backward ({self.layout.describe()}). Lower solver.ims_per_device "
                    "(gradient accumulation keeps solver.ims_per_batch and the schedule unchanged), or the "
                    "training image size"
                ) from None
            for k, v in micro_values.items():
                values[k] = values.get(k, 0.0) + float(v) / accumulation
        if self.scaler is not None and self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad_norm > 0:
            # in the module's parameter order: the norm is a float sum, and another order rounds it otherwise
            params = [p for p in self.module.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.values = values
        self.data_time = data_time
        self.step_time = time.perf_counter() - start

    def _non_finite(self, loss: float, values: Dict[str, float]) -> None:
        last = self.last_checkpoint
        terms = ", ".join(f"{k}={v}" for k, v in values.items()) or f"loss={loss}"
        raise NonFiniteLossError(
            f"iteration {self.iter}: the loss is not finite ({terms}); stopped without saving. The last good "
            f"checkpoint is {last or 'none (no checkpoint yet)'}. Lower solver.base_lr, raise "
            "solver.warmup_iters, set solver.clip_grad_norm, or check the data."
        )
