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

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig
from torch import nn

from ..config import dump_config
from ..data.build import build_train_dataset, build_train_loader
from ..devices import (
    channels_last_decision,
    check_autocast_precision,
    check_precision_support,
    resolve_device,
    resolve_precision,
)
from ..distributed import all_gather_object, get_rank, get_world_size, init_distributed, is_main_process
from ..errors import ConfigError, NonFiniteLossError, TrainingOutOfMemory
from ..models import build_model
from ..models.compile import apply_compile_setting
from .checkpoint import Checkpointer
from .evaluate import build_periodic_evaluation, evaluate_model
from .hooks import EvalHook, MetricsLogger, ModelEMA, PeriodicCheckpointer
from .lock import locked_output_dir
from .logger import MetricsWriter, setup_logging
from .loop import ForwardFn, HookBase, TrainLoop
from .preflight import check_detection_run, log_dataset_entries, write_run_config
from .solver import batch_layout, build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

__all__ = [
    "train",
    "evaluate_only",
    "NonFiniteLossError",
    "TrainingOutOfMemory",
    "seed_everything",
    "start_run",
    "training_precision",
    "build_train_loop",
    "apply_channels_last",
    "prepare_loop",
    "standard_hooks",
]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start_run(
    cfg: DictConfig, resume: bool, restart: bool
) -> Tuple[Checkpointer, Optional[Tuple[Path, Dict[str, Any]]]]:
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
            error = (
                f"{out} already holds checkpoints of a run ({ckpt.candidates()[0].name}, ...): pass --resume "
                "to continue it, --restart to start over from iteration 0 (the old checkpoints are moved into "
                "a replaced-<time>/ subfolder), or choose another output_dir=..."
            )
    error = all_gather_object(error)[0]
    if error:
        raise ConfigError(error)
    if resume:
        found = ckpt.newest_intact()
        if found is None:
            logger.info("--resume: no checkpoint in %s, starting from iteration 0", out)
    if is_main_process():
        write_run_config(cfg, out, found)
    seed_everything(cfg.seed + get_rank())
    return ckpt, found


def _to_device(targets: Sequence[Dict[str, Any]], device: torch.device):
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def _check_classes(class_names: Sequence[str], num_classes: int) -> None:
    """The training set's ``class_names`` against ``model.num_classes``."""
    k = len(class_names)
    if k != num_classes:
        raise ConfigError(
            f"the training data has {k} classes ({', '.join(class_names[:5])}"
            f"{', ...' if k > 5 else ''}) but model.num_classes is {num_classes}; set "
            f"model.num_classes={k} (a checkpoint with another class count still loads: its "
            "class-dependent layers are re-initialized)"
        )


def train(
    cfg: DictConfig, resume: bool = False, restart: bool = False, hooks: Sequence[HookBase] = ()
) -> Optional[Dict[str, Any]]:
    """Train the model of ``cfg``; returns the final metrics on the main process (None elsewhere or when
    there is no test set).

    Args:
        resume: continue from the newest intact checkpoint in ``output_dir`` (damaged ones are named and
            passed over; none at all starts from iteration 0).
        restart: start from iteration 0 although ``output_dir`` holds checkpoints; they are moved into a
            ``replaced-<time>/`` subfolder first. Without ``resume`` or ``restart``, a folder that holds
            checkpoints is an error, so that no run is overwritten by accident.

        hooks: behaviours of your own (:class:`~restransfer.engine.loop.HookBase`), called around every step
            after the EMA update and before logging, evaluation and checkpoints.

    The run holds ``output_dir/run.lock`` throughout: a second run on the same folder stops at once.
    """
    if resume and restart:
        raise ConfigError(
            "--resume and --restart exclude each other: resume continues the checkpoints in "
            "output_dir, restart sets them aside and starts from iteration 0"
        )
    device = resolve_device(cfg.device)
    init_distributed(device)
    with locked_output_dir(cfg.output_dir, "training"):
        return _train(cfg, device, resume, restart, hooks)


