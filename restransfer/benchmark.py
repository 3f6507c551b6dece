"""Speed of a detector built from a config, against torchvision's identical network in the same process.

:func:`run_benchmark` times inference (or a training step) of the config's model and, when the config
has a torchvision counterpart (FPN head, torchvision-style ResNet with frozen BN, RGB input; any
depth), of torchvision's ``FasterRCNN``/``MaskRCNN`` on ``resnet_fpn_backbone(...)`` with the *same
weights*. Runs of the two models alternate so that machine noise (other processes, clock changes)
falls on both alike. It reports images per second, per-image latency (median and spread), FLOPs per
image (``torch.utils.flop_counter``; RoIAlign and NMS are not counted), the achieved GFLOP/s, peak
memory and, for inference, how many detections agree (:func:`detection_agreement`).

Without ``--weights`` the weights are random, made usable by :func:`randomize_weights`: every frozen
BatchNorm gets the statistics of its input on the benchmark image (so activations neither vanish
nor explode through 101 layers) and a few classes get a score bias so that detections exist.
Agreement in bf16 on such weights means little: random RPN scores are near-ties, so tiny rounding
differences reorder proposals. Judge bf16 by the AP of a trained model (``tools/eval_coco.py CONFIG
--weights W test.precision=bf16``).
"""
from __future__ import annotations

import copy
import math
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import FrozenBatchNorm2d, box_iou

from .backbone.resnet import BasicBlock, Bottleneck
from .models import build_model
from .models.build import detector_kwargs, inference_kwargs, pixel_convention
from .devices import autocast_context, check_precision_support, precision_dtype

__all__ = ["Measurement", "run_benchmark", "torchvision_reference", "reference_incompatibility",
           "randomize_weights", "detection_agreement", "synthetic_batch", "format_report", "machine_description"]


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


# ------------------------------------------------------------------------------------ the reference


def reference_incompatibility(cfg) -> Optional[str]:
    """Why torchvision has no identical network for ``cfg`` (``None`` when it has one)."""
    m = cfg.model
    conv = pixel_convention(m, None)
    checks = [
        (m.head == "fpn", "the C4 head has no torchvision counterpart"),
        (m.backbone.style == "pytorch", "torchvision's ResNet is the pytorch style (stride in the 3x3 conv)"),
        (m.backbone.norm == "frozen_bn", "torchvision's detection backbones use frozen BatchNorm"),
        (m.backbone.residual, "torchvision has no plain (non-residual) ResNet"),
        (conv.channel_order == "RGB", "torchvision's transform has no BGR input"),
        (not m.roi_heads.class_agnostic_box_reg, "torchvision's box predictor is class-specific"),
        (m.fpn_extra_block and m.fpn_out_channels == 256,
         "resnet_fpn_backbone has 256 FPN channels and the P6 max-pool level"),
    ]
    for ok, reason in checks:
        if not ok:
            return reason
    return None


