"""Throughput of the training data loader: decode, augment and collate, in images per second.

:func:`run_loader_benchmark` builds the config's own training dataset and loader
(:func:`~restransfer.data.build.build_train_dataset` and :func:`~restransfer.data.build.build_train_loader`,
exactly what the trainer iterates) and times how fast the loader yields batches in the main process
(0 workers) and with each requested number of worker processes. Nothing consumes the batches, so the
figure is the most the loader can supply: a GPU that consumes more images per second than this will
wait for data.

The images are those of the config's ``data.train``; when that data is not on disk, a COCO-layout
folder of synthetic JPEGs at COCO's sizes is generated instead (:func:`generate_coco_folder`: 640x480
and 480x640, about 150 KB each as COCO's are, 1-14 polygon objects per image) and the report says so.
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

import copy
import gc
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

from .benchmark import machine_description
from .config import DatasetSpec, resolve_path
from .data.build import build_train_dataset, build_train_loader, uses_masks

try:
    import resource
except ImportError:  # Windows: no getrusage; CPU time per image is then not reported
    resource = None

__all__ = ["GeneratedFolder", "LoaderMeasurement", "generate_coco_folder", "missing_training_data",
           "time_loader", "run_loader_benchmark", "format_loader_report", "loader_report_json"]

# COCO's images are mostly 640 px on the long side, about two thirds of them landscape
COCO_SIZES = ((480, 640), (640, 480))
_LANDSCAPE_SHARE = 2 / 3


@dataclass
class GeneratedFolder:
    """A folder written by :func:`generate_coco_folder`."""

    json: str
    image_root: str
    num_images: int
    sizes: List[Tuple[int, int]]  # the (H, W) image sizes used
    mean_file_kb: float
    objects_per_image: float


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


# ------------------------------------------------------------------------------------ generated data


def _photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float32 (h, w, 3) texture with detail at every scale, so that a JPEG of it has a photo's size
    and decoding cost (a flat image decodes several times faster, pure noise slower)."""
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = rng.uniform(60, 190, size=3)
    for cells, amplitude in ((2, 50), (6, 30), (24, 18), (96, 16), (240, 10)):
        gh, gw = max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))
        grid = rng.normal(0, amplitude, size=(gh, gw, 3)).astype(np.float32)
        img += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return img


