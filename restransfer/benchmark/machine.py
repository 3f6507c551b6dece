"""What a benchmark ran on: the CPU's model and vector features, the GPU, torch, threads and the load.

CPU speed differs 2-4x between CPUs with the same core count depending on their vector units, so every
result records them: AVX2, AVX-512 (``avx512f``), AVX-512-BF16 (native bf16 dot products) and AMX
(``amx_tile`` with ``amx_bf16``: bf16 matrix tiles), read from the ``flags`` line of ``/proc/cpuinfo``.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Dict, List, Optional

import torch

__all__ = ["CPU_FEATURES", "cpu_info", "load_average", "machine_info", "machine_description"]

# feature name in results -> the /proc/cpuinfo flags that must all be present
CPU_FEATURES = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_tile", "amx_bf16"),
}


def cpu_info(cpuinfo_text: Optional[str] = None) -> Dict[str, Any]:
    """The CPU's model name and features from ``/proc/cpuinfo`` (or ``cpuinfo_text``, its contents).

    Returns ``{"model_name": str, "features": {"avx2": bool, "avx512": bool, "avx512_bf16": bool,
    "amx": bool}, "flags": [the CPU_FEATURES flags present]}``; the first processor's entry is read
    (the kernel lists the same flags for every core). Without ``/proc/cpuinfo`` (not Linux) the name is
    ``platform.processor()`` and every feature is ``None``: unknown, not absent.
    """
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo_text = f.read()
        except OSError:
            return {
                "model_name": platform.processor() or platform.machine() or "CPU",
                "features": {k: None for k in CPU_FEATURES},
                "flags": [],
            }
    name, flags = "", None
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and flags is None:  # "Features" on ARM
            flags = set(value.split())
        if not line.strip() and name and flags is not None:  # the end of the first processor's entry
            break
    flags = flags or set()
    wanted = sorted({f for names in CPU_FEATURES.values() for f in names})
    return {
        "model_name": name or platform.processor() or platform.machine() or "CPU",
        "features": {k: all(f in flags for f in names) for k, names in CPU_FEATURES.items()},
        "flags": [f for f in wanted if f in flags],
    }


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages (``uptime``'s), or ``None`` where the OS has none."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device) -> Dict[str, Any]:
    """Everything about the machine a result depends on: the CPU (:func:`cpu_info`), its logical cores and
    those this process may use, torch's version, its CPU kernel level and thread count, and the GPU's
    name on CUDA."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: Dict[str, Any] = {
        "cpu": cpu_info(),
        "logical_cores": os.cpu_count(),
        "cpus_available": cpus,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "gpu": None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _feature_text(features: Dict[str, Optional[bool]]) -> str:
    if all(v is None for v in features.values()):
        return "CPU features unknown"
    names = {"avx2": "AVX2", "avx512": "AVX-512", "avx512_bf16": "AVX-512-BF16", "amx": "AMX"}
    have = [names[k] for k, v in features.items() if v]
    return ", ".join(have) if have else "no AVX2"


def machine_description(device: torch.device) -> str:
    """One line: the GPU's name, or the CPU model, core count, vector features and torch version."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = cpu_info()
    return (
        f"{cpu['model_name']}, {os.cpu_count()} logical cores ({_feature_text(cpu['features'])}), "
        f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"
    )
