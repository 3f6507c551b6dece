"""Speed of a detector built from a config, against torchvision's identical network in the same process.

:func:`run_benchmark` times inference (or a training step) of the config's model and, when the config
has a torchvision counterpart (FPN head, torchvision-style ResNet with frozen BN, RGB input; any
depth), of torchvision's ``FasterRCNN``/``MaskRCNN`` on ``resnet_fpn_backbone(...)`` with the *same
weights*. Runs of the two models alternate so that machine noise (other processes, clock changes)
falls on both alike. It reports images per second, per-image latency (median and spread), FLOPs per
image (``torch.utils.flop_counter``; RoIAlign and NMS are not counted; for a training step, each model's
own), the achieved GFLOP/s, peak
memory and, for inference, how many detections agree (:func:`detection_agreement`).

Without ``--weights`` the weights are random, calibrated by
:func:`~restransfer.benchmark.reference.randomize_weights` (see there what agreement means on them).
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..devices import (autocast_context, check_autocast_precision, check_precision_support, precision_dtype,
                       resolve_device)
from ..models import build_model, inference_kwargs
from .agreement import detection_agreement
from .memory import PeakMemory
from .reference import randomize_weights, reference_incompatibility, torchvision_reference
from .report import machine_description
from .synthetic import synthetic_batch

__all__ = ["Measurement", "run_benchmark"]


@dataclass
class Measurement:
    """Timing of one model. Latencies are per image, in seconds."""

    name: str
    images_per_s: float
    latency_median: float
    latency_p25: float
    latency_p75: float
    latency_min: float
    latency_max: float
    flops_per_image: float
    gflops_per_s: float
    peak_memory_mb: float  # RSS growth above the idle process (CPU) or max allocated (CUDA)
    runs: List[float] = field(default_factory=list)


# ------------------------------------------------------------------------------------ measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summarize(name: str, runs: List[float], batch: int, flops: float, peak: int) -> Measurement:
    per_image = [r / batch for r in runs]
    q = np.percentile(per_image, [25, 75])
    med = statistics.median(per_image)
    return Measurement(name=name, images_per_s=1.0 / med, latency_median=med, latency_p25=float(q[0]),
                       latency_p75=float(q[1]), latency_min=min(per_image), latency_max=max(per_image),
                       flops_per_image=flops, gflops_per_s=flops / med / 1e9, peak_memory_mb=peak / 2 ** 20,
                       runs=per_image)


def _count_flops(step: Callable[[], Any]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def _interleaved(steps: Dict[str, Callable[[], Any]], iters: int, device: torch.device
                 ) -> Tuple[Dict[str, List[float]], Dict[str, int]]:
    """Time each step ``iters`` times, alternating between them (in reversed order every other round, so
    that neither model always inherits the other's freed memory); also the peak memory of each."""
    runs: Dict[str, List[float]] = {k: [] for k in steps}
    peaks: Dict[str, int] = {k: 0 for k in steps}
    for i in range(iters):
        order = list(steps.items())
        for name, step in (order if i % 2 == 0 else order[::-1]):
            with PeakMemory(device) as mem:
                _sync(device)
                t0 = time.perf_counter()
                step()
                _sync(device)
                runs[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], mem.peak)
    return runs, peaks


# ------------------------------------------------------------------------------------------- runs


def _inference(cfg, model: nn.Module, ref: Optional[nn.Module], images: List[Tensor], device: torch.device,
               precisions: Sequence[str], iters: int, warmup: int, ref_precision: str) -> Dict[str, Any]:
    model.eval()
    with torch.inference_mode():  # counted on the plain model: the fused kernels are unknown to the counter
        flops = _count_flops(lambda: model(images)) / len(images)
    steps: Dict[str, Callable[[], Any]] = {}
    for i, precision in enumerate(precisions):
        opt_kwargs = inference_kwargs(cfg)
        opt_kwargs["precision"] = precision
        variant = (model if i == len(precisions) - 1 else copy.deepcopy(model)).optimize_for_inference(**opt_kwargs)
        steps[f"restransfer {precision}"] = (lambda m: lambda: m(images))(variant)
    if ref is not None:
        ref.eval()

        def theirs() -> Any:
            with autocast_context(device, ref_precision):
                return ref(images)
        steps[f"torchvision {ref_precision}"] = theirs
    result: Dict[str, Any] = {}
    with torch.inference_mode():
        outputs = {k: s() for k, s in steps.items()}
        for _ in range(max(warmup - 1, 0)):
            for s in steps.values():
                s()
        runs, peaks = _interleaved(steps, iters, device)
    result["measurements"] = {k: _summarize(k, runs[k], len(images), flops, peaks[k]) for k in steps}
    result["detections"] = {k: [len(o["boxes"]) for o in out] for k, out in outputs.items()}
    if ref is not None:
        ref_out = outputs[f"torchvision {ref_precision}"]
        result["agreement"] = {}
        for k, out in outputs.items():
            if k.startswith("restransfer"):
                agree = [detection_agreement(p, r) for p, r in zip(out, ref_out)]
                result["agreement"][k] = {"fraction": float(np.mean([a for a, _ in agree])),
                                          "max_box_difference_px": max(d for _, d in agree)}
    return result


