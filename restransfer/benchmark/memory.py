"""Peak memory of a step, measured in a fresh process of its own.

Measured inside a process that has already run other models (or the same model's warm-up), the RSS
growth of one step says little: memory the allocator already holds is reused without showing. So each
model gets its own process (:func:`in_fresh_process`, a spawned interpreter: nothing inherited), which
builds the model, its optimizer and inputs (the *setup*), and :func:`measure_peak` then records:

* on CPU, ``VmHWM`` (the kernel's high-water mark of the resident set) minus ``VmRSS`` right after setup.
  Before reading that baseline, freed memory goes back to the OS (``gc`` and glibc's ``malloc_trim``)
  and the high-water mark is reset to the current RSS (writing ``5`` to ``/proc/self/clear_refs``), so
  the figure is what the steps add to a process that holds the model, optimizer and inputs;
* on CUDA, ``torch.cuda.max_memory_allocated`` minus the memory allocated after setup (the caching
  allocator's reserve, cuDNN workspaces held by the allocator included, the CUDA context not).

``peak`` covers the warm-up steps (the first step's allocations, and for a compiled model compilation
itself) and the measured steps; ``steady_peak`` the measured steps only (the high-water mark is reset
after warm-up; what warm-up left held, such as compiled code or the allocator's caches, counts in both).
Where the high-water mark cannot be reset (``hwm_reset`` false: not Linux, or
``clear_refs`` not writable), the peak counts from the start of the process and can only be larger.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import multiprocessing
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional

import torch

__all__ = ["MemoryPeak", "MEMORY_DEFINITION", "measure_peak", "in_fresh_process", "status_bytes", "reset_peak_rss"]

MEMORY_DEFINITION = (
    "peak memory: each model in a fresh process of its own; CPU: VmHWM (peak resident set) minus VmRSS once the "
    "model, optimizer and inputs exist (high-water mark reset there); CUDA: max_memory_allocated minus the "
    "memory allocated then. 'peak' covers warm-up (first step, compilation) and the measured steps, 'steady' "
    "the measured steps only (what warm-up left held, such as compiled code or allocator caches, counts in both)"
)


@dataclass
class MemoryPeak:
    """What :func:`measure_peak` found, in MiB (2**20 bytes)."""

    device: str
    peak_mb: float  # warm-up and measured steps, above the baseline
    steady_peak_mb: float  # the measured steps only, above the baseline
    baseline_mb: float  # RSS (CPU) or allocated memory (CUDA) after setup
    hwm_reset: bool  # CPU: the high-water mark could be reset to the baseline (else it counts from process start)
    warmup_steps: int
    steps: int


def status_bytes(field: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``...) in bytes, ``None`` where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); ``False`` where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    """Free unreachable objects and hand the C heap's free pages back to the OS, so that the RSS counts
    what is held, not what was held once."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only
            libc.malloc_trim(0)
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    hwm = status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource  # not Linux: the process peak, which the OS reports in KiB (bytes on macOS)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_peak(step: Callable[[], Any], device: torch.device, warmup: int = 1, steps: int = 1) -> MemoryPeak:
    """Run ``step`` ``warmup`` times, then ``steps`` times, and return the peaks above the memory held
    now (see the module docstring). Call it once the setup is done; the process should be fresh."""
    device = torch.device(device)
    mb = 2.0**20
    _release_freed_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        torch.cuda.synchronize(device)
        warm = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        steady = torch.cuda.max_memory_allocated(device)
        return MemoryPeak(
            str(device),
            peak_mb=(max(warm, steady) - base) / mb,
            steady_peak_mb=(steady - base) / mb,
            baseline_mb=base / mb,
            hwm_reset=True,
            warmup_steps=warmup,
            steps=steps,
        )
    reset = reset_peak_rss()
    base = status_bytes("VmRSS") or 0
    for _ in range(warmup):
        step()
    warm = _peak_rss_bytes()
    reset_after_warmup = reset and reset_peak_rss()
    for _ in range(steps):
        step()
    steady = _peak_rss_bytes()
    return MemoryPeak(
        str(device),
        peak_mb=(max(warm, steady) - base) / mb,
        steady_peak_mb=(steady - base) / mb if reset_after_warmup else (max(warm, steady) - base) / mb,
        baseline_mb=base / mb,
        hwm_reset=reset,
        warmup_steps=warmup,
        steps=steps,
    )


def _child(conn: Connection, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
    else:
        conn.send(("ok", result, None))
    finally:
        conn.close()


def in_fresh_process(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a new Python interpreter (multiprocessing's ``spawn``: it inherits no
    memory, threads or allocator state from this one); its result, or a ``RuntimeError`` carrying the
    child's error and traceback. ``fn``, the arguments and the result must pickle; ``fn`` must be
    importable by its module name."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
    proc.start()
    send.close()
    try:
        status, value, tb = receive.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(
            f"the fresh process measuring {getattr(fn, '__name__', fn)} ended without a result "
            f"(exit code {proc.exitcode}; killed for memory?)"
        ) from None
    finally:
        receive.close()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"in the fresh process measuring {getattr(fn, '__name__', fn)}: {value}\n{tb}")
    return value
