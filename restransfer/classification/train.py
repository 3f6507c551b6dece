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

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from ..data.samplers import TrainingBatchSampler
from ..devices import resolve_device
from ..distributed import barrier, get_rank, get_world_size, init_distributed, is_main_process
from ..engine.hooks import EvalHook
from ..engine.lock import locked_output_dir
from ..engine.logger import MetricsWriter
from ..engine.loop import HookBase
from ..engine.preflight import check_classification_run
from ..engine.solver import batch_layout
from ..engine.trainer import apply_channels_last, build_train_loop, prepare_loop, standard_hooks, start_run
from ..errors import ConfigError
from ..models.compile import apply_compile_setting
from .checkpoint import network_meta
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


def build_train_set(cfg: DictConfig) -> ClassificationDataset:
    """The concatenated ``data.train`` entries with the config's training augmentation."""
    if not cfg.data.train:
        raise ConfigError("data.train is empty; list at least one {image_root: DIR, format: ...} entry")
    parts = [
        dataset_from_spec(
            spec, allow_outside_root=cfg.data.allow_outside_root, max_image_pixels=cfg.data.max_image_pixels
        )
        for spec in cfg.data.train
    ]
    i = cfg.input
    transform = TrainTransform(
        crop=i.crop,
        scale_min=i.scale_min,
        scale_max=i.scale_max,
        pad=i.pad,
        hflip_prob=i.hflip_prob,
        lighting=i.lighting,
        mean=i.pixel_mean,
        std=i.pixel_std,
    )
    dataset = ClassificationDataset.concat(parts, transform)
    if len(dataset.class_names) != cfg.model.num_classes:
        raise ConfigError(
            f"the training data has {len(dataset.class_names)} classes but model.num_classes is "
            f"{cfg.model.num_classes}; set model.num_classes={len(dataset.class_names)}"
        )
    return dataset


def train_classifier(
    cfg: DictConfig, resume: bool = False, restart: bool = False, hooks: Sequence[HookBase] = ()
) -> Optional[Dict[str, Any]]:
    """Train the classifier of ``cfg`` (see the module docstring); returns the final test metrics on the main
    process (None elsewhere or without ``data.test``). ``resume``/``restart``/``hooks`` as for the detectors
    (:func:`restransfer.engine.trainer.train`)."""
    if resume and restart:
        raise ConfigError("--resume and --restart exclude each other")
    device = resolve_device(cfg.device)
    init_distributed(device)
    with locked_output_dir(cfg.output_dir, "training"):
        return _train(cfg, device, resume, restart, hooks)


