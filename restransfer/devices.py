"""Device and precision policy: which device ``"auto"`` means, which precision ``"auto"`` means, whether a
device can run a precision, and the autocast context that applies one.

Every module that turns a ``device`` or ``precision`` setting into torch objects goes through here, so
that "auto" and "fp16 needs a GPU" mean the same in training, evaluation, the Predictor and the benchmark.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import ContextManager, Optional, Tuple

import torch

from .errors import ConfigError, DeviceError
from .yaml_config import (  # re-exported: checked where configs are read
    COMPILE_SETTINGS,
    channels_last_setting,
    compile_setting,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "precision_dtype",
    "resolve_device",
    "resolve_precision",
    "native_bf16",
    "check_precision_support",
    "check_autocast_precision",
    "autocast_context",
    "COMPILE_SETTINGS",
    "compile_setting",
    "resolve_compile",
    "compile_decision",
    "auto_compile",
    "cpu_has_amx",
    "AUTO_RULE",
    "AUTO_COMPILE_MIN_STEPS",
    "channels_last_setting",
    "channels_last_decision",
]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str) -> torch.dtype:
    """``"fp32" | "bf16" | "fp16"`` -> the torch dtype; anything else is a ``ConfigError`` (a ``ValueError``)."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}") from None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available; ``"cuda"`` under torchrun means this process's LOCAL_RANK GPU.

    A CUDA device when PyTorch sees none is a :class:`~restransfer.errors.DeviceError` (a ``RuntimeError``)
    naming the ``device`` key and what to set instead.
    """
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = (
                "this PyTorch build has no CUDA support"
                if torch.version.cuda is None
                else "PyTorch sees no CUDA GPU here (none installed, no driver, or CUDA_VISIBLE_DEVICES hides them)"
            )
            raise DeviceError(
                f"device={device}: CUDA was requested but {why}; set device=cpu (or device=auto, which "
                "uses a GPU when there is one)"
            )
        if device == "cuda" and "LOCAL_RANK" in os.environ:
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA with bf16, CPUs with AVX-512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    return device.type == "cpu" and probe is not None and bool(probe())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> fp16 on CUDA, bf16 on CPUs that compute it natively, else fp32; other values unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if native_bf16(device) else "fp32"


def check_precision_support(dtype: torch.dtype, device: torch.device) -> None:
    """Raise for a precision this device cannot run (fp16 on a CPU without it); warn where it is emulated.

    This is the check for models whose layers are cast to ``dtype`` (inference); autocast has its own,
    stricter rule (:func:`check_autocast_precision`).
    """
    if device.type != "cpu":
        return
    if dtype == torch.float16:
        probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_fp16_supported", None)
        if probe is None or not probe():
            raise ConfigError(
                "precision fp16 needs a GPU or a CPU with AVX-512-FP16/AMX-FP16; use bf16 on this CPU "
                "(test.precision=bf16)"
            )
    elif dtype == torch.bfloat16 and not native_bf16(device):
        logger.warning(
            "this CPU has no native bfloat16 (AVX-512-BF16 or AMX): bf16 is emulated and may be much slower than fp32"
        )


def check_autocast_precision(precision: str, device: torch.device) -> None:
    """Raise unless ``device`` can run mixed precision ``precision`` (fp32, bf16, or fp16 on CUDA only:
    gradient scaling and fp16 autocast are CUDA features)."""
    precision_dtype(precision)
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 runs on CUDA only; on CPUs use bf16 (test.precision / solver.precision)")


def autocast_context(device: torch.device, precision: str) -> ContextManager[None]:
    """Mixed precision for ``precision`` in {fp32, bf16, fp16} on ``device`` (fp16 needs CUDA)."""
    check_autocast_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision_dtype(precision))


# What compile=auto does, and why: auto compiles only where tools/benchmark_compile.py has measured the compile
# time paid back over a run of that length (docs/benchmarks.md, "torch.compile in the toolkit").
# * bf16 detection training on a CPU with AMX: the compiled backbone made the R101-FPN step at 800x1067 2.14x
#   faster (3.74 s -> 1.75 s, 77 s to compile, paid back after 39 steps; with channels_last 2.08 s -> 1.61 s,
#   1.29x, after 153 steps), and cost the demo (R18, 4 x 128 px) nothing it did not nearly earn back (1.02x,
#   81 s to compile, about 7% of its 1,150 steps). Over AUTO_COMPILE_MIN_STEPS steps, compiling would cost a
#   demo-sized run about 20 s (under 1%) and save an R101-FPN-sized one 22-53% of its time.
# * Everywhere else on CPUs no run paid back: without AMX a compiled training step ran at 1.02x the eager step
#   (the demo's bf16 step on a Zen 4 with AVX-512-BF16, 134 s to compile, paid back after 5,100 steps) and at
#   0.93x (R18-FPN fp32 at 256 px; 86 s to compile), and compiled inference was slower than test.optimize's
#   fused layers (R50-FPN at 512 px: 5.2 s against 4.4 s per image, 44 s to compile) but at the demo's 128 px,
#   where 75 ms against 83 ms per image pays back 20-53 s of compiling after several thousand images.
# * CUDA is not measured yet: tools/gpu_check.sh runs the benchmark there.
AUTO_RULE = (
    "compile=auto runs eagerly: no benchmark has measured a net gain for torch.compile for this kind of run on "
    "this device yet"
)
AUTO_COMPILE_MIN_STEPS = 10_000


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles with bf16 (``amx_tile`` and ``amx_bf16``), as PyTorch detects them."""
    probe = getattr(getattr(torch, "cpu", None), "get_capabilities", None)  # torch >= 2.4
    try:
        caps = probe() if probe is not None else {}
    except RuntimeError:
        caps = {}
    return bool(caps.get("amx_tile") and caps.get("amx_bf16"))