def evaluate_only(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """Evaluate ``model.weights`` (or the newest intact checkpoint of ``output_dir``) on ``data.test`` and
    write ``metrics.json`` into ``output_dir``, holding the folder's lock."""
    if cfg.data.test is None:
        raise ConfigError("evaluation needs data.test in the config (a COCO-format json and image folder)")
    device = resolve_device(cfg.device)
    init_distributed(device)
    with locked_output_dir(cfg.output_dir, "evaluation"):
        setup_logging(cfg.output_dir, get_rank())
        weights = cfg.model.weights
        if not weights:
            found = Checkpointer(cfg.output_dir).last()
            if found is None:
                raise ConfigError(
                    f"nothing to evaluate: model.weights is not set and {cfg.output_dir} holds no "
                    "checkpoint; set model.weights=PATH or train first"
                )
            weights = str(found)
        return evaluate_model(cfg, weights=weights)


def training_precision(setting: str, device: torch.device) -> Tuple[str, Optional[torch.amp.GradScaler]]:
    """``(precision, GradScaler or None)`` of ``solver.precision`` on ``device`` (checked, with a note for auto)."""
    precision = resolve_precision(setting, device)
    if setting == "auto":
        logger.info("solver.precision=auto: training in %s on %s", precision, device)
    elif precision == "bf16":
        check_precision_support(torch.bfloat16, device)  # warns where bf16 is emulated
    check_autocast_precision(precision, device)
    return precision, (torch.amp.GradScaler("cuda") if precision == "fp16" else None)


def apply_channels_last(model: nn.Module, setting: object, device: torch.device, precision: str) -> bool:
    """Put ``model`` on channels_last activations where ``solver.channels_last`` (``setting``) says so for a run in
    ``precision`` (resolved: the loop's) on ``device``, logging why when ``auto`` decided; returns whether. Called
    after the optimizer exists: ``Module.to`` swaps the parameters' data, so they stay the objects it updates."""
    channels_last, why = channels_last_decision(setting, device, precision)
    if why:
        logger.info(why)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return channels_last


def build_train_loop(
    cfg: DictConfig,
    model: nn.Module,
    forward: ForwardFn,
    layout: Any,
    device: torch.device,
    extra_state: Callable[[], Dict[str, Any]],
    module: Optional[nn.Module] = None,
) -> TrainLoop:
    """The loop of a run (a builder: the reader of ``cfg.solver`` for both tasks): SGD and the learning-rate
    schedule of ``solver``, its precision (and loss scaler), clipping, ``max_iter``. Checkpoints carry the
    config, the trained module's pixel convention and ``extra_state()``; ``module`` is what is trained and
    saved when ``model`` wraps it (see :class:`TrainLoop`)."""
    trained = module if module is not None else model
    optimizer = build_optimizer(cfg, trained)
    scheduler = build_scheduler(cfg, optimizer)
    precision, scaler = training_precision(cfg.solver.precision, device)
    return TrainLoop(
        model,
        optimizer,
        scheduler,
        loader=None,
        forward=forward,
        layout=layout,
        max_iter=cfg.solver.max_iter,
        device=device,
        precision=precision,
        scaler=scaler,
        clip_grad_norm=cfg.solver.clip_grad_norm,
        extra_state=lambda: {
            "config": dump_config(cfg),
            "pixel_convention": trained.pixel_convention.to_dict(),
            **extra_state(),
        },
        module=module,
    )


def prepare_loop(
    loop: TrainLoop,
    found: Optional[Tuple[Path, Dict[str, Any]]],
    ema_decay: Optional[float],
    hooks: Sequence[HookBase] = (),
) -> None:
    """Register the EMA hook with ``ema_decay`` (``solver.ema.decay`` when ``solver.ema.enabled``; None: no
    average) and the caller's ``hooks`` before anything is restored, so that their state is; then restore
    ``found`` (``(path, state)`` of :func:`start_run`, or None) into the loop: model, optimizer, schedule,
    scaler, RNGs, best metric and the hooks' state. The standard hooks (logging, evaluation, checkpoints) are
    registered after these, so they see the step's average and whatever a user hook did."""
    if ema_decay is not None:
        loop.register_hooks([ModelEMA(ema_decay)])
        logger.info(
            "solver.ema: evaluating and saving an exponential moving average of the weights (decay %g)", ema_decay
        )
    loop.register_hooks(list(hooks))
    if found is not None:
        last, state = found
        loop.load_state_dict(state)
        logger.info("resumed from %s at iteration %d", last, loop.start_iter)


def standard_hooks(
    cfg: DictConfig,
    writer: MetricsWriter,
    checkpointer: Checkpointer,
    summarize: Callable[[Dict[str, float]], Tuple[Dict[str, float], str]],
    evaluation: Optional[EvalHook] = None,
) -> List[HookBase]:
    """What every training run does around its steps, in order: log the step values every ``log_period``
    steps, evaluate (and keep ``model_best.pth``), save ``model_NNNNNNN.pth`` every
    ``solver.checkpoint_period`` steps and ``model_final.pth``."""
    return [
        MetricsLogger(writer, cfg.log_period, summarize),
        evaluation,
        PeriodicCheckpointer(checkpointer, cfg.solver.checkpoint_period),
    ]


def _detection_forward(device: torch.device) -> ForwardFn:
    def forward(
        model: nn.Module, batch: Tuple[Sequence[torch.Tensor], Sequence[Dict[str, Any]]]
    ) -> Tuple[torch.Tensor, Dict[str, float]]:
        images, targets = batch
        images = [img.to(device, non_blocking=True) for img in images]
        loss_dict = model(images, _to_device(targets, device))
        return sum(loss_dict.values()), {k: float(v.detach()) for k, v in loss_dict.items()}

    return forward


def _summarize_losses(avg: Dict[str, float]) -> Tuple[Dict[str, float], str]:
    total = sum(avg.values())
    parts = " ".join(f"{k.replace('loss_', '')} {v:.3f}" for k, v in avg.items())
    return {"total_loss": total, **avg}, f"loss {total:.3f} ({parts})"


def _train(
    cfg: DictConfig, device: torch.device, resume: bool, restart: bool, hooks: Sequence[HookBase] = ()
) -> Optional[Dict[str, Any]]:
    distributed = get_world_size() > 1
    rank, world = get_rank(), get_world_size()
    out = Path(cfg.output_dir)
    ckpt, found = start_run(cfg, resume, restart)

    dataset = build_train_dataset(cfg)
    _check_classes(dataset.class_names, cfg.model.num_classes)
    layout = batch_layout(cfg.solver.ims_per_batch, cfg.solver.ims_per_device, world)
    logger.info("training on %d images, %d classes; %s", len(dataset), len(dataset.class_names), layout.describe())
    model = build_model(cfg, class_names=dataset.class_names).to(device)
    if cfg.model.backbone.norm == "syncbn" and not distributed:
        logger.info("model.backbone.norm=syncbn without torch.distributed behaves as plain BatchNorm")
    model.train()
    s = cfg.solver
    loop = build_train_loop(
        cfg,
        model,
        _detection_forward(device),
        layout,
        device,
        extra_state=lambda: {"class_names": list(model.class_names)},
    )
    apply_channels_last(model, s.channels_last, device, loop.precision)
    # the backbone, compiled at step 1 (in place: the optimizer's parameters stay the same), for the loop's
    # resolved precision and length, before the EMA hook copies the model
    apply_compile_setting(model, s.compile, device, key="solver.compile", precision=loop.precision, steps=loop.max_iter)
    prepare_loop(loop, found, s.ema.decay if s.ema.enabled else None, hooks)
    checks = check_detection_run(cfg, model, dataset.class_names, found)  # every input, before iteration 1

    if distributed:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        loop.model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

    start_iter = loop.start_iter
    writer = MetricsWriter(str(out), s.max_iter, start_iter, enabled=is_main_process())
    checks.record(writer, start_iter)
    evaluation = None
    if cfg.test.eval_period > 0 and cfg.data.test is not None:
        # any evaluator (test.evaluator): its scalars go to log.jsonl, its main metric ranks model_best.pth
        periodic = build_periodic_evaluation(cfg)
        evaluation = EvalHook(
            cfg.test.eval_period,
            periodic,
            writer,
            metric=lambda: periodic.metric,
            higher_is_better=periodic.higher_is_better,
            checkpointer=ckpt,
        )
    loop.register_hooks(standard_hooks(cfg, writer, ckpt, _summarize_losses, evaluation))
    if start_iter < s.max_iter:
        loop.loader = build_train_loader(
            cfg,
            start_iter=start_iter * layout.accumulation,
            rank=rank,
            world_size=world,
            dataset=dataset,
            batch_size=layout.per_device,
        )
    else:
        logger.info("training already finished (iteration %d of %d)", start_iter, s.max_iter)
    try:
        loop.train()
    finally:
        writer.close()
    metrics = None
    if cfg.data.test is not None:
        metrics = evaluate_model(cfg, model=loop.eval_module(), output_dir=str(out))
    return metrics
