"""The training loop's behaviours, as hooks (:class:`~restransfer.engine.loop.HookBase`).

* :class:`PeriodicCheckpointer`: ``model_NNNNNNN.pth`` every ``period`` steps and ``model_final.pth`` at
  the end (main process), through the atomic :class:`~restransfer.engine.checkpoint.Checkpointer`;
* :class:`EvalHook`: an evaluation every ``period`` steps, its scalars in ``log.jsonl`` and on the console,
  ``model_best.pth`` kept by one metric;
* :class:`MetricsLogger`: the loss terms averaged over ``period`` steps into ``log.jsonl`` / TensorBoard,
  the console line or the progress bar;
* :class:`ModelEMA`: an exponential moving average of the weights (``solver.ema``), which evaluation and
  the saved ``"model"`` entry use while the raw weights stay in the checkpoint for resume.

Order matters where one hook uses another's result: register EMA before evaluation and checkpoints (so
they see the average of the step just taken), logging first.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..distributed import is_main_process
from ..errors import ConfigError
from .checkpoint import Checkpointer
from .logger import MetricsWriter
from .loop import HookBase

logger = logging.getLogger(__name__)

__all__ = ["PeriodicCheckpointer", "EvalHook", "MetricsLogger", "ModelEMA"]


class PeriodicCheckpointer(HookBase):
    """Saves ``model_{done:07d}.pth`` every ``period`` steps before the last and ``model_final.pth`` after
    training (unless training was already finished and the file exists), on the main process."""

    def __init__(self, checkpointer: Checkpointer, period: int) -> None:
        self.checkpointer = checkpointer
        self.period = period

    def before_train(self) -> None:
        saved = self.checkpointer.candidates()
        self.loop.last_checkpoint = saved[0] if saved else None

    def after_step(self) -> None:
        done = self.loop.done
        if self.period > 0 and done % self.period == 0 and done < self.loop.max_iter and is_main_process():
            self.loop.last_checkpoint = self.checkpointer.save(
                f"model_{done:07d}.pth", self.loop.state_dict(), periodic=True
            )

    def after_train(self) -> None:
        final = self.checkpointer.dir / "model_final.pth"
        if is_main_process() and (self.loop.start_iter < self.loop.max_iter or not final.exists()):
            self.loop.last_checkpoint = self.checkpointer.save(final.name, self.loop.state_dict(self.loop.max_iter))


class EvalHook(HookBase):
    """Evaluates every ``period`` steps (and after the last when ``at_end``).

    Args:
        evaluate: ``evaluate(module) -> {name: value}`` on the weights the run evaluates (the EMA when on);
            called on every process (it may distribute inference), returns the scalars to log on the main
            process and ``{}`` (or None) elsewhere.
        writer: where the scalars go (``log.jsonl``, TensorBoard).
        metric: the scalar that ranks checkpoints (``bbox/AP``, ``test/top1_error``, ...), or a function
            that names it once the first evaluation has run; with a ``checkpointer``, ``model_best.pth`` keeps
            the best one so far (a NaN never counts as better).
        higher_is_better: the direction of ``metric``.
        describe: the console line of a result (none: no console line).
    """

    def __init__(
        self,
        period: int,
        evaluate: Callable[[nn.Module], Optional[Dict[str, float]]],
        writer: MetricsWriter,
        metric: Union[str, Callable[[], str], None] = None,
        higher_is_better: bool = True,
        checkpointer: Optional[Checkpointer] = None,
        at_end: bool = False,
        describe: Optional[Callable[[Dict[str, float]], str]] = None,
    ) -> None:
        self.period, self.evaluate, self.writer = period, evaluate, writer
        self.metric, self.higher_is_better = metric, higher_is_better
        self.checkpointer, self.at_end, self.describe = checkpointer, at_end, describe

    def _better(self, value: float) -> bool:
        best = self.loop.best
        return best is None or (value > best if self.higher_is_better else value < best)

    def after_step(self) -> None:
        done, max_iter = self.loop.done, self.loop.max_iter
        if self.period <= 0 or not (done % self.period == 0 or (self.at_end and done == max_iter)):
            return
        if done == max_iter and not self.at_end:
            return
        was_training = self.loop.model.training
        values = self.evaluate(self.loop.eval_module())
        self.loop.model.train(was_training)
        if not values or not is_main_process():
            return
        self.writer.write(done, {**values, "images_seen": self.loop.images_seen})
        if self.describe is not None:
            logger.info("iter %d/%d %s", done, max_iter, self.describe(values))
        metric = self.metric() if callable(self.metric) else self.metric
        value = values.get(metric) if metric else None
        if value is not None and math.isfinite(float(value)) and self._better(float(value)):
            self.loop.best = float(value)
            if self.checkpointer is not None:
                self.checkpointer.save("model_best.pth", self.loop.state_dict())


class MetricsLogger(HookBase):
    """Averages the step values over ``period`` steps and writes them (with ``lr``, ``images_seen``,
    ``time`` and ``data_time``) to ``writer``; the console gets ``describe``'s line and an ETA, or the
    progress bar when stderr is a terminal.

    Args:
        summarize: ``summarize(averaged step values) -> (entries for log.jsonl, console text)``.
    """

    def __init__(
        self, writer: MetricsWriter, period: int, summarize: Callable[[Dict[str, float]], Tuple[Dict[str, float], str]]
    ) -> None:
        self.writer, self.period, self.summarize = writer, max(1, period), summarize
        self._reset()

    def _reset(self) -> None:
        self._sum: Dict[str, float] = {}
        self._n, self._time, self._data = 0, 0.0, 0.0

    def before_train(self) -> None:
        self._start = time.perf_counter()
        self._reset()

    def after_step(self) -> None:
        loop = self.loop
        for k, v in loop.values.items():
            self._sum[k] = self._sum.get(k, 0.0) + v
        self._n += 1
        self._time += loop.step_time
        self._data += loop.data_time
        done = loop.done
        if done % self.period == 0 or done == loop.max_iter or done == loop.start_iter + 1:
            avg = {k: v / self._n for k, v in self._sum.items()}
            entries, text = self.summarize(avg)
            step_time, data_time = self._time / self._n, self._data / self._n
            self.writer.write(
                done,
                {**entries, "lr": loop.lr, "images_seen": loop.images_seen, "time": step_time, "data_time": data_time},
            )
            msg = f"{text} lr {loop.lr:.2e} {step_time:.2f}s/it data {data_time:.3f}s"
            if self.writer.interactive:
                self.writer.progress(done, msg)
            else:
                eta = (time.perf_counter() - self._start) / (done - loop.start_iter) * (loop.max_iter - done)
                logger.info(
                    "iter %d/%d %s eta %s", done, loop.max_iter, msg, time.strftime("%H:%M:%S", time.gmtime(eta))
                )
            self._reset()
        elif self.writer.interactive:
            self.writer.progress(done, "")


class ModelEMA(HookBase):
    """An exponential moving average of the trained weights (``solver.ema``).

    After every optimizer step, ``ema = decay * ema + (1 - decay) * weights`` for every parameter (the first
    step's weights start the average); buffers (BatchNorm statistics) are copied from the model, not
    averaged. It uses PyTorch's :class:`torch.optim.swa_utils.AveragedModel` with its EMA rule.

    While it is registered, the run evaluates the average and checkpoints store it under ``"model"`` (so
    ``model_final.pth`` and ``model_best.pth`` are the averaged weights wherever they are loaded), and the
    raw weights under ``"ema"`` with the number of averaged steps, from which ``--resume`` continues exactly.
    """

    state_key = "ema"

    def __init__(self, decay: float = 0.9998) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"solver.ema.decay: {decay} is outside [0, 1)")
        self.decay = decay
        self.average: Optional[AveragedModel] = None

    def _ensure(self) -> AveragedModel:
        if self.average is None:
            self.average = AveragedModel(
                self.loop.module, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=False
            )
            self.average.eval()
            self.loop.eval_module = lambda: self.average.module  # type: ignore[union-attr]
        return self.average

    def before_train(self) -> None:
        self._ensure()

    def after_step(self) -> None:
        with torch.no_grad():
            self._ensure().update_parameters(self.loop.module)

    def state_dict(self) -> Dict[str, Any]:
        average = self._ensure()
        return {"raw_model": self.loop.module.state_dict(), "n_averaged": int(average.n_averaged), "decay": self.decay}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        # the loop has just loaded the checkpoint's "model" entry (the average) into the model: it becomes the
        # average again, and the raw weights go back into the model
        average = self._ensure()
        model = self.loop.module
        average.module.load_state_dict(model.state_dict())
        average.n_averaged.fill_(int(state["n_averaged"]))
        model.load_state_dict(state["raw_model"])