def _bf16_on_amx(device: torch.device, precision: Optional[str]) -> bool:
    """Whether a run in ``precision`` (resolved) on ``device`` is bf16 on a CPU with AMX: where both ``auto``
    rules, compile and channels_last, measured their gains."""
    return device.type == "cpu" and precision == "bf16" and cpu_has_amx()


def auto_compile(
    device: torch.device, precision: Optional[str] = None, steps: Optional[int] = None
) -> Tuple[bool, str]:
    """What ``compile=auto`` does on ``device``, and why: compile for a detection training run of ``steps``
    steps in ``precision`` (resolved, not ``auto``) where it paid for itself in the benchmarks, that is bf16
    on a CPU with AMX over at least :data:`AUTO_COMPILE_MIN_STEPS` steps; otherwise eagerly
    (``precision`` and ``steps`` None: inference, or a run the benchmarks did not cover)."""
    if steps is not None and _bf16_on_amx(device, precision):
        if steps >= AUTO_COMPILE_MIN_STEPS:
            return True, (
                f"bf16 training of {steps:,} steps on a CPU with AMX, where the compiled backbone paid for its "
                "compile time (docs/benchmarks.md)"
            )
        return False, (
            f"compile=auto compiles bf16 training on a CPU with AMX from {AUTO_COMPILE_MIN_STEPS:,} steps on; "
            f"this run has {steps:,}, too few to be sure of earning back a minute or more of compiling"
        )
    return False, AUTO_RULE


def compile_decision(
    setting: object,
    device: torch.device,
    *,
    key: str = "compile",
    precision: Optional[str] = None,
    steps: Optional[int] = None,
) -> Tuple[bool, str]:
    """``(whether to torch.compile, why)``: ``true`` / ``false`` as given (why ``""``); ``auto`` as
    :func:`auto_compile` decides for ``device``, ``precision`` and ``steps``."""
    setting = compile_setting(setting, key)
    if setting != "auto":
        return setting == "true", ""
    return auto_compile(device, precision, steps)


def resolve_compile(
    setting: object,
    device: torch.device,
    *,
    key: str = "compile",
    precision: Optional[str] = None,
    steps: Optional[int] = None,
) -> bool:
    """Whether to ``torch.compile``: ``true`` / ``false`` as given; ``auto`` where a benchmark measured a net gain
    (:func:`auto_compile`: bf16 detection training runs of :data:`AUTO_COMPILE_MIN_STEPS` steps or more on CPUs
    with AMX; eager elsewhere on CPUs, and on CUDA until ``tools/gpu_check.sh`` has measured it)."""
    return compile_decision(setting, device, key=key, precision=precision, steps=steps)[0]


def channels_last_decision(setting: object, device: torch.device, precision: str) -> Tuple[bool, str]:
    """``(whether to train on channels_last activations, why)`` for ``solver.channels_last``: ``true`` / ``false``
    as given (why ``""``); ``auto`` where the benchmarks measured it faster, that is training in ``precision``
    (resolved) ``bf16`` on a CPU with AMX. There the bf16 R101-FPN step at 800x1067 took 2.28 s on channels_last
    against 4.22 s in NCHW (docs/benchmarks.md); with oneDNN limited to AVX-512-BF16 (as on CPUs without AMX)
    the two were level, on an AVX2-only CPU the fp32 step was 1.1-1.2x slower on channels_last, and CUDA is
    not measured yet. Detection and classification training follow the same rule (measured on detection)."""
    setting = channels_last_setting(setting, "solver.channels_last")
    if setting != "auto":
        return setting == "true", ""
    if _bf16_on_amx(device, precision):
        return True, (
            "solver.channels_last=auto: channels_last activations, as for every bf16 training run on a CPU with AMX "
            "(1.8x faster R101-FPN steps there, docs/benchmarks.md)"
        )
    return False, (
        f"solver.channels_last=auto: NCHW activations ({precision} on {device.type}); auto turns channels_last on "
        "for bf16 training on CPUs with AMX only, where the benchmarks measured it faster"
    )