def torchvision_reference(cfg) -> nn.Module:
    """torchvision's ``FasterRCNN``/``MaskRCNN`` with ``resnet_fpn_backbone`` and the config's sizes and
    thresholds; load the config model's state dict into it (the keys are the same)."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    reason = reference_incompatibility(cfg)
    if reason:
        raise ValueError(f"no torchvision reference for this config: {reason}")
    m, h = cfg.model, cfg.model.roi_heads
    backbone = resnet_fpn_backbone(backbone_name=f"resnet{m.backbone.depth}", weights=None,
                                   trainable_layers=5 - m.backbone.freeze_at)
    kwargs = detector_kwargs(m, 5)
    names = ["0", "1", "2", "3"]
    kwargs["box_roi_pool"] = MultiScaleRoIAlign(names, h.pooler_resolution, h.sampling_ratio)
    kwargs["box_head"] = TwoMLPHead(256 * h.pooler_resolution ** 2, h.fpn_representation_size)
    ctor = FasterRCNN
    if m.arch == "mask_rcnn":
        ctor = MaskRCNN
        kwargs["mask_roi_pool"] = MultiScaleRoIAlign(names, h.mask_pooler_resolution, h.sampling_ratio)
        kwargs["mask_head"] = MaskRCNNHeads(256, (h.mask_conv_dim,) * 4, 1)
        kwargs["mask_predictor"] = MaskRCNNPredictor(h.mask_conv_dim, h.mask_conv_dim, m.num_classes + 1)
    kwargs["box_predictor"] = FastRCNNPredictor(h.fpn_representation_size, m.num_classes + 1)
    conv = pixel_convention(m, None)
    return ctor(backbone, num_classes=None, min_size=cfg.input.min_size_test, max_size=cfg.input.max_size_test,
                image_mean=[v / 255.0 for v in conv.mean], image_std=[v / 255.0 for v in conv.std], **kwargs)


# ------------------------------------------------------------------------------------ weights & data


@torch.no_grad()
def randomize_weights(model: nn.Module, images: Sequence[Tensor], num_biased_classes: int = 3,
                      class_bias: float = 4.0, residual_gain: float = 0.2) -> None:
    """Make random weights behave like trained ones for timing and agreement checks (in place).

    Every FrozenBatchNorm2d takes the per-channel mean and variance of its input on ``images`` (one
    forward pass; the statistics are set just before each layer runs), so each normalized activation
    has unit scale. The BatchNorm that closes each residual branch is then scaled by
    ``residual_gain``, as trained ResNets have small scales there: with a gain of 1 a random 101-layer
    network is chaotic (a 1e-7 perturbation grows to 1e-4 in fp32, bf16 rounding to 35% at res5),
    which is a property of the random network, not of the arithmetic. Classes ``1..num_biased_classes``
    get ``class_bias`` on their score logit so that detections exist.
    """
    was_training = model.training
    model.eval()

    def set_stats(bn: FrozenBatchNorm2d, args: Tuple[Tensor, ...]) -> None:
        x = args[0].float()
        bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        batch = model.transform(list(images))[0]
        model.backbone(batch.tensors)
    finally:
        for hk in hooks:
            hk.remove()
    for block in model.modules():
        if isinstance(block, (BasicBlock, Bottleneck)) and block.residual:
            last_bn = getattr(block, block.conv_bn_pairs[-1][1])
            if isinstance(last_bn, FrozenBatchNorm2d):
                last_bn.weight.mul_(residual_gain)
                last_bn.bias.mul_(residual_gain)
    bias = model.roi_heads.box_predictor.cls_score.bias
    bias[1:1 + num_biased_classes] += class_bias
    model.train(was_training)


def synthetic_batch(size: Tuple[int, int], batch: int = 1, seed: int = 0, num_classes: int = 3
                    ) -> Tuple[List[Tensor], List[Dict[str, Tensor]]]:
    """``batch`` synthetic-shapes images ``(3, H, W)`` float RGB in [0, 1] with their training targets
    (``boxes`` xyxy, ``labels`` in 1..min(3, num_classes), ``masks`` (N, H, W) uint8)."""
    from .data.shapes import render_shapes_image

    h, w = size
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(batch):
        img, objects = render_shapes_image(rng, max(h, w, 64))
        img = img[:h, :w]
        boxes, labels, masks = [], [], []
        for label, mask in objects:
            mask = mask[:h, :w]
            ys, xs = np.nonzero(mask)
            if len(xs) == 0 or xs.max() == xs.min() or ys.max() == ys.min():
                continue
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(min(label, num_classes))
            masks.append(mask)
        images.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255))
        targets.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
        })
    return images, targets


# ------------------------------------------------------------------------------------- agreement


def detection_agreement(pred: Dict[str, Tensor], ref: Dict[str, Tensor], iou_threshold: float = 0.9
                        ) -> Tuple[float, float]:
    """Fraction of detections that match one-to-one (same label, IoU > ``iou_threshold``), over the
    larger of the two counts, and the largest box-coordinate difference among matched pairs (px).

    Order-insensitive: detections whose scores tie may come out in another order.
    """
    pb, rb = pred["boxes"].detach().float().cpu(), ref["boxes"].detach().float().cpu()
    pl, rl = pred["labels"].cpu(), ref["labels"].cpu()
    n = max(len(pb), len(rb))
    if n == 0:
        return 1.0, 0.0
    if len(pb) == 0 or len(rb) == 0:
        return 0.0, math.inf
    iou = box_iou(rb, pb)
    iou[rl[:, None] != pl[None, :]] = 0
    pairs = (iou > iou_threshold).nonzero().tolist()
    pairs.sort(key=lambda ij: -float(iou[ij[0], ij[1]]))
    used_r, used_p, diffs = set(), set(), [0.0]
    for i, j in pairs:
        if i not in used_r and j not in used_p:
            used_r.add(i)
            used_p.add(j)
            diffs.append(float((rb[i] - pb[j]).abs().max()))
    return len(used_r) / n, max(diffs)


# ------------------------------------------------------------------------------------ measurement


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: the process peak so far is the best available
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _PeakMemory:
    """Peak memory while the block runs: CUDA max allocated, or the RSS sampled every 2 ms minus the RSS at
    entry (a thread; allocations freed between runs do not count twice)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> "_PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes() - self.base)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) - self.base)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes() - self.base)


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
            with _PeakMemory(device) as mem:
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
    flops = _count_flops(lambda: sum(model(images, targets).values()).backward()) / len(images)
    model.zero_grad(set_to_none=True)
    for _ in range(max(warmup, 1)):
        for s in steps.values():
            s()
    runs, peaks = _interleaved(steps, iters, device)
    return {"measurements": {k: _summarize(k, runs[k], len(images), flops, peaks[k]) for k in steps}}


