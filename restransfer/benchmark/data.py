"""Throughput of the training data loader: decode, augment and collate, in images per second.

:func:`run_loader_benchmark` builds the config's own training dataset and loader
(:func:`~restransfer.data.build.build_train_dataset` and :func:`~restransfer.data.build.build_train_loader`,
exactly what the trainer iterates) and times how fast the loader yields batches in the main process
(0 workers) and with each requested number of worker processes. Nothing consumes the batches, so the
figure is the most the loader can supply: a GPU that consumes more images per second than this will
wait for data.

The images are those of the config's ``data.train``; when that data is not on disk, a COCO-layout
folder of synthetic JPEGs at COCO's sizes is generated instead
(:func:`~restransfer.benchmark.synthetic.generate_coco_folder`) and the report says so.
Augmentation follows the config (``input.min_size_train``, ``max_size_train``, flip, colour jitter),
masks are decoded when the model predicts them (``data.with_masks``), and ``pin_memory`` follows
``device`` as in training.

Each worker count gets its own loader: ``warmup`` untimed rounds (worker start-up, the first
prefetched batches), then ``rounds`` timed rounds of at least ``images_per_round`` images each. The
report gives the median and the slowest round's images/s and the median per worker. Files read once
sit in the page cache afterwards, so the figure is for a warm cache (a dataset larger than memory is
also limited by the disk).
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..config import DatasetSpec, resolve_path
from ..data.build import build_train_dataset, build_train_loader, uses_masks
from ..errors import ConfigError
from .machine import load_average, machine_description, machine_info
from .synthetic import generate_coco_folder

try:
    import resource
except ImportError:  # Windows: no getrusage; CPU time per image is then not reported
    resource = None

__all__ = ["LoaderMeasurement", "missing_training_data", "time_loader", "run_loader_benchmark"]


@dataclass
class LoaderMeasurement:
    """Timing of the training loader with ``workers`` worker processes (0: in the main process)."""

    workers: int
    round_images: List[int]  # images the loader yielded in each timed round
    round_seconds: List[float]
    images_per_s_median: float
    images_per_s_min: float  # the slowest round
    images_per_s_per_worker: float  # median / workers (the main process counts as one when workers == 0)
    mean_image_hw: Tuple[float, float]  # mean size of the yielded (augmented) images
    images_yielded: int  # warmup rounds included
    round_rates: List[float] = field(default_factory=list)  # images / seconds of each round
    # CPU time of the main process and the workers per yielded image, start-up and warmup included; batches
    # prefetched but never taken count too, so it is an upper bound. Unlike images/s it hardly depends on
    # what else the machine runs: 1000 / cpu_ms_per_image is what one core of its own would supply.
    cpu_ms_per_image: Optional[float] = None


def missing_training_data(cfg: DictConfig) -> Optional[str]:
    """Why ``cfg.data.train`` cannot be read as it stands (the first missing piece), or ``None`` when
    every dataset's json and image folder exist or its ``generate`` option will create them."""
    if not cfg.data.train:
        return "data.train is empty"
    for i, spec in enumerate(cfg.data.train):
        if spec.generate is not None:
            continue
        if not spec.json or not spec.image_root:
            return f"data.train[{i}] has no json or no image_root"
        if not Path(resolve_path(spec.json)).is_file():
            return f"data.train[{i}].json: {resolve_path(spec.json)} not found"
        if not Path(resolve_path(spec.image_root)).is_dir():
            return f"data.train[{i}].image_root: {resolve_path(spec.image_root)} not found"
    return None


# ------------------------------------------------------------------------------------ measurement


def _check_rounds(images_per_round: int, rounds: int, warmup: int) -> None:
    if images_per_round < 1 or rounds < 1 or warmup < 0:
        raise ConfigError(
            f"images_per_round ({images_per_round}) and rounds ({rounds}) must be at least 1, "
            f"warmup ({warmup}) at least 0"
        )


