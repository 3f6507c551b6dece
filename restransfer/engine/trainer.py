"""The iteration-based training loop.

``train(cfg)`` trains the config's model on ``cfg.data.train``, checkpoints atomically every
``solver.checkpoint_period`` iterations (and ``model_final.pth`` at the end), evaluates every
``test.eval_period`` iterations (keeping ``model_best.pth`` by the evaluator's main metric: box AP for COCO,
devkit mAP for ImageNet-DET) and at the end (``metrics.json`` and the protocol's files in ``output_dir``;
:mod:`restransfer.engine.evaluate`). ``resume=True`` continues from the last checkpoint with
model, optimizer, scheduler, iteration, RNG states and data position restored, so an interrupted and
resumed run ends with the weights of an uninterrupted one.

An iteration is one optimizer step of ``solver.ims_per_batch`` images in total, whatever the hardware:
under ``torchrun --nproc_per_node=N`` each process computes ``solver.ims_per_device`` images per
forward/backward (DistributedDataParallel; NCCL on GPUs, gloo on CPUs) and gradients are accumulated over
``ims_per_batch / (N * ims_per_device)`` micro-steps, so ``base_lr``, ``max_iter``, ``steps`` and warmup
mean the same on 1 CPU or 64 GPUs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..config import dump_config
from ..data.build import build_train_dataset, build_train_loader
from ..errors import NonFiniteLossError, TrainingOutOfMemory, is_out_of_memory
from ..models import build_model
from .checkpoint import Checkpointer, rng_state, set_rng_state
from ..devices import (autocast_context, check_autocast_precision, check_precision_support, resolve_device,
                       resolve_precision)
from ..distributed import all_gather_object, get_rank, get_world_size, init_distributed, is_main_process
from .lock import locked_output_dir
from .evaluate import PeriodicEvaluation, evaluate_model
from .preflight import check_detection_run, log_dataset_entries, write_run_config
from .logger import MetricsWriter, setup_logging
from .solver import BatchLayout, batch_layout, build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

__all__ = ["train", "evaluate_only", "NonFiniteLossError", "TrainingOutOfMemory", "seed_everything", "start_run",
           "training_precision", "restore_training_state"]




def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def start_run(cfg, resume: bool, restart: bool) -> Tuple[Checkpointer, Optional[Tuple[Path, Dict[str, Any]]]]:
    """What every training loop does before building anything: log into ``cfg.output_dir``, remove a killed
    run's temporaries, set old checkpoints aside (``restart``) or refuse to overwrite them, find the checkpoint
    to resume from, log the dataset entries, write ``config.yaml`` (a resume with other settings than the
    checkpoint's names them and writes ``config.resumed-<iteration>.yaml``) and seed this process
    (``cfg.seed + rank``).

    Returns:
        ``(checkpointer, found)``: found is ``(path, state)`` of the checkpoint to resume from, or None.
    """
    out = Path(cfg.output_dir)
    setup_logging(str(out), get_rank())
    log_dataset_entries(cfg)
    ckpt = Checkpointer(out, keep_last=cfg.solver.keep_last)
    found, error = None, None
    if is_main_process():
        ckpt.remove_temporaries()
        if restart:
            ckpt.set_aside()
        elif not resume and ckpt.candidates():
            error = (f"{out} already holds checkpoints of a run ({ckpt.candidates()[0].name}, ...): pass --resume "
                     "to continue it, --restart to start over from iteration 0 (the old checkpoints are moved into "
                     "a replaced-<time>/ subfolder), or choose another output_dir=...")
    error = all_gather_object(error)[0]
    if error:
        raise ValueError(error)
    if resume:
        found = ckpt.newest_intact()
        if found is None:
            logger.info("--resume: no checkpoint in %s, starting from iteration 0", out)
    if is_main_process():
        write_run_config(cfg, out, found)
    seed_everything(cfg.seed + get_rank())
    return ckpt, found


def _to_device(targets, device: torch.device):
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _state(model, optimizer, scheduler, scaler, iteration: int, cfg, best: Optional[float]) -> Dict[str, Any]:
    m = _unwrap(model)
    return {
        "model": m.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "iteration": iteration,
        "rng": rng_state(),
        "config": dump_config(cfg),
        "class_names": list(m.class_names),
        "pixel_convention": m.pixel_convention.to_dict(),
        "best": best,
    }


def _check_classes(cfg, dataset) -> None:
    k = len(dataset.class_names)
    if k != cfg.model.num_classes:
        raise ValueError(f"the training data has {k} classes ({', '.join(dataset.class_names[:5])}"
                         f"{', ...' if k > 5 else ''}) but model.num_classes is {cfg.model.num_classes}; set "
                         f"model.num_classes={k} (a checkpoint with another class count still loads: its "
                         "class-dependent layers are re-initialized)")


def train(cfg, resume: bool = False, restart: bool = False) -> Optional[Dict[str, Any]]:
    """Train the model of ``cfg``; returns the final metrics on the main process (None elsewhere or when
    there is no test set).

    Args:
        resume: continue from the newest intact checkpoint in ``output_dir`` (damaged ones are named and
            passed over; none at all starts from iteration 0).
        restart: start from iteration 0 although ``output_dir`` holds checkpoints; they are moved into a
            ``replaced-<time>/`` subfolder first. Without ``resume`` or ``restart``, a folder that holds
            checkpoints is an error, so that no run is overwritten by accident.

    The run holds ``output_dir/run.lock`` throughout: a second run on the same folder stops at once.
    """
    if resume and restart:
        raise ValueError("--resume and --restart exclude each other: resume continues the checkpoints in "
                         "output_dir, restart sets them aside and starts from iteration 0")
    device = resolve_device(cfg.device)
    init_distributed(device)
    with locked_output_dir(cfg.output_dir, "training"):
        return _train(cfg, device, resume, restart)


def evaluate_only(cfg) -> Optional[Dict[str, Any]]:
    """Evaluate ``model.weights`` (or the newest intact checkpoint of ``output_dir``) on ``data.test`` and
    write ``metrics.json`` into ``output_dir``, holding the folder's lock."""
    if cfg.data.test is None:
        raise ValueError("evaluation needs data.test in the config (a COCO-format json and image folder)")
    device = resolve_device(cfg.device)
    init_distributed(device)
    with locked_output_dir(cfg.output_dir, "evaluation"):
        setup_logging(cfg.output_dir, get_rank())
        weights = cfg.model.weights
        if not weights:
            found = Checkpointer(cfg.output_dir).last()
            if found is None:
                raise ValueError(f"nothing to evaluate: model.weights is not set and {cfg.output_dir} holds no "
                                 "checkpoint; set model.weights=PATH or train first")
            weights = str(found)
        return evaluate_model(cfg, weights=weights)


def training_precision(setting: str, device: torch.device):
    """``(precision, GradScaler or None)`` of ``solver.precision`` on ``device`` (checked, with a note for auto)."""
    precision = resolve_precision(setting, device)
    if setting == "auto":
        logger.info("solver.precision=auto: training in %s on %s", precision, device)
    elif precision == "bf16":
        check_precision_support(torch.bfloat16, device)  # warns where bf16 is emulated
    check_autocast_precision(precision, device)
    return precision, (torch.amp.GradScaler("cuda") if precision == "fp16" else None)


def restore_training_state(found, model: nn.Module, optimizer, scheduler, scaler) -> Tuple[int, Optional[float]]:
    """Load ``found`` (``(path, state)`` of :func:`start_run`, or None) into the training objects and the RNGs;
    returns ``(start iteration, best)`` (``(0, None)`` without a checkpoint)."""
    if found is None:
        return 0, None
    last, state = found
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    logger.info("resumed from %s at iteration %d", last, int(state["iteration"]))
    return int(state["iteration"]), state.get("best")


def _train(cfg, device: torch.device, resume: bool, restart: bool) -> Optional[Dict[str, Any]]:
    distributed = get_world_size() > 1
    rank, world = get_rank(), get_world_size()
    out = Path(cfg.output_dir)
    ckpt, found = start_run(cfg, resume, restart)

    dataset = build_train_dataset(cfg)
    _check_classes(cfg, dataset)
    layout = batch_layout(cfg.solver.ims_per_batch, cfg.solver.ims_per_device, world)
    logger.info("training on %d images, %d classes; %s", len(dataset), len(dataset.class_names), layout.describe())
    model = build_model(cfg, class_names=dataset.class_names).to(device)
    if cfg.solver.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.model.backbone.norm == "syncbn" and not distributed:
        logger.info("model.backbone.norm=syncbn without torch.distributed behaves as plain BatchNorm")
    model.train()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    precision, scaler = training_precision(cfg.solver.precision, device)
    start_iter, best = restore_training_state(found, model, optimizer, scheduler, scaler)
    checks = check_detection_run(cfg, model, dataset.class_names, found)  # every input, before iteration 1

    if distributed:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

    max_iter = cfg.solver.max_iter
    writer = MetricsWriter(str(out), max_iter, start_iter, enabled=is_main_process())
    checks.record(writer, start_iter)
    if start_iter < max_iter:
        loader = build_train_loader(cfg, start_iter=start_iter * layout.accumulation, rank=rank, world_size=world,
                                    dataset=dataset, batch_size=layout.per_device)
        try:
            best = _loop(cfg, model, optimizer, scheduler, scaler, loader, ckpt, writer, device, precision, start_iter,
                         best, layout)
        finally:
            writer.close()
    else:
        writer.close()
        logger.info("training already finished (iteration %d of %d)", start_iter, max_iter)

    if is_main_process() and (start_iter < max_iter or not (out / "model_final.pth").exists()):
        ckpt.save("model_final.pth", _state(model, optimizer, scheduler, scaler, max_iter, cfg, best))
    metrics = None
    if cfg.data.test is not None:
        metrics = evaluate_model(cfg, model=_unwrap(model), output_dir=str(out))
    return metrics




def _loop(cfg, model, optimizer, scheduler, scaler, loader, ckpt: Checkpointer, writer: MetricsWriter,
          device: torch.device, precision: str, start_iter: int, best: Optional[float],
          layout: BatchLayout) -> Optional[float]:
    s = cfg.solver
    max_iter, period, eval_period = s.max_iter, s.checkpoint_period, cfg.test.eval_period
    params = [p for p in model.parameters() if p.requires_grad]
    iterator = iter(loader)
    window: Dict[str, float] = {}
    n_window, t_window, d_window = 0, 0.0, 0.0
    start = time.perf_counter()
    accumulation = layout.accumulation
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    # any evaluator (test.evaluator): its scalars go to log.jsonl, its main metric ranks model_best.pth
    periodic = PeriodicEvaluation(cfg) if eval_period > 0 and cfg.data.test is not None else None
    for it in range(start_iter, max_iter):
        t0 = time.perf_counter()
        data_time = 0.0
        terms: Dict[str, float] = {}
        optimizer.zero_grad(set_to_none=True)
        for micro in range(accumulation):
            t_data = time.perf_counter()
            images, targets = next(iterator)
            images = [img.to(device, non_blocking=True) for img in images]
            targets = _to_device(targets, device)
            data_time += time.perf_counter() - t_data
            # DDP averages gradients over processes once per step, on the last micro-step's backward
            sync = not ddp or micro == accumulation - 1
            try:
                with contextlib.nullcontext() if sync else model.no_sync():
                    with autocast_context(device, precision):
                        loss_dict = model(images, targets)
                    losses = sum(loss_dict.values())
                    micro_terms = {k: float(v.detach()) for k, v in loss_dict.items()}
                    if not math.isfinite(float(losses.detach())):
                        saved = ckpt.candidates()
                        last = saved[0] if saved else None
                        raise NonFiniteLossError(
                            f"iteration {it}: the loss is not finite "
                            f"({', '.join(f'{k}={v}' for k, v in micro_terms.items())}); stopped without saving. "
                            f"The last good checkpoint is {last or 'none (no checkpoint yet)'}. Lower "
                            "solver.base_lr, raise solver.warmup_iters, set solver.clip_grad_norm, or check the data.")
                    # each micro-step's loss is the mean over its images: dividing by the number of micro-steps
                    # makes the accumulated gradient that of the mean over all the step's images
                    loss = losses / accumulation
                    (scaler.scale(loss) if scaler is not None else loss).backward()
            except RuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                raise TrainingOutOfMemory(
                    f"iteration {it}: out of memory on {device} computing {layout.per_device} image(s) per "
                    f"forward/backward ({layout.describe()}). Lower solver.ims_per_device (gradient accumulation "
                    "keeps solver.ims_per_batch and the schedule unchanged), or input.max_size_train") from None
            for k, v in micro_terms.items():
                terms[k] = terms.get(k, 0.0) + v / accumulation
        if scaler is not None:
            if s.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, s.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            if s.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, s.clip_grad_norm)
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        iter_time = time.perf_counter() - t0
        for k, v in terms.items():
            window[k] = window.get(k, 0.0) + v
        n_window, t_window, d_window = n_window + 1, t_window + iter_time, d_window + data_time
        done = it + 1
        if done % cfg.log_period == 0 or done == max_iter or done == start_iter + 1:
            avg = {k: v / n_window for k, v in window.items()}
            total = sum(avg.values())
            eta = (time.perf_counter() - start) / (done - start_iter) * (max_iter - done)
            writer.write(done, {"total_loss": total, **avg, "lr": lr, "images_seen": done * layout.total,
                                "time": t_window / n_window, "data_time": d_window / n_window})
            parts = " ".join(f"{k.replace('loss_', '')} {v:.3f}" for k, v in avg.items())
            msg = (f"loss {total:.3f} ({parts}) lr {lr:.2e} {t_window / n_window:.2f}s/it "
                   f"data {d_window / n_window:.3f}s")
            if writer.interactive:
                writer.progress(done, msg)
            else:
                logger.info("iter %d/%d %s eta %s", done, max_iter, msg, time.strftime("%H:%M:%S", time.gmtime(eta)))
            window, n_window, t_window, d_window = {}, 0, 0.0, 0.0
        elif writer.interactive:
            writer.progress(done, "")

        if periodic is not None and done % eval_period == 0 and done < max_iter:
            scalars = periodic(_unwrap(model))
            model.train()
            run = periodic.last  # None on processes other than the main one
            if run is not None and scalars:
                writer.write(done, {**scalars, "images_seen": done * layout.total})
                if run.improves(best):
                    best = run.main_value
                    ckpt.save("model_best.pth", _state(model, optimizer, scheduler, scaler, done, cfg, best))
        if period > 0 and done % period == 0 and done < max_iter and is_main_process():
            ckpt.save(f"model_{done:07d}.pth", _state(model, optimizer, scheduler, scaler, done, cfg, best),
                      periodic=True)
    return best
