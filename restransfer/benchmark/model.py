"""Speed and memory of a detector built from a config, against torchvision's identical network.

:func:`run_benchmark` times inference (or a training step) of the config's model and, when the config
has a torchvision counterpart (FPN head, torchvision-style ResNet with frozen BN, RGB input; any
depth), of torchvision's ``FasterRCNN``/``MaskRCNN`` on ``resnet_fpn_backbone(...)`` with the *same
weights*, as references of two kinds:

* ``eager``: torchvision's model as it is (measurements ``torchvision <precision>``);
* ``compile``: the same model with only its backbone + FPN wrapped in ``torch.compile``, as a user would
  do (``model.backbone = torch.compile(model.backbone)``; measurements ``torchvision+compile <precision>``).

Runs of all the models alternate in one process so that machine noise (other processes, clock changes)
falls on each alike. It reports images per second, per-image latency (median and spread), FLOPs per
image (``torch.utils.flop_counter``; RoIAlign and NMS are not counted; for a training step, each model's
own), the achieved GFLOP/s and, for inference, how many detections agree (:func:`detection_agreement`).

A compiled reference's compile time is reported separately (:data:`COMPILE_TIME_DEFINITION`): the
warm-up calls go on until a call compiles nothing, and the time of those that compiled, less as many
steady calls, is the compile time; the amortized figure spreads it over 100 calls. The inductor cache
starts empty (a temporary ``TORCHINDUCTOR_CACHE_DIR``) unless that variable is set, so the figure is a
first run's.

Peak memory is measured after the timing, each model and precision in a fresh process of its own
(:mod:`.memory`; ``memory="fresh"``), never in the timing process, where models share an allocator.

Without ``--weights`` the weights are random, calibrated by
:func:`~restransfer.benchmark.reference.randomize_weights` (see there what agreement means on them).
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch._dynamo
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..devices import (
    autocast_context,
    channels_last_decision,
    check_autocast_precision,
    check_precision_support,
    precision_dtype,
    resolve_device,
)
from ..errors import ConfigError
from ..models import build_model, inference_kwargs
from .agreement import detection_agreement
from .machine import load_average, machine_description, machine_info
from .memory import MEMORY_DEFINITION, in_fresh_process, measure_peak
from .reference import randomize_weights, reference_incompatibility, torchvision_reference
from .synthetic import synthetic_batch

__all__ = [
    "Measurement",
    "run_benchmark",
    "REFERENCE_KINDS",
    "COMPILE_TIME_DEFINITION",
    "AMORTIZED_CALLS",
    "train_step",
    "warm_up",
    "interleaved",
    "summarize",
    "add_compile_figures",
    "compile_cache",
]

OURS, EAGER, COMPILED = "restransfer", "torchvision", "torchvision+compile"
REFERENCE_KINDS = {"eager": EAGER, "compile": COMPILED}
AMORTIZED_CALLS = 100
COMPILE_TIME_DEFINITION = (
    "compile time: the wall time of the warm-up calls during which torch.compile compiled (its counters "
    "changed), minus as many median timed calls; amortized: (compile time + 100 calls at the median) / 100, "
    "per image"
)
# warm-up calls of a compiled model at most: dynamo's default recompile limit per frame
_MAX_COMPILE_CALLS = 8
MEMORY_MODES = ("fresh", "off")


@dataclass
class Measurement:
    """Timing (and memory) of one model at one precision. Latencies are per image, in seconds."""

    name: str
    images_per_s: float
    latency_median: float
    latency_p25: float
    latency_p75: float
    latency_min: float
    latency_max: float
    flops_per_image: float
    gflops_per_s: float
    model: str = ""  # "restransfer", "torchvision" or "torchvision+compile"
    precision: str = ""
    # MiB above the memory held once model, optimizer and inputs exist, in a fresh process (see .memory);
    # None when not measured (memory="off")
    peak_memory_mb: Optional[float] = None  # warm-up (first step, compilation) and measured steps
    steady_peak_memory_mb: Optional[float] = None  # measured steps only
    memory_baseline_mb: Optional[float] = None  # what the process held after setup
    # with memory_repeats > 1 the three figures above are medians over that many fresh processes; the peaks:
    peak_memory_runs_mb: List[float] = field(default_factory=list)
    # compiled models only (see COMPILE_TIME_DEFINITION)
    compile_s: Optional[float] = None
    compile_calls: Optional[int] = None
    amortized_latency: Optional[float] = None  # per image, over the compilation and AMORTIZED_CALLS calls
    compile_cache_hits: Optional[int] = None  # graphs inductor took from its cache instead of compiling
    runs: List[float] = field(default_factory=list)


# ------------------------------------------------------------------------------------ measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(name: str, runs: List[float], batch: int, flops: float) -> Measurement:
    per_image = [r / batch for r in runs]
    q = np.percentile(per_image, [25, 75])
    med = statistics.median(per_image)
    model, _, precision = name.rpartition(" ")
    return Measurement(
        name=name,
        images_per_s=1.0 / med,
        latency_median=med,
        latency_p25=float(q[0]),
        latency_p75=float(q[1]),
        latency_min=min(per_image),
        latency_max=max(per_image),
        flops_per_image=flops,
        gflops_per_s=flops / med / 1e9,
        model=model,
        precision=precision,
        runs=per_image,
    )


def _count_flops(step: Callable[[], Any]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def _compile_counters() -> Dict[Tuple[str, str], int]:
    """torch.compile's own event counts (frames traced, graphs compiled, cache misses...): they change
    exactly when a call compiles, which is how a warm-up call is known to have compiled."""
    from torch._dynamo.utils import counters

    return {(group, key): value for group, values in list(counters.items()) for key, value in list(values.items())}


def warm_up(
    steps: Dict[str, Callable[[], Any]], warmup: int, compiled: Sequence[str], device: torch.device
) -> Tuple[Dict[str, Any], Dict[str, Tuple[List[float], int]]]:
    """``max(warmup, 1)`` untimed calls of each step; a compiled step goes on until a call compiles
    nothing (at most :data:`_MAX_COMPILE_CALLS`). Returns each step's first output and, for compiled
    steps, the wall times of the calls that compiled and how many graphs came from inductor's cache."""
    outputs: Dict[str, Any] = {}
    compile_info: Dict[str, Tuple[List[float], int]] = {}
    hit = ("inductor", "fxgraph_cache_hit")
    for name, step in steps.items():
        times: List[float] = []
        start = _compile_counters() if name in compiled else {}
        calls = 0
        while True:
            before = _compile_counters() if name in compiled else None
            _sync(device)
            t0 = time.perf_counter()
            out = step()
            _sync(device)
            elapsed = time.perf_counter() - t0
            if calls == 0:
                outputs[name] = out
            calls += 1
            compiled_now = before is not None and _compile_counters() != before
            if compiled_now:
                times.append(elapsed)
            if calls >= max(warmup, 1) and (not compiled_now or calls >= _MAX_COMPILE_CALLS):
                break
        if name in compiled:
            compile_info[name] = (times, _compile_counters().get(hit, 0) - start.get(hit, 0))
    return outputs, compile_info