def _classification_forward(device: torch.device):
    def forward(model: nn.Module, batch: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        images, labels = batch
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        # counts, not a rate: averaged over a logging window their ratio is the window's training error
        return loss, {
            "loss": float(loss.detach()),
            "wrong": float((logits.detach().argmax(1) != labels).sum()),
            "seen": float(len(labels)),
        }

    return forward


def _summarize(avg: Dict[str, float]) -> Tuple[Dict[str, float], str]:
    values = {"loss": avg["loss"], "train_error": 100.0 * avg["wrong"] / avg["seen"]}
    return values, f"loss {values['loss']:.3f} train error {values['train_error']:.1f}%"


def _periodic_test(test_set: ClassificationDataset, device: torch.device, scoring: Dict[str, Any]):
    """The center-crop test error every ``test.eval_period`` steps, computed by the main process
    (``scoring``: the :func:`~restransfer.inference.classifier.classifier_scores` keyword arguments)."""

    def evaluate(module: nn.Module) -> Optional[Dict[str, float]]:
        values = None
        if is_main_process():
            metrics = evaluate_classifier(module, test_set, device=device, **scoring)
            values = {"test/top1_error": metrics["top1_error"], "test/top5_error": metrics["top5_error"]}
        if get_world_size() > 1:
            barrier()
        return values

    return evaluate


def _describe_test(n_images: int):
    return lambda v: (
        f"test error (center crop, {n_images} images): top-1 {v['test/top1_error']:.2f}%, "
        f"top-5 {v['test/top5_error']:.2f}%"
    )


def _train(
    cfg: DictConfig, device: torch.device, resume: bool, restart: bool, hooks: Sequence[HookBase] = ()
) -> Optional[Dict[str, Any]]:
    rank, world = get_rank(), get_world_size()
    out = Path(cfg.output_dir)
    ckpt, found = start_run(cfg, resume, restart)
    dataset = build_train_set(cfg)
    layout = batch_layout(cfg.solver.ims_per_batch, cfg.solver.ims_per_device, world)
    logger.info("training on %d images, %d classes; %s", len(dataset), len(dataset.class_names), layout.describe())
    # model.weights initialize a new run; a resumed one gets its weights from the checkpoint
    net = build_classifier(cfg, weights=cfg.model.weights if found is None else None)
    net.to(device).train()
    s = cfg.solver
    logits = Logits(net)
    apply_compile_setting(logits, cfg.solver.compile, device, key="solver.compile")  # the whole network
    loop = build_train_loop(
        cfg,
        logits,
        _classification_forward(device),
        layout,
        device,
        extra_state=lambda: {"class_names": list(dataset.class_names), **network_meta(net, cfg.model.arch)},
        module=net,
    )
    apply_channels_last(net, s.channels_last, device, loop.precision)
    prepare_loop(loop, found, s.ema.decay if s.ema.enabled else None, hooks)
    checks = check_classification_run(
        cfg,
        net,
        dataset.class_names,
        found,  # every input, before iteration 1
        lambda: dataset_from_spec(
            cfg.data.test,
            dataset.class_names,
            allow_outside_root=cfg.data.allow_outside_root,
            max_image_pixels=cfg.data.max_image_pixels,
        ),
    )
    test_set = checks.test_set  # built on the main process, which runs the evaluations
    if world > 1:
        loop.model = nn.parallel.DistributedDataParallel(
            logits, **({"device_ids": [device.index]} if device.type == "cuda" else {})
        )
    start_iter = loop.start_iter
    writer = MetricsWriter(str(out), s.max_iter, start_iter, enabled=is_main_process())
    checks.record(writer, start_iter)
    evaluation = None
    if cfg.data.test is not None and cfg.test.eval_period > 0:
        evaluation = EvalHook(
            cfg.test.eval_period,
            _periodic_test(test_set, device, {**cfg_test_kwargs(cfg), "mode": "center"}),
            writer,
            metric="test/top1_error",
            higher_is_better=False,
            checkpointer=ckpt,
            at_end=True,
            describe=_describe_test(len(test_set) if test_set is not None else 0),
        )
    loop.register_hooks(standard_hooks(cfg, writer, ckpt, _summarize, evaluation))
    if start_iter < s.max_iter:
        sampler = TrainingBatchSampler(
            len(dataset),
            layout.per_device,
            seed=cfg.seed,
            rank=rank,
            world_size=world,
            start_iter=start_iter * layout.accumulation,
        )
        loop.loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=cfg.data.num_workers,
            persistent_workers=cfg.data.num_workers > 0,
            generator=torch.Generator().manual_seed(cfg.seed + rank),
        )
    try:
        loop.train()
    finally:
        writer.close()
    if dataset.num_skipped:  # one summary; each image was named in a warning when it was first skipped
        logger.warning(
            "%d of the %d training images could not be read and were skipped (first: %s)",
            dataset.num_skipped,
            len(dataset),
            ", ".join(map(str, dataset.skipped_names())),
        )
    metrics = None
    if test_set is not None and is_main_process():
        metrics = evaluate_classifier(loop.eval_module(), test_set, device=device, **cfg_test_kwargs(cfg))
        metrics.update(crops=cfg.test.crops, num_images=len(test_set), iteration=s.max_iter)
        write_metrics(metrics, out / "metrics.json")
        logger.info(
            "final %s test error: top-1 %.2f%%, top-5 %.2f%%",
            cfg.test.crops,
            metrics["top1_error"],
            metrics["top5_error"],
        )
    if world > 1:
        barrier()
    return metrics
