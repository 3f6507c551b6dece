"""The classification training loop (``tools/train_cls.py``).

``train_classifier(cfg)`` trains ``cfg.model`` on ``cfg.data.train`` with softmax cross-entropy, on the engine
the detectors use: iterations are optimizer steps of ``solver.ims_per_batch`` images over all processes
(``torchrun``: DistributedDataParallel, gradient accumulation over ``ims_per_device``-image micro-steps),
the resumable batch sampler with per-image augmentation seeds (a resumed run ends with the weights of an
uninterrupted one), atomic checksummed checkpoints every ``solver.checkpoint_period`` iterations and
``model_final.pth`` at the end, ``log.jsonl`` (``loss``, ``train_error``: the top-1 error in percent on the
augmented training batches of the logging window, ``lr``, ...), a progress bar, AMP through
``solver.precision``. Every ``test.eval_period`` iterations (and at the end) the center-crop test error is
logged as ``test/top1_error`` and ``test/top5_error``; ``model_best.pth`` keeps the lowest top-1 error.
The end of training writes ``metrics.json`` with the ``test.crops`` testing of the final weights.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..devices import autocast_context, resolve_device
from ..engine.checkpoint import Checkpointer, rng_state
from ..distributed import barrier, get_rank, get_world_size, init_distributed, is_main_process
from ..engine.lock import locked_output_dir
from ..engine.logger import MetricsWriter
from ..engine.preflight import check_classification_run
from ..engine.solver import batch_layout, build_optimizer, build_scheduler
from ..engine.trainer import NonFiniteLossError, restore_training_state, start_run, training_precision
from ..data.samplers import TrainingBatchSampler
from ..yaml_config import dump_config
from .checkpoint import load_classifier_weights, network_meta
from .config import build_classifier
from .data import ClassificationDataset, TrainTransform, dataset_from_spec
from .evaluate import cfg_test_kwargs, evaluate_classifier, write_metrics

logger = logging.getLogger(__name__)

__all__ = ["train_classifier", "build_train_set", "Logits"]


class Logits(nn.Module):
    """``forward(x) = net.classify(x)``, so that DistributedDataParallel sees the logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.classify(x)


def build_train_set(cfg) -> ClassificationDataset:
    """The concatenated ``data.train`` entries with the config's training augmentation."""
    if not cfg.data.train:
        raise ValueError("data.train is empty; list at least one {image_root: DIR, format: ...} entry")
    parts = [dataset_from_spec(spec, data=cfg.data) for spec in cfg.data.train]
    i = cfg.input
    transform = TrainTransform(crop=i.crop, scale_min=i.scale_min, scale_max=i.scale_max, pad=i.pad,
                               hflip_prob=i.hflip_prob, lighting=i.lighting, mean=i.pixel_mean, std=i.pixel_std)
    dataset = ClassificationDataset.concat(parts, transform)
    if len(dataset.class_names) != cfg.model.num_classes:
        raise ValueError(f"the training data has {len(dataset.class_names)} classes but model.num_classes is "
                         f"{cfg.model.num_classes}; set model.num_classes={len(dataset.class_names)}")
    return dataset


def train_classifier(cfg, resume: bool = False, restart: bool = False) -> Optional[Dict[str, Any]]:
    """Train the classifier of ``cfg`` (see the module docstring); returns the final test metrics on the main
    process (None elsewhere or without ``data.test``). ``resume``/``restart`` as for the detectors."""
    if resume and restart:
        raise ValueError("--resume and --restart exclude each other")
    device = resolve_device(cfg.device)
    init_distributed(device)
    with locked_output_dir(cfg.output_dir, "training"):
        return _train(cfg, device, resume, restart)


def _state(net: nn.Module, optimizer, scheduler, scaler, iteration: int, cfg, class_names, best) -> Dict[str, Any]:
    return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "iteration": iteration, "rng": rng_state(),
            "config": dump_config(cfg), "class_names": list(class_names),
            "pixel_convention": net.pixel_convention.to_dict(), "best": best, **network_meta(net, cfg.model.arch)}