def time_loader(loader: Any, images_per_round: int, rounds: int, warmup: int) -> LoaderMeasurement:
    """Iterate ``loader`` for ``warmup`` untimed and ``rounds`` timed rounds of at least ``images_per_round``
    images (whole batches) each. ``workers`` of the result is ``loader.num_workers``."""
    _check_rounds(images_per_round, rounds, warmup)
    counts, seconds, heights, widths, total = [], [], [], [], 0
    iterator = iter(loader)
    for r in range(warmup + rounds):
        n = 0
        start = time.perf_counter()
        while n < images_per_round:
            images, _ = next(iterator)
            n += len(images)
            if r >= warmup:
                heights.extend(int(im.shape[-2]) for im in images)
                widths.extend(int(im.shape[-1]) for im in images)
        elapsed = time.perf_counter() - start
        total += n
        if r >= warmup:
            counts.append(n)
            seconds.append(elapsed)
    del iterator
    rates = [n / s for n, s in zip(counts, seconds)]
    workers = int(getattr(loader, "num_workers", 0))
    median = statistics.median(rates)
    return LoaderMeasurement(
        workers=workers,
        round_images=counts,
        round_seconds=seconds,
        images_per_s_median=median,
        images_per_s_min=min(rates),
        images_per_s_per_worker=median / max(workers, 1),
        mean_image_hw=(float(np.mean(heights)), float(np.mean(widths))),
        images_yielded=total,
        round_rates=rates,
    )


def _cpu_seconds() -> Optional[float]:
    """CPU time of this process (all threads) and of its children that have ended and been waited for."""
    if resource is None:
        return None
    own, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime


def run_loader_benchmark(
    cfg: DictConfig,
    workers: Sequence[int] = (2,),
    images_per_round: int = 64,
    rounds: int = 5,
    warmup: int = 1,
    work_dir: Optional[Union[str, os.PathLike]] = None,
    num_generated: Optional[int] = None,
) -> Dict[str, Any]:
    """Images/s of ``cfg``'s training loader in the main process and with each count in ``workers``.

    Args:
        cfg: a loaded config; only ``data``, ``input``, ``solver`` (the batch size of one process), ``seed``,
            ``device`` and ``model.arch``/``num_classes`` (masks, generated categories) matter.
        workers: worker counts to time besides 0 (duplicates and 0 are folded in).
        images_per_round, rounds, warmup: see :func:`time_loader`.
        work_dir: where to generate the synthetic folder when ``data.train`` is missing (default: a
            temporary folder, removed afterwards).
        num_generated: images in that folder (default: as many as one worker count reads, at most 512).

    Returns:
        ``{"config": {...}, "data": {...}, "measurements": [LoaderMeasurement, ...]}`` ordered by worker count.
    """
    _check_rounds(images_per_round, rounds, warmup)
    load_before = load_average()
    counts = sorted({0, *(int(w) for w in workers)})
    if counts[0] < 0:
        raise ConfigError(f"worker counts must be >= 0, got {list(workers)}")
    reason = missing_training_data(cfg)
    with tempfile.TemporaryDirectory(prefix="restransfer_loader_") as tmp:
        data: Dict[str, Any] = {"source": "config", "train": [str(resolve_path(s.json)) for s in cfg.data.train]}
        entries = None  # data.train
        if reason is not None:
            n = num_generated or min(512, images_per_round * (rounds + warmup))
            folder = generate_coco_folder(
                Path(work_dir) if work_dir else Path(tmp), n, num_classes=int(cfg.model.num_classes), seed=int(cfg.seed)
            )
            entries = [OmegaConf.structured(DatasetSpec(json=folder.json, image_root=folder.image_root))]
            data = {"source": "generated", "reason": reason, **asdict(folder)}
        dataset = build_train_dataset(cfg, entries)  # the generated folder in place of data.train
        data["images"] = len(dataset)
        measurements, pin_memory, batch_size = [], False, 0
        for w in counts:
            cpu_before = _cpu_seconds()
            loader = build_train_loader(cfg, dataset=dataset, num_workers=w)
            pin_memory, batch_size = bool(loader.pin_memory), int(loader.batch_sampler.batch_size)
            m = time_loader(loader, images_per_round, rounds, warmup)
            del loader  # persistent workers end (and are waited for) with their loader
            gc.collect()
            if cpu_before is not None:
                m.cpu_ms_per_image = 1000 * (_cpu_seconds() - cpu_before) / m.images_yielded
            measurements.append(m)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    config = {
        "min_size_train": list(cfg.input.min_size_train),
        "max_size_train": int(cfg.input.max_size_train),
        "hflip_prob": float(cfg.input.hflip_prob),
        "color_jitter": float(cfg.input.color_jitter),
        "images_per_batch": batch_size,
        "masks": uses_masks(cfg),
        "pin_memory": pin_memory,
        "images_per_round": int(images_per_round),
        "rounds": int(rounds),
        "warmup": int(warmup),
        "machine": machine_description(torch.device("cpu")),
        "cpus": cpus,
        "environment": machine_info(torch.device("cpu")),
        "load_average_before": load_before,
        "load_average": load_average(),
    }
    return {"config": config, "data": data, "measurements": measurements}