def run_benchmark(cfg, *, device: str = "cpu", precision: Union[str, Sequence[str]] = "fp32", train: bool = False,
                  iters: int = 5, warmup: int = 1, size: Tuple[int, int] = (800, 1067), batch: int = 1,
                  reference: bool = True, random_weights: Optional[bool] = None,
                  channels_last: Optional[bool] = None, seed: int = 0) -> Dict[str, Any]:
    """Benchmark the config's model (inference, or a training step with ``train``) and torchvision's.

    Args:
        cfg: a config from :func:`restransfer.config.load_config` (``model.weights`` set or not).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"``...).
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
    dev = torch.device(device)
    precisions = [precision] if isinstance(precision, str) else list(precision)
    for p in precisions:
        dtype = precision_dtype(p)
        if not train:  # before minutes of model building: fp16 on a CPU without it fails here
            check_precision_support(dtype, dev)
    if not precisions:
        raise ValueError("give at least one precision")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible to PyTorch")
    if train and len(precisions) > 1:
        raise ValueError("training benchmarks one precision at a time")
    if train and dev.type == "cpu" and precisions[0] == "fp16":
        raise ValueError("fp16 training needs CUDA; use bf16 or fp32 on CPU")
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


def machine_description(device: torch.device) -> str:
    """The GPU's name, or the CPU model with its core count, torch version and SIMD level."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import platform
    return f"{name or platform.processor() or 'CPU'}, {os.cpu_count()} logical cores, " \
           f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"


def as_json(result: Dict[str, Any]) -> Dict[str, Any]:
    """The result with measurements as plain dicts (for ``json.dump``)."""
    out = dict(result)
    out["measurements"] = {k: asdict(v) for k, v in result["measurements"].items()}
    return out


def format_report(result: Dict[str, Any]) -> str:
    """A table of the measurements, rounded for people."""
    c = result["config"]
    lines = [f"{c['arch']} {c['head']} R{c['depth']} {c['mode']} on {c['device']} ({c['machine']}), "
             f"{c['threads']} threads, input {c['image_size'][0]}x{c['image_size'][1]} x{c['batch']}"
             + (f", test size {c['min_size_test']}" if c["mode"] == "inference" else "")
             + (", random weights" if c["random_weights"] else "")]
    lines.append(f"{'model':<18}{'img/s':>8}{'median s':>10}{'p25-p75 s':>14}{'min-max s':>14}{'GFLOP/img':>11}"
                 f"{'GFLOP/s':>9}{'peak MB':>9}{'ratio':>8}")
    ratios = result.get("ratios", {})
    for name, m in result["measurements"].items():
        ratio = f"{ratios[name]:.3f}x" if name in ratios else ("1" if ratios else "")
        lines.append(f"{name:<18}{m.images_per_s:>8.3f}{m.latency_median:>10.3f}"
                     f"{f'{m.latency_p25:.2f}-{m.latency_p75:.2f}':>14}{f'{m.latency_min:.2f}-{m.latency_max:.2f}':>14}"
                     f"{m.flops_per_image / 1e9:>11.1f}{m.gflops_per_s:>9.1f}{m.peak_memory_mb:>9.0f}{ratio:>8}")
    for name, a in result.get("agreement", {}).items():
        lines.append(f"agreement of {name} with torchvision (same label, IoU > 0.9): {100 * a['fraction']:.1f}% "
                     f"of {sum(result['detections'][name])} detections; max box difference "
                     f"{a['max_box_difference_px']:.2e} px")
    if not ratios:
        lines.append(f"reference: {result['reference']}")
    return "\n".join(lines) + "\n"