def interleaved(steps: Dict[str, Callable[[], Any]], iters: int, device: torch.device) -> Dict[str, List[float]]:
    """Time each step ``iters`` times, alternating between them (in reversed order every other round, so
    that neither model always inherits the other's freed memory)."""
    runs: Dict[str, List[float]] = {k: [] for k in steps}
    for i in range(iters):
        order = list(steps.items())
        for name, step in order if i % 2 == 0 else order[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            runs[name].append(time.perf_counter() - t0)
    return runs


def add_compile_figures(m: Measurement, info: Tuple[List[float], int], batch: int) -> None:
    times, m.compile_cache_hits = info
    median_call = m.latency_median * batch
    m.compile_calls = len(times)
    m.compile_s = max(sum(times) - len(times) * median_call, 0.0)
    m.amortized_latency = (m.compile_s + AMORTIZED_CALLS * median_call) / (AMORTIZED_CALLS * batch)


# ------------------------------------------------------------------------------------------- models


def _reference_model(ref: nn.Module, state: Dict[str, Tensor], train: bool) -> nn.Module:
    """torchvision's network ``ref`` (:func:`~restransfer.benchmark.reference.torchvision_reference`) holding
    ``state``, our model's weights."""
    ref.load_state_dict(state)
    if train:
        ref.transform._skip_resize = True  # the data pipeline resizes; every model gets the same tensors
    return ref


def _compiled(ref: nn.Module, backend: str) -> nn.Module:
    """``ref`` with its backbone + FPN compiled, as a user would do it (``backend``: torch.compile's)."""
    ref.backbone = torch.compile(ref.backbone, backend=backend)
    return ref


def _inference_step(
    kind: str,
    m: nn.Module,
    images: List[Tensor],
    device: torch.device,
    precision: str,
    optimize: Optional[Dict[str, Any]] = None,
) -> Callable[[], Any]:
    """One inference call of ``m`` at ``precision``: ours through ``optimize_for_inference`` (in place, with the
    config's ``optimize`` keyword arguments, :func:`~restransfer.models.build.inference_kwargs`), torchvision's
    under autocast."""
    m.eval()
    if kind == OURS:
        m.optimize_for_inference(**{**(optimize or {}), "precision": precision})
        return lambda: m(images)

    def theirs() -> Any:
        with autocast_context(device, precision):
            return m(images)

    return theirs


def train_step(
    m: nn.Module,
    images: List[Tensor],
    targets: List[Dict[str, Tensor]],
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> Callable[[], Any]:
    """One SGD step of ``m`` (its own optimizer and loss scaler) on ``images``, ``targets``."""
    m.train()
    if channels_last:
        m.to(memory_format=torch.channels_last)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

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


def _inputs(
    num_classes: int, size: Tuple[int, int], batch: int, seed: int, device: torch.device
) -> Tuple[List[Tensor], List[Dict[str, Tensor]]]:
    images, targets = synthetic_batch(size, batch, seed=seed, num_classes=num_classes)
    return [im.to(device) for im in images], [{k: v.to(device) for k, v in t.items()} for t in targets]


# ---------------------------------------------------------------------------------- memory (child)


def _memory_of(
    cfg: DictConfig,
    weights_path: str,
    name: str,
    *,
    train: bool,
    compile_backend: str,
    device: str,
    size: Tuple[int, int],
    batch: int,
    seed: int,
    channels_last: bool,
    threads: int,
    warmup: int,
    steps: int,
) -> Dict[str, Any]:
    """In a fresh process: build the one model ``name`` ("restransfer fp32", "torchvision+compile bf16"...)
    with the weights the timing process used, its optimizer and inputs, and measure its peak memory."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    kind, _, precision = name.rpartition(" ")
    state = torch.load(weights_path, map_location="cpu", weights_only=True, mmap=True)
    if kind == OURS:
        m = build_model(cfg)
        m.load_state_dict(state)
    else:
        m = _reference_model(torchvision_reference(cfg), state, train)
    del state
    m.to(dev)
    if kind == COMPILED:
        _compiled(m, compile_backend)
    images, targets = _inputs(cfg.model.num_classes, size, batch, seed, dev)
    if train:
        step = train_step(m, images, targets, dev, precision, channels_last)
        return vars(measure_peak(step, dev, warmup, steps))
    step = _inference_step(kind, m, images, dev, precision, inference_kwargs(cfg))
    with torch.inference_mode():
        return vars(measure_peak(step, dev, warmup, steps))


_own_cache_dir: Optional[str] = None


def _inductor_default_cache() -> Optional[str]:
    """inductor's default cache folder: inductor writes it into TORCHINDUCTOR_CACHE_DIR itself once it
    has looked it up, so that value alone does not mean the user chose a cache."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return None
    return os.path.abspath(default_cache_dir())


def compile_cache() -> str:
    """Point inductor at an empty cache of this process's own (so that compile times are a first run's),
    unless the user set ``TORCHINDUCTOR_CACHE_DIR``; says which. Fresh child processes inherit it and
    reuse what the timing compiled. The folder lives as long as the process: inductor's compile workers
    keep the path they started with."""
    global _own_cache_dir
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given and given != _own_cache_dir and given != _inductor_default_cache():
        return f"{given} (TORCHINDUCTOR_CACHE_DIR as set: may be warm)"
    if _own_cache_dir is None:
        _own_cache_dir = tempfile.mkdtemp(prefix="restransfer_inductor_")
        atexit.register(shutil.rmtree, _own_cache_dir, True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = _own_cache_dir
        return "empty (a new temporary TORCHINDUCTOR_CACHE_DIR)"
    return "this process's temporary TORCHINDUCTOR_CACHE_DIR, warm from its earlier benchmarks"


# ------------------------------------------------------------------------------------------- runs


def _parse_references(reference: Union[bool, str, Sequence[str]]) -> List[str]:
    if reference is True:
        return ["eager"]
    if reference is False or reference is None:
        return []
    kinds = [k.strip() for k in reference.split(",")] if isinstance(reference, str) else list(reference)
    unknown = [k for k in kinds if k not in REFERENCE_KINDS]
    if unknown or not kinds:
        raise ConfigError(
            f"reference {reference!r}: give one or more of {', '.join(REFERENCE_KINDS)} (e.g. eager,compile)"
        )
    return list(dict.fromkeys(kinds))


def _ratios(meas: Dict[str, Measurement], kind: str, of: Sequence[str], first_precision: str) -> Dict[str, float]:
    """images/s of each of ``of`` over the ``kind`` reference at the same precision (else the first one's)."""
    out = {}
    for name in of:
        m = meas[name]
        ref = meas.get(f"{kind} {m.precision}") or meas.get(f"{kind} {first_precision}")
        if ref is not None and name != ref.name:
            out[name] = m.images_per_s / ref.images_per_s
    return out


def run_benchmark(
    cfg: DictConfig,
    *,
    device: str = "cpu",
    precision: Union[str, Sequence[str]] = "fp32",
    train: bool = False,
    iters: int = 5,
    warmup: int = 1,
    size: Tuple[int, int] = (800, 1067),
    batch: int = 1,
    reference: Union[bool, str, Sequence[str]] = True,
    reference_precision: Optional[Union[str, Sequence[str]]] = None,
    memory: str = "fresh",
    memory_steps: int = 1,
    memory_repeats: int = 3,
    compile_backend: str = "inductor",
    random_weights: Optional[bool] = None,
    channels_last: Optional[bool] = None,
    seed: int = 0,
) -> Dict[str, Any]:
    """Benchmark the config's model (inference, or a training step with ``train``) and torchvision's.

    Args:
        cfg: a config from :func:`restransfer.config.load_config` (``model.weights`` set or not).
        device: ``"cpu"``, ``"cuda"`` (``"cuda:1"``...) or ``"auto"`` (:func:`restransfer.devices.resolve_device`).
        precision: ``fp32``/``bf16``/``fp16`` for our model, or several (inference only) to time each
            in the same interleaved runs (inference: ``test.precision``; training: autocast).
        train: time forward + backward + SGD step instead of inference.
        iters, warmup: timed and untimed runs per model (a compiled model warms up until it compiles no more).
        size: (H, W) of the synthetic input images (the model's transform resizes them for inference).
        batch: images per run.
        reference: which torchvision references to run when the config has one: ``"eager"``, ``"compile"``
            (backbone + FPN under ``torch.compile``), both (``"eager,compile"`` or a list), ``True`` (eager)
            or ``False`` (none).
        reference_precision: the references' precision(s) (autocast). Default: training, ``precision``;
            inference, fp32 on CPU (the speed targets compare against it) and the first ``precision`` on CUDA.
        memory: ``"fresh"``: each model's peak memory in a fresh process of its own (:mod:`.memory`),
            after the timing; ``"off"``: none.
        memory_steps: measured steps per fresh process (after the same warm-up as the timing).
        memory_repeats: fresh processes per model, interleaved over the models; the figures are their medians
            (one process's peak RSS varies with how the C heap happens to be laid out: 496-622 MB over three
            processes of torchvision's R101-FPN fp32 inference).
        compile_backend: ``torch.compile``'s backend for the compiled reference (default ``inductor``, what a
            user gets; ``aot_eager`` or ``eager`` trace the same graphs in seconds, without code generation).
        random_weights: calibrate random weights with :func:`randomize_weights` (default: when the config
            has no ``model.weights``).
        channels_last: training on channels_last activations, ours and the references alike (default: on
            CUDA, or where ``solver.channels_last`` turns them on for every measured precision).
        seed: for the weights and the image.

    Returns:
        ``{"config": {...}, "environment": {...}, "measurements": {"restransfer fp32": Measurement, ...,
        "torchvision fp32": ..., "torchvision+compile fp32": ...}, "ratios": {name: its images/s over the
        eager torchvision's}, "ratios_vs_compile": {ours: images/s over torchvision+compile's},
        "ratios_vs_compile_amortized": {ours: over torchvision+compile's amortized rate}, "agreement":
        {name: {"fraction", "max_box_difference_px"}}, "detections": {name: [count per image]},
        "reference": str, "definitions": {"compile_time", "memory"}}``
    """
    load_before = load_average()
    dev = resolve_device(device)
    precisions = [precision] if isinstance(precision, str) else list(precision)
    if not precisions:
        raise ConfigError("give at least one precision")
    if train and len(precisions) > 1:
        raise ConfigError("training benchmarks one precision at a time")
    kinds = _parse_references(reference)
    if reference_precision is None:
        ref_precisions = [precisions[0] if train or dev.type == "cuda" else "fp32"]
    else:
        ref_precisions = [reference_precision] if isinstance(reference_precision, str) else list(reference_precision)
    if train and ref_precisions != precisions:
        raise ConfigError(
            f"a training step's references run at its precision ({precisions[0]}); "
            f"drop the reference precision {', '.join(ref_precisions)}"
        )
    if memory not in MEMORY_MODES:
        raise ConfigError(f"memory {memory!r}: use one of {', '.join(MEMORY_MODES)}")
    if isinstance(memory_repeats, bool) or not isinstance(memory_repeats, int) or memory_repeats < 1:
        raise ConfigError(f"memory repeats {memory_repeats!r}: give a whole number of fresh processes, 1 or more")
    if compile_backend != "inductor" and "compile" not in kinds:
        raise ConfigError(
            f"compile backend {compile_backend!r} is the torchvision+compile reference's, which is not run: "
            "add it (--reference eager,compile)"
        )
    if "compile" in kinds and compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
        usual = ", ".join(torch._dynamo.list_backends())  # without the debugging and experimental ones
        raise ConfigError(f"compile backend {compile_backend!r}: not one of torch.compile's (e.g. {usual})")
    for p in precisions:
        dtype = precision_dtype(p)
        if not train:  # before minutes of model building: fp16 on a CPU without it fails here
            check_precision_support(dtype, dev)
    for p in precisions if train else ref_precisions:  # what runs under autocast
        check_autocast_precision(p, dev)
    torch.manual_seed(seed)
    model = build_model(cfg)
    images, targets = synthetic_batch(size, batch, seed=seed, num_classes=cfg.model.num_classes)
    if random_weights is None:
        random_weights = not cfg.model.weights
    if random_weights:
        randomize_weights(model, images[:1])
    reason = reference_incompatibility(cfg)
    kinds = kinds if reason is None else []
    if channels_last is None:  # on CUDA, else as solver.channels_last would train each measured precision
        cl = dev.type == "cuda" or all(channels_last_decision(cfg.solver.channels_last, dev, p)[0] for p in precisions)
    else:
        cl = channels_last
    cache = compile_cache() if "compile" in kinds else None
    with tempfile.TemporaryDirectory(prefix="restransfer_benchmark_") as tmp:
        state = model.state_dict()
        weights_path = os.path.join(tmp, "weights.pt")
        if memory == "fresh":
            torch.save(state, weights_path)
        plain_ref = _reference_model(torchvision_reference(cfg), state, train) if kinds else None
        model.to(dev)
        if plain_ref is not None:
            plain_ref.to(dev)
        dev_images = [im.to(dev) for im in images]
        dev_targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
        out = (
            _train(
                model,
                plain_ref,
                kinds,
                dev_images,
                dev_targets,
                dev,
                precisions[0],
                iters,
                warmup,
                cl,
                batch,
                compile_backend=compile_backend,
            )
            if train
            else _inference(
                inference_kwargs(cfg),
                model,
                plain_ref,
                kinds,
                dev_images,
                dev,
                precisions,
                ref_precisions,
                iters,
                warmup,
                batch,
                compile_backend=compile_backend,
            )
        )
        del model, plain_ref, state
        meas: Dict[str, Measurement] = out["measurements"]
        if memory == "fresh":
            peaks: Dict[str, List[Dict[str, Any]]] = {name: [] for name in meas}
            for _ in range(memory_repeats):
                for name, m in meas.items():
                    peaks[name].append(
                        in_fresh_process(
                            _memory_of,
                            cfg,
                            weights_path,
                            name,
                            train=train,
                            compile_backend=compile_backend,
                            device=str(dev),
                            size=tuple(size),
                            batch=batch,
                            seed=seed,
                            channels_last=cl,
                            threads=torch.get_num_threads(),
                            warmup=max(warmup, 1, m.compile_calls or 0),
                            steps=memory_steps,
                        )
                    )
            for name, m in meas.items():
                runs = peaks[name]
                m.peak_memory_mb = statistics.median(r["peak_mb"] for r in runs)
                m.steady_peak_memory_mb = statistics.median(r["steady_peak_mb"] for r in runs)
                m.memory_baseline_mb = statistics.median(r["baseline_mb"] for r in runs)
                m.peak_memory_runs_mb = [r["peak_mb"] for r in runs]
    ours = [k for k in meas if meas[k].model == OURS]
    first = ref_precisions[0]
    out["ratios"] = _ratios(meas, EAGER, [k for k in meas if meas[k].model != EAGER], first)
    out["ratios_vs_compile"] = _ratios(meas, COMPILED, ours, first)
    out["ratios_vs_compile_amortized"] = {}
    for name in ours:
        ref = meas.get(f"{COMPILED} {meas[name].precision}") or meas.get(f"{COMPILED} {first}")
        if ref is not None and ref.amortized_latency:
            out["ratios_vs_compile_amortized"][name] = ref.amortized_latency / meas[name].latency_median
    names = [REFERENCE_KINDS[k] for k in kinds]
    out["reference"] = ", ".join(names) if names else f"none ({reason or 'disabled'})"
    out["definitions"] = {
        "compile_time": COMPILE_TIME_DEFINITION,
        "memory": MEMORY_DEFINITION if memory == "fresh" else "not measured (memory off)",
    }
    out["config"] = dict(
        arch=cfg.model.arch,
        head=cfg.model.head,
        depth=cfg.model.backbone.depth,
        mode="train" if train else "inference",
        device=str(dev),
        precisions=precisions,
        reference_precision=first,
        reference_precisions=ref_precisions,
        references=names,
        image_size=list(size),
        batch=batch,
        min_size_test=cfg.input.min_size_test,
        threads=torch.get_num_threads(),
        random_weights=bool(random_weights),
        optimize=bool(cfg.test.optimize),
        channels_last=bool(cl) if train else None,
        memory=memory,
        memory_steps=memory_steps if memory == "fresh" else None,
        memory_repeats=memory_repeats if memory == "fresh" else None,
        compile_backend=compile_backend if "compile" in kinds else None,
        compile_cache=cache,
        machine=machine_description(dev),
    )
    out["environment"] = {**machine_info(dev), "load_average_before": load_before, "load_average_after": load_average()}
    return out


def _inference(
    optimize: Dict[str, Any],
    model: nn.Module,
    plain_ref: Optional[nn.Module],
    kinds: Sequence[str],
    images: List[Tensor],
    device: torch.device,
    precisions: Sequence[str],
    ref_precisions: Sequence[str],
    iters: int,
    warmup: int,
    batch: int,
    *,
    compile_backend: str,
) -> Dict[str, Any]:
    model.eval()
    with torch.inference_mode():  # counted on the plain model: the fused kernels are unknown to the counter
        flops = _count_flops(lambda: model(images)) / len(images)
    steps: Dict[str, Callable[[], Any]] = {}
    for i, precision in enumerate(precisions):
        variant = model if i == len(precisions) - 1 else copy.deepcopy(model)
        steps[f"{OURS} {precision}"] = _inference_step(OURS, variant, images, device, precision, optimize)
    compiled: List[str] = []
    for kind in kinds:
        # eager: the plain reference; compile: a copy, compiled once and called at every precision
        # (torch.compile guards on the autocast state and keeps one graph per precision)
        ref = plain_ref if kind == "eager" else _compiled(copy.deepcopy(plain_ref), compile_backend)
        for precision in ref_precisions:
            name = f"{REFERENCE_KINDS[kind]} {precision}"
            steps[name] = _inference_step(EAGER, ref, images, device, precision)
            if kind == "compile":
                compiled.append(name)
    result: Dict[str, Any] = {}
    with torch.inference_mode():
        outputs, compile_info = warm_up(steps, warmup, compiled, device)
        runs = interleaved(steps, iters, device)
    meas = {k: summarize(k, runs[k], len(images), flops) for k in steps}
    for name, info in compile_info.items():
        add_compile_figures(meas[name], info, batch)
    result["measurements"] = meas
    result["detections"] = {k: [len(o["boxes"]) for o in out] for k, out in outputs.items()}
    agree_ref = next((k for k in steps if meas[k].model == EAGER), None) or next(
        (k for k in steps if meas[k].model == COMPILED), None
    )
    if agree_ref is not None:
        ref_out = outputs[agree_ref]
        result["agreement"] = {}
        result["agreement_reference"] = agree_ref
        for k, out in outputs.items():
            if meas[k].model == OURS:
                agree = [detection_agreement(p, r) for p, r in zip(out, ref_out)]
                result["agreement"][k] = {
                    "fraction": float(np.mean([a for a, _ in agree])),
                    "max_box_difference_px": max(d for _, d in agree),
                }
    return result


def _train(
    model: nn.Module,
    plain_ref: Optional[nn.Module],
    kinds: Sequence[str],
    images: List[Tensor],
    targets: List[Dict[str, Tensor]],
    device: torch.device,
    precision: str,
    iters: int,
    warmup: int,
    channels_last: bool,
    batch: int,
    *,
    compile_backend: str,
) -> Dict[str, Any]:
    # each model's own count: the work a training step of it does (the sparse RPN backward does less);
    # counted before any step changes the weights, on the plain reference for both reference kinds
    flops = {OURS: _count_flops(lambda: sum(model(images, targets).values()).backward()) / len(images)}
    model.zero_grad(set_to_none=True)
    if plain_ref is not None:
        plain_ref.train()
        flops[EAGER] = _count_flops(lambda: sum(plain_ref(images, targets).values()).backward()) / len(images)
        plain_ref.zero_grad(set_to_none=True)
        flops[COMPILED] = flops[EAGER]
    steps = {f"{OURS} {precision}": train_step(model, images, targets, device, precision, channels_last)}
    compiled: List[str] = []
    for kind in kinds:
        ref = plain_ref if kind == "eager" else _compiled(copy.deepcopy(plain_ref), compile_backend)
        name = f"{REFERENCE_KINDS[kind]} {precision}"
        steps[name] = train_step(ref, images, targets, device, precision, channels_last)
        if kind == "compile":
            compiled.append(name)
    _, compile_info = warm_up(steps, warmup, compiled, device)
    runs = interleaved(steps, iters, device)
    meas = {k: summarize(k, runs[k], len(images), flops[k.rpartition(" ")[0]]) for k in steps}
    for name, info in compile_info.items():
        add_compile_figures(meas[name], info, batch)
    return {"measurements": meas}
