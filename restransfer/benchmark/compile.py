"""What ``torch.compile`` (``solver.compile``, ``test.compile``) gives our own models, compile time included.

* :func:`run_compile_training`: training steps of the config's model eagerly and with its backbone compiled
  (:func:`restransfer.models.compile.compile_model`), in one interleaved run; the compile time (as
  :data:`~restransfer.benchmark.model.COMPILE_TIME_DEFINITION` defines it) and the number of steps after
  which compiling has paid for itself.
* :func:`run_compile_inference`: inference over images of COCO's sizes (:func:`coco_like_sizes`), each
  image through every variant in turn (eager or compiled, with or without ``test.optimize``'s fused layers):
  the images per second over the whole run with the compile time in it, the steady per-image time, the
  distinct input shapes the backbone saw and how many calls compiled (recompilations).

The inductor cache starts empty unless ``TORCHINDUCTOR_CACHE_DIR`` is set
(:func:`~restransfer.benchmark.model.compile_cache`): compile times are a first run's.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ..devices import channels_last_decision, resolve_device
from ..models import build_model, inference_kwargs
from ..models.compile import compile_events, compile_model
from ..models.postprocess import deferred_mask_paste
from .machine import load_average, machine_description, machine_info
from .model import (
    COMPILE_TIME_DEFINITION,
    add_compile_figures,
    compile_cache,
    interleaved,
    summarize,
    train_step,
    warm_up,
)
from .reference import randomize_weights
from .synthetic import synthetic_batch

logger = logging.getLogger(__name__)

__all__ = ["coco_like_sizes", "run_compile_training", "run_compile_inference", "InferenceRun", "INFERENCE_VARIANTS"]

EAGER, COMPILED = "restransfer", "restransfer+compile"
# variant -> (test.optimize's fused layers, compiled)
INFERENCE_VARIANTS = {
    "plain": (False, False),
    "plain+compile": (False, True),
    "optimized": (True, False),
    "optimized+compile": (True, True),
}


def coco_like_sizes(
    n: int, seed: int = 0, short_side: Tuple[int, int] = (480, 640), aspect: Tuple[float, float] = (0.5, 2.0)
) -> List[Tuple[int, int]]:
    """``n`` image sizes ``(H, W)`` spread as COCO's: the short side uniform in ``short_side``, the
    width / height ratio log-uniform in ``aspect`` (as many portrait as landscape images)."""
    rng = random.Random(seed)
    sizes = []
    for _ in range(n):
        short = rng.uniform(*short_side)
        ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
        h, w = (short, short * ratio) if ratio >= 1 else (short / ratio, short)
        sizes.append((int(round(h)), int(round(w))))
    return sizes


# ----------------------------------------------------------------------------------------------- training


def run_compile_training(
    cfg: DictConfig,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    iters: int = 10,
    warmup: int = 2,
    size: Tuple[int, int] = (128, 128),
    batch: Optional[int] = None,
    channels_last: Optional[bool] = None,
    seed: int = 0,
) -> Dict[str, Any]:
    """Time training steps of the config's model, eager (``restransfer <precision>``) and with its backbone
    compiled (``restransfer+compile <precision>``), alternating between them.

    Args:
        cfg: a detection config (its model is built with random weights, as a run from scratch starts).
        device, precision: where and in which autocast precision the steps run.
        iters, warmup: timed steps per model, untimed ones before (the compiled model warms up until a step
            compiles nothing).
        size, batch: the synthetic training images' (H, W) and their number per step (default
            ``solver.ims_per_batch``).
        channels_last: NHWC activations (default: as ``solver.channels_last`` trains in ``precision``).

    Returns:
        ``{"measurements": {name: Measurement}, "speedup": eager median step / compiled median step,
        "break_even_steps": steps after which the compile time is paid back (None when the compiled step is
        not faster), "config": {...}, "environment": {...}, "definitions": {...}}``.
    """
    load_before = load_average()
    dev = resolve_device(device)
    batch = int(batch or cfg.solver.ims_per_batch)
    cl = channels_last_decision(cfg.solver.channels_last, dev, precision)[0] if channels_last is None else channels_last
    cache = compile_cache()
    torch.manual_seed(seed)
    model = build_model(cfg, load_weights=False).to(dev)
    images, targets = synthetic_batch(size, batch, seed=seed, num_classes=cfg.model.num_classes)
    images = [im.to(dev) for im in images]
    targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
    compiled = copy.deepcopy(model)
    compile_model(compiled)
    steps = {
        f"{EAGER} {precision}": train_step(model, images, targets, dev, precision, cl),
        f"{COMPILED} {precision}": train_step(compiled, images, targets, dev, precision, cl),
    }
    before = compile_events()
    _, compile_info = warm_up(steps, warmup, [f"{COMPILED} {precision}"], dev)
    events = {k: v - before[k] for k, v in compile_events().items()}
    runs = interleaved(steps, iters, dev)
    meas = {k: summarize(k, runs[k], batch, 0.0) for k in steps}
    for name, info in compile_info.items():
        add_compile_figures(meas[name], info, batch)
    eager, comp = meas[f"{EAGER} {precision}"], meas[f"{COMPILED} {precision}"]
    saved = (eager.latency_median - comp.latency_median) * batch  # seconds per step
    return {
        "measurements": meas,
        "speedup": eager.latency_median / comp.latency_median,
        "break_even_steps": math.ceil(comp.compile_s / saved) if saved > 0 else None,
        "compile_events": events,
        "config": _run_config(
            cfg,
            "train",
            dev,
            precision,
            image_size=list(size),
            batch=batch,
            channels_last=cl,
            compile_cache=cache,
        ),
        "environment": {**machine_info(dev), "load_average_before": load_before, "load_average_after": load_average()},
        "definitions": {"compile_time": COMPILE_TIME_DEFINITION},
    }


# ---------------------------------------------------------------------------------------------- inference


@dataclass
class InferenceRun:
    """One variant over the images of :func:`run_compile_inference`; times in seconds."""

    name: str
    total_s: float  # every call, the compiling ones included
    images_per_s: float  # images / total_s
    latency_median: float  # per image, over the calls that compiled nothing
    compile_s: float  # the compiling calls' time less as many median calls
    compiling_calls: int  # images whose call compiled something (the first, and each recompilation)
    frames_compiled: int  # Python frames compiled (a recompilation counts again)
    graphs: int
    graph_breaks: int
    backbone_median: float  # per image: the backbone (+ FPN) alone on the resized image, what compile changes
    times: List[float] = field(default_factory=list)

    @property
    def recompiles(self) -> int:
        """Calls after the first one that compiled."""
        return max(self.compiling_calls - 1, 0)


def _run_config(cfg: DictConfig, mode: str, dev: torch.device, precision: str, **more: Any) -> Dict[str, Any]:
    """The ``config`` record of a compile benchmark's result: the model, the mode, where and how it ran."""
    return dict(
        arch=cfg.model.arch,
        head=cfg.model.head,
        depth=cfg.model.backbone.depth,
        mode=mode,
        device=str(dev),
        precision=precision,
        **more,
        threads=torch.get_num_threads(),
        machine=machine_description(dev),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _image(size: Tuple[int, int], seed: int) -> Tensor:
    return synthetic_batch(size, 1, seed=seed)[0][0]


def run_compile_inference(
    cfg: DictConfig,
    *,
    num_images: int = 200,
    variants: Sequence[str] = ("optimized", "optimized+compile"),
    device: str = "cpu",
    seed: int = 0,
    sizes: Optional[Sequence[Tuple[int, int]]] = None,
) -> Dict[str, Any]:
    """Run ``num_images`` images of COCO's sizes through each of ``variants`` of the config's model.

    Args:
        cfg: a detection config; its model gets calibrated random weights
            (:func:`~restransfer.benchmark.reference.randomize_weights`); ``input.min_size_test`` /
            ``max_size_test`` set the resized sizes, ``test.precision`` the precision.
        variants: names of :data:`INFERENCE_VARIANTS`: ``plain`` (``test.optimize: false``), ``optimized``
            (BN folding, fused layers, channels_last), each eager or ``+compile`` (the backbone compiled with
            dynamic shapes, as ``test.compile`` does).
        sizes: the images' (H, W) (default :func:`coco_like_sizes` of ``num_images`` and ``seed``).

    Returns:
        ``{"runs": {variant: InferenceRun}, "input_shapes": distinct padded (H, W) the backbone saw,
        "image_sizes": the (H, W) of the images, "config": {...}, "environment": {...}}``. Each image goes
        through every variant before the next image, so that machine noise falls on each alike. Masks stay
        the head's low-resolution probabilities, as evaluation and the Predictor have them before they paste
        each box's mask (the same work for every variant); each variant's backbone is also timed alone.
    """
    unknown = [v for v in variants if v not in INFERENCE_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}: choose from {', '.join(INFERENCE_VARIANTS)}")
    load_before = load_average()
    dev = resolve_device(device)
    cache = compile_cache()
    sizes = list(sizes) if sizes is not None else coco_like_sizes(num_images, seed)
    torch.manual_seed(seed)
    base = build_model(cfg, load_weights=False).eval()
    randomize_weights(base, [_image(sizes[0], seed)])
    opt_kwargs = inference_kwargs(cfg)
    models: Dict[str, nn.Module] = {}
    for name in variants:
        optimize, compiled = INFERENCE_VARIANTS[name]
        m = copy.deepcopy(base).to(dev)
        m.optimize_for_inference(**{**opt_kwargs, "fold_bn": optimize, "fuse": optimize, "channels_last": optimize})
        if compiled:
            compile_model(m)
        models[name] = m
    times: Dict[str, List[float]] = {v: [] for v in variants}
    compiling: Dict[str, List[bool]] = {v: [] for v in variants}
    backbone: Dict[str, List[float]] = {v: [] for v in variants}
    events = {v: {"frames": 0, "graphs": 0, "graph_breaks": 0} for v in variants}
    shapes = set()
    with torch.inference_mode():
        for i, size in enumerate(sizes):
            if i % 25 == 0:
                logger.info("image %d of %d", i + 1, len(sizes))
            image = _image(size, seed + i).to(dev)
            for name, m in models.items():
                before = compile_events()
                with deferred_mask_paste(m):  # as evaluation and the Predictor run it
                    t0 = time.perf_counter()
                    m([image])
                    _sync(dev)
                    times[name].append(time.perf_counter() - t0)
                after = compile_events()
                compiling[name].append(after["frames"] != before["frames"])
                for k in after:
                    events[name][k] += after[k] - before[k]
                resized = m.transform([image])[0].tensors
                shapes.add(tuple(resized.shape[-2:]))
                t0 = time.perf_counter()
                m.backbone(resized)
                _sync(dev)
                backbone[name].append(time.perf_counter() - t0)
    runs = {}
    for name in variants:
        steady = [t for t, c in zip(times[name], compiling[name]) if not c] or times[name]
        median = statistics.median(steady)
        compiled_times = [t for t, c in zip(times[name], compiling[name]) if c]
        total = sum(times[name])
        runs[name] = InferenceRun(
            name=name,
            total_s=total,
            images_per_s=len(sizes) / total,
            latency_median=median,
            compile_s=max(sum(compiled_times) - len(compiled_times) * median, 0.0),
            compiling_calls=len(compiled_times),
            frames_compiled=events[name]["frames"],
            graphs=events[name]["graphs"],
            graph_breaks=events[name]["graph_breaks"],
            backbone_median=statistics.median(
                [t for t, c in zip(backbone[name], compiling[name]) if not c] or backbone[name]
            ),
            times=times[name],
        )
    return {
        "runs": runs,
        "input_shapes": sorted(shapes),
        "image_sizes": sizes,
        "config": _run_config(
            cfg,
            "inference",
            dev,
            str(cfg.test.precision),
            num_images=len(sizes),
            min_size_test=cfg.input.min_size_test,
            max_size_test=cfg.input.max_size_test,
            size_divisibility=cfg.input.size_divisibility,
            compile_cache=cache,
        ),
        "environment": {**machine_info(dev), "load_average_before": load_before, "load_average_after": load_average()},
    }
