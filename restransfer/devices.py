"""Device and precision policy: which device ``"auto"`` means, which precision ``"auto"`` means, whether a
device can run a precision, and the autocast context that applies one.

Every module that turns a ``device`` or ``precision`` setting into torch objects goes through here, so
that "auto" and "fp16 needs a GPU" mean the same in training, evaluation, the Predictor and the benchmark.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import ContextManager

import torch

from .errors import ConfigError, DeviceError
from .yaml_config import COMPILE_SETTINGS, compile_setting  # re-exported: checked where configs are read

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
    "AUTO_RULE",
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
# time paid back over a run of that length (docs/benchmarks.md, "torch.compile in the toolkit"). On CPUs no run
# did: a compiled training step ran at 1.02x the eager step's speed (the demo's bf16 step, 1.34 s against 1.36 s,
# within the spread; 134 s to compile, paid back after 5,100 steps, the demo runs 1,150) and at 0.93x (R18-FPN
# fp32 at 256 px, 5.64 s against 5.26 s; 86 s to compile), and compiled inference was
# slower than test.optimize's fused layers (R50-FPN at 512 px: 5.2 s against 4.4 s per image, 44 s to compile)
# but at the demo's 128 px, where 75 ms against 83 ms per image pays back 20-53 s of compiling after several
# thousand images. CUDA is not measured yet: tools/gpu_check.sh runs the benchmark there.
AUTO_RULE = "compile=auto runs eagerly: no benchmark has measured a net gain for torch.compile on this device yet"


def resolve_compile(setting: object, device: torch.device, *, key: str = "compile") -> bool:
    """Whether to ``torch.compile``: ``true`` / ``false`` as given; ``auto`` where a benchmark measured a net gain,
    which is nowhere so far (see :data:`AUTO_RULE`): eager on CPUs, where compiling never paid for itself, and on
    CUDA until ``tools/gpu_check.sh`` has measured it."""
    setting = compile_setting(setting, key)
    if setting != "auto":
        return setting == "true"
    return False