def _train(model: nn.Module, ref: Optional[nn.Module], images: List[Tensor], targets: List[Dict[str, Tensor]],
           device: torch.device, precision: str, iters: int, warmup: int, channels_last: bool) -> Dict[str, Any]:
    if ref is not None:
        ref.transform._skip_resize = True  # the data pipeline resizes; both models get the same tensors
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def make_step(m: nn.Module, use_channels_last: bool) -> Callable[[], Any]:
        m.train()
        if use_channels_last:
            m.to(memory_format=torch.channels_last)
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)

        def step() -> Any:
            opt.zero_grad(set_to_none=True)
            with autocast_context(device, precision):
                losses = m(images, targets)
            loss = sum(losses.values())
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return loss
        return step

    steps = {f"restransfer {precision}": make_step(model, channels_last)}
    if ref is not None:
        steps[f"torchvision {precision}"] = make_step(ref, False)
    # each model's own count: the work a training step of it does (the sparse RPN backward does less)
    flops = {}
    for name, m in zip(steps, (model, ref)):
        flops[name] = _count_flops(lambda: sum(m(images, targets).values()).backward()) / len(images)
        m.zero_grad(set_to_none=True)
    for _ in range(max(warmup, 1)):
        for s in steps.values():
            s()
    runs, peaks = _interleaved(steps, iters, device)
    return {"measurements": {k: _summarize(k, runs[k], len(images), flops[k], peaks[k]) for k in steps}}


def run_benchmark(cfg, *, device: str = "cpu", precision: Union[str, Sequence[str]] = "fp32", train: bool = False,
                  iters: int = 5, warmup: int = 1, size: Tuple[int, int] = (800, 1067), batch: int = 1,
                  reference: bool = True, random_weights: Optional[bool] = None,
                  channels_last: Optional[bool] = None, seed: int = 0) -> Dict[str, Any]:
    """Benchmark the config's model (inference, or a training step with ``train``) and torchvision's.

    Args:
        cfg: a config from :func:`restransfer.config.load_config` (``model.weights`` set or not).
        device: ``"cpu"``, ``"cuda"`` (``"cuda:1"``...) or ``"auto"`` (:func:`restransfer.devices.resolve_device`).
        precision: ``fp32``/``bf16``/``fp16`` for our model, or several (inference only) to time each
            in the same interleaved runs (inference: ``test.precision``; training: autocast). On CPU
            the torchvision reference runs fp32 (the speed targets compare against it); on CUDA it
            runs autocast at the (first) precision.
        train: time forward + backward + SGD step instead of inference.
        iters, warmup: timed and untimed runs per model.
        size: (H, W) of the synthetic input images (the model's transform resizes them for inference).
        batch: images per run.
        reference: also run torchvision's network when the config has one.
        random_weights: calibrate random weights with :func:`randomize_weights` (default: when the config
            has no ``model.weights``).
        channels_last: training on channels_last activations (default: on CUDA, or when the config sets
            ``solver.channels_last``).
        seed: for the weights and the image.

    Returns:
        ``{"config": {...}, "measurements": {"restransfer fp32": Measurement, ..., "torchvision fp32":
        ...}, "ratios": {name: its images/s over torchvision's}, "agreement": {name: {"fraction",
        "max_box_difference_px"}}, "detections": {name: [count per image]}, "reference": str}``
    """
    dev = resolve_device(device)
    precisions = [precision] if isinstance(precision, str) else list(precision)
    for p in precisions:
        dtype = precision_dtype(p)
        if not train:  # before minutes of model building: fp16 on a CPU without it fails here
            check_precision_support(dtype, dev)
    if not precisions:
        raise ValueError("give at least one precision")
    if train and len(precisions) > 1:
        raise ValueError("training benchmarks one precision at a time")
    if train:
        check_autocast_precision(precisions[0], dev)
    torch.manual_seed(seed)
    model = build_model(cfg)
    images, targets = synthetic_batch(size, batch, seed=seed, num_classes=cfg.model.num_classes)
    if random_weights is None:
        random_weights = not cfg.model.weights
    if random_weights:
        randomize_weights(model, images[:1])
    reason = reference_incompatibility(cfg)
    ref = None
    if reference and reason is None:
        ref = torchvision_reference(cfg)
        ref.load_state_dict(model.state_dict())
    model.to(dev)
    if ref is not None:
        ref.to(dev)
    images = [im.to(dev) for im in images]
    targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
    ref_precision = precisions[0] if dev.type == "cuda" else "fp32"
    if train:
        cl = (dev.type == "cuda" or cfg.solver.channels_last) if channels_last is None else channels_last
        out = _train(model, ref, images, targets, dev, precisions[0], iters, warmup, cl)
    else:
        out = _inference(cfg, model, ref, images, dev, precisions, iters, warmup, ref_precision)
    meas = out["measurements"]
    ref_name = next((k for k in meas if k.startswith("torchvision")), None)
    if ref_name is not None:
        out["ratios"] = {k: m.images_per_s / meas[ref_name].images_per_s for k, m in meas.items() if k != ref_name}
    out["reference"] = "torchvision" if ref is not None else f"none ({reason or 'disabled'})"
    out["config"] = dict(arch=cfg.model.arch, head=cfg.model.head, depth=cfg.model.backbone.depth,
                         mode="train" if train else "inference", device=str(dev), precisions=precisions,
                         reference_precision=ref_precision, image_size=list(size), batch=batch,
                         min_size_test=cfg.input.min_size_test, threads=torch.get_num_threads(),
                         random_weights=bool(random_weights), optimize=bool(cfg.test.optimize),
                         machine=machine_description(dev))
    return out