def _polygon(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A star-shaped polygon (K, 2) of 8-16 vertices, float xy, inside the image."""
    bw, bh = rng.uniform(0.05, 0.6) * w, rng.uniform(0.05, 0.6) * h
    cx, cy = rng.uniform(bw / 2, w - bw / 2), rng.uniform(bh / 2, h - bh / 2)
    k = int(rng.integers(8, 17))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=k))
    radius = rng.uniform(0.6, 1.0, size=k)
    pts = np.stack([cx + 0.5 * bw * radius * np.cos(angles), cy + 0.5 * bh * radius * np.sin(angles)], axis=1)
    return np.clip(pts, 0, [w - 1, h - 1])


def generate_coco_folder(root: Union[str, os.PathLike], num_images: int, *, num_classes: int = 80,
                         sizes: Sequence[Tuple[int, int]] = COCO_SIZES, max_objects: int = 14, quality: int = 90,
                         seed: int = 0) -> GeneratedFolder:
    """Write ``num_images`` synthetic JPEGs with COCO annotations (boxes and polygon segmentations).

    Layout: ``root/images/000001.jpg ...`` and ``root/annotations/train.json``; categories 1..K named
    ``class_1``... Image ``i`` has ``sizes[0]`` (H, W) with probability 2/3, else ``sizes[1]``, and
    1..``max_objects`` objects (COCO averages 7.3 per image). Everything is a function of ``seed``.
    """
    if num_images < 1 or num_classes < 1 or max_objects < 1:
        raise ValueError(f"generate_coco_folder: num_images ({num_images}), num_classes ({num_classes}) and "
                         f"max_objects ({max_objects}) must be at least 1")
    if not sizes or any(len(s) != 2 or min(s) < 16 for s in sizes):
        raise ValueError(f"generate_coco_folder: sizes {list(sizes)} must be (H, W) pairs of at least 16 px")
    root = Path(root)
    image_dir, ann_dir = root / "images", root / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, file_bytes = [], [], 0
    for i in range(int(num_images)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        h, w = sizes[0] if len(sizes) == 1 or rng.random() < _LANDSCAPE_SHARE else sizes[1]
        img = _photo_like(rng, h, w)
        image_id = i + 1
        for _ in range(int(rng.integers(1, max_objects + 1))):
            poly = np.round(_polygon(rng, h, w), 2)  # as written to the json, so that the box is the polygon's
            mask = np.zeros((h, w), dtype=np.uint8)
            cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
            inside = mask.astype(bool)
            # blend a colour into the texture: objects keep detail, as in photos
            img[inside] = 0.5 * img[inside] + 0.5 * rng.uniform(0, 255, size=3).astype(np.float32)
            rle = mask_util.frPyObjects([poly.ravel().tolist()], h, w)[0]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.integers(num_classes)) + 1,
                "bbox": [float(v) for v in mask_util.toBbox(rle)], "area": float(mask_util.area(rle)),
                "segmentation": [[float(v) for v in poly.ravel()]], "iscrowd": 0,
            })
        img += rng.normal(0, 16, size=img.shape).astype(np.float32)  # sensor noise and fine texture
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise OSError(f"OpenCV could not encode {image_dir / f'{image_id:06d}.jpg'}")
        (image_dir / f"{image_id:06d}.jpg").write_bytes(jpeg.tobytes())
        file_bytes += len(jpeg)
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "height": h, "width": w})
    data = {"info": {"description": f"restransfer loader-benchmark images, seed {seed}"}, "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": f"class_{k + 1}", "supercategory": "none"} for k in range(num_classes)]}
    json_path = ann_dir / "train.json"
    json_path.write_text(json.dumps(data), encoding="utf-8")
    used = sorted({(im["height"], im["width"]) for im in images}, key=lambda hw: -hw[1])
    return GeneratedFolder(json=str(json_path), image_root=str(image_dir), num_images=len(images), sizes=used,
                           mean_file_kb=file_bytes / len(images) / 1024, objects_per_image=len(annotations) / len(images))


def missing_training_data(cfg) -> Optional[str]:
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
        raise ValueError(f"images_per_round ({images_per_round}) and rounds ({rounds}) must be at least 1, "
                         f"warmup ({warmup}) at least 0")


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
    return LoaderMeasurement(workers=workers, round_images=counts, round_seconds=seconds, images_per_s_median=median,
                             images_per_s_min=min(rates), images_per_s_per_worker=median / max(workers, 1),
                             mean_image_hw=(float(np.mean(heights)), float(np.mean(widths))), images_yielded=total,
                             round_rates=rates)


def _cpu_seconds() -> Optional[float]:
    """CPU time of this process (all threads) and of its children that have ended and been waited for."""
    if resource is None:
        return None
    own, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime


def run_loader_benchmark(cfg, workers: Sequence[int] = (2,), images_per_round: int = 64, rounds: int = 5,
                         warmup: int = 1, work_dir: Optional[Union[str, os.PathLike]] = None,
                         num_generated: Optional[int] = None) -> Dict[str, Any]:
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
    counts = sorted({0, *(int(w) for w in workers)})
    if counts[0] < 0:
        raise ValueError(f"worker counts must be >= 0, got {list(workers)}")
    cfg = copy.deepcopy(cfg)
    reason = missing_training_data(cfg)
    with tempfile.TemporaryDirectory(prefix="restransfer_loader_") as tmp:
        data: Dict[str, Any] = {"source": "config", "train": [str(resolve_path(s.json)) for s in cfg.data.train]}
        if reason is not None:
            n = num_generated or min(512, images_per_round * (rounds + warmup))
            folder = generate_coco_folder(Path(work_dir) if work_dir else Path(tmp), n,
                                          num_classes=int(cfg.model.num_classes), seed=int(cfg.seed))
            cfg.data.train = [DatasetSpec(json=folder.json, image_root=folder.image_root)]
            data = {"source": "generated", "reason": reason, **asdict(folder)}
        dataset = build_train_dataset(cfg)
        data["images"] = len(dataset)
        measurements, pin_memory, batch_size = [], False, 0
        for w in counts:
            cfg.data.num_workers = w
            cpu_before = _cpu_seconds()
            loader = build_train_loader(cfg, dataset=dataset)
            pin_memory, batch_size = bool(loader.pin_memory), int(loader.batch_sampler.batch_size)
            m = time_loader(loader, images_per_round, rounds, warmup)
            del loader  # persistent workers end (and are waited for) with their loader
            gc.collect()
            if cpu_before is not None:
                m.cpu_ms_per_image = 1000 * (_cpu_seconds() - cpu_before) / m.images_yielded
            measurements.append(m)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    config = {"min_size_train": list(cfg.input.min_size_train), "max_size_train": int(cfg.input.max_size_train),
              "hflip_prob": float(cfg.input.hflip_prob), "color_jitter": float(cfg.input.color_jitter),
              "images_per_batch": batch_size, "masks": uses_masks(cfg),
              "pin_memory": pin_memory,
              "images_per_round": int(images_per_round), "rounds": int(rounds), "warmup": int(warmup),
              "machine": machine_description(torch.device("cpu")), "cpus": cpus,
              "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    return {"config": config, "data": data, "measurements": measurements}


# ------------------------------------------------------------------------------------ reporting


def loader_report_json(result: Dict[str, Any]) -> Dict[str, Any]:
    """The result with measurements as plain dicts (for ``json.dump``)."""
    return {**result, "measurements": [asdict(m) for m in result["measurements"]]}


def format_loader_report(result: Dict[str, Any]) -> str:
    """The measurements as a table, rounded for people."""
    c, d = result["config"], result["data"]
    if d["source"] == "generated":
        sizes = " and ".join(f"{w}x{h}" for h, w in d["sizes"])
        source = (f"a generated COCO-layout folder ({d['reason']}): {d['num_images']} JPEGs of {sizes}, "
                  f"mean {d['mean_file_kb']:.0f} KB, {d['objects_per_image']:.1f} objects per image")
    else:
        source = f"the config's data.train ({', '.join(d['train'])}), {d['images']} images"
    sizes = c["min_size_train"]
    short = f"{sizes[0]}" if len(sizes) == 1 else f"one of {sizes[0]}..{sizes[-1]} ({len(sizes)} sizes)"
    lines = [
        f"training loader on {source}",
        f"input: short side {short}, long side <= {c['max_size_train']}, flip {c['hflip_prob']:g}, "
        f"colour jitter {c['color_jitter']:g}, masks {'yes' if c['masks'] else 'no'}, "
        f"{c['images_per_batch']} images per batch, pin_memory {'on' if c['pin_memory'] else 'off'}",
        f"{c['rounds']} timed rounds of {c['images_per_round']} images after {c['warmup']} untimed, per worker count; "
        f"{c['machine']}, {c['cpus']} CPUs available"
        + (", load average {:.2f} {:.2f} {:.2f}".format(*c["load_average"]) if c.get("load_average") else ""),
        f"{'workers':<10}{'img/s median':>14}{'slowest round':>15}{'per worker':>12}{'CPU ms/img':>12}{'images':>8}"
        f"{'mean size':>12}",
    ]
    for m in result["measurements"]:
        name = "0 (main)" if m.workers == 0 else str(m.workers)
        h, w = m.mean_image_hw
        cpu = "n/a" if m.cpu_ms_per_image is None else f"{m.cpu_ms_per_image:.1f}"
        lines.append(f"{name:<10}{m.images_per_s_median:>14.1f}{m.images_per_s_min:>15.1f}"
                     f"{m.images_per_s_per_worker:>12.1f}{cpu:>12}{sum(m.round_images):>8d}{f'{h:.0f}x{w:.0f}':>12}")
    lines.append("CPU ms/img: CPU time of all the loader's processes per image (start-up included); 1000 / it is "
                 "what one otherwise idle core supplies")
    return "\n".join(lines) + "\n"