def _train(cfg, device: torch.device, resume: bool, restart: bool) -> Optional[Dict[str, Any]]:
    rank, world = get_rank(), get_world_size()
    out = Path(cfg.output_dir)
    ckpt, found = start_run(cfg, resume, restart)
    dataset = build_train_set(cfg)
    layout = batch_layout(cfg.solver.ims_per_batch, cfg.solver.ims_per_device, world)
    logger.info("training on %d images, %d classes; %s", len(dataset), len(dataset.class_names), layout.describe())
    net = build_classifier(cfg)
    if cfg.model.weights and found is None:
        load_classifier_weights(net, cfg.model.weights)
    net.to(device).train()
    optimizer = build_optimizer(cfg, net)
    scheduler = build_scheduler(cfg, optimizer)
    precision, scaler = training_precision(cfg.solver.precision, device)
    start_iter, best = restore_training_state(found, net, optimizer, scheduler, scaler)
    checks = check_classification_run(cfg, net, dataset.class_names, found,  # every input, before iteration 1
                                      lambda: dataset_from_spec(cfg.data.test, dataset.class_names, cfg.data))
    test_set = checks.test_set  # built on the main process, which runs the evaluations
    model: nn.Module = Logits(net)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, **({"device_ids": [device.index]}
                                                              if device.type == "cuda" else {}))
    sampler = TrainingBatchSampler(len(dataset), layout.per_device, seed=cfg.seed, rank=rank, world_size=world,
                                   start_iter=start_iter * layout.accumulation)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        persistent_workers=cfg.data.num_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.seed + rank))
    writer = MetricsWriter(str(out), cfg.solver.max_iter, start_iter, enabled=is_main_process())
    checks.record(writer, start_iter)
    try:
        best = _loop(cfg, model, net, optimizer, scheduler, scaler, loader, ckpt, writer, device, precision,
                     start_iter, best, layout, dataset.class_names, test_set)
    finally:
        writer.close()
    if dataset.num_skipped:  # one summary; each image was named in a warning when it was first skipped
        logger.warning("%d of the %d training images could not be read and were skipped (first: %s)",
                       dataset.num_skipped, len(dataset), ", ".join(map(str, dataset.skipped_names())))
    max_iter = cfg.solver.max_iter
    if is_main_process() and (start_iter < max_iter or not (out / "model_final.pth").exists()):
        ckpt.save("model_final.pth", _state(net, optimizer, scheduler, scaler, max_iter, cfg, dataset.class_names,
                                            best))
    metrics = None
    if test_set is not None and is_main_process():
        metrics = evaluate_classifier(net, test_set, device=device, **cfg_test_kwargs(cfg))
        metrics.update(crops=cfg.test.crops, num_images=len(test_set), iteration=max_iter)
        write_metrics(metrics, out / "metrics.json")
        logger.info("final %s test error: top-1 %.2f%%, top-5 %.2f%%", cfg.test.crops, metrics["top1_error"],
                    metrics["top5_error"])
    if world > 1:
        barrier()
    return metrics


def _loop(cfg, model, net, optimizer, scheduler, scaler, loader, ckpt: Checkpointer, writer: MetricsWriter,
          device, precision: str, start_iter: int, best: Optional[float], layout, class_names, test_set):
    s = cfg.solver
    accumulation, ddp = layout.accumulation, isinstance(model, nn.parallel.DistributedDataParallel)
    iterator = iter(loader)
    window = {"loss": 0.0, "wrong": 0, "seen": 0, "n": 0, "time": 0.0, "data": 0.0}
    for it in range(start_iter, s.max_iter):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for micro in range(accumulation):
            td = time.perf_counter()
            images, labels = next(iterator)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            window["data"] += time.perf_counter() - td
            sync = not ddp or micro == accumulation - 1
            with model.no_sync() if not sync else contextlib.nullcontext():
                with autocast_context(device, precision):
                    logits = model(images)
                loss = F.cross_entropy(logits.float(), labels)
                if not math.isfinite(float(loss.detach())):
                    raise NonFiniteLossError(f"iteration {it}: the loss is {float(loss)}; stopped without saving. "
                                             "Lower solver.base_lr, raise solver.warmup_iters or check the data")
                scaled = loss / accumulation
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            window["loss"] += float(loss.detach()) / accumulation
            window["wrong"] += int((logits.detach().argmax(1) != labels).sum())
            window["seen"] += len(labels)
        if s.clip_grad_norm > 0:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), s.clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        window["n"] += 1
        window["time"] += time.perf_counter() - t0
        done = it + 1
        if done % cfg.log_period == 0 or done == s.max_iter or done == start_iter + 1:
            n = window["n"]
            values = {"loss": window["loss"] / n, "train_error": 100.0 * window["wrong"] / window["seen"], "lr": lr,
                      "images_seen": done * layout.total, "time": window["time"] / n, "data_time": window["data"] / n}
            writer.write(done, values)
            msg = (f"loss {values['loss']:.3f} train error {values['train_error']:.1f}% lr {lr:.2e} "
                   f"{values['time']:.2f}s/it")
            if writer.interactive:
                writer.progress(done, msg)
            else:
                logger.info("iter %d/%d %s", done, s.max_iter, msg)
            window = {k: 0 for k in window}
        eval_period = cfg.test.eval_period
        if cfg.data.test is not None and eval_period > 0 and (done % eval_period == 0 or done == s.max_iter):
            if is_main_process():
                kwargs = {**cfg_test_kwargs(cfg), "mode": "center"}
                metrics = evaluate_classifier(net, test_set, device=device, **kwargs)
                net.train()
                writer.write(done, {"test/top1_error": metrics["top1_error"],
                                    "test/top5_error": metrics["top5_error"], "images_seen": done * layout.total})
                logger.info("iter %d/%d test error (center crop, %d images): top-1 %.2f%%, top-5 %.2f%%", done,
                            s.max_iter, len(test_set), metrics["top1_error"], metrics["top5_error"])
                if best is None or metrics["top1_error"] < best:
                    best = metrics["top1_error"]
                    ckpt.save("model_best.pth", _state(net, optimizer, scheduler, scaler, done, cfg, class_names, best))
            if get_world_size() > 1:
                barrier()
        if s.checkpoint_period > 0 and done % s.checkpoint_period == 0 and done < s.max_iter and is_main_process():
            ckpt.save(f"model_{done:07d}.pth", _state(net, optimizer, scheduler, scaler, done, cfg, class_names, best),
                      periodic=True)
    return best
