"""The toolkit's input-error types: problems the user fixes, whose messages say what is wrong and where.

Every tool prints these as one line, ``error: <message>``, and exits with status 2 (``cli.run_tool``);
any other exception is a bug in the toolkit (exit status 1, ``--debug`` shows the traceback). Each type
also derives from the builtin a caller would catch without knowing the toolkit (``ValueError`` for bad
values, ``RuntimeError`` for states), so ``except ValueError`` keeps working around a config error.

A message names the thing that is wrong (file, line, key, image index) and what to do about it.
"""

from __future__ import annotations

import sys

__all__ = [
    "InputError",
    "ConfigError",
    "DataError",
    "WeightsError",
    "CheckpointError",
    "OutputDirLocked",
    "NonFiniteLossError",
    "TrainingOutOfMemory",
    "DeviceError",
    "MissingDependency",
    "is_out_of_memory",
]


class InputError(Exception):
    """Base of every input problem: the user's to fix, reported without a traceback."""


class ConfigError(InputError, ValueError):
    """A configuration file or override is invalid; the message says where and what to do."""


class DataError(InputError, ValueError):
    """A dataset, annotation, image list, results or submission file is unusable; the message names the file
    (and line, annotation or image id where it has one)."""


class WeightsError(InputError, RuntimeError):
    """A weights file or source cannot be used; the message says which and what to do."""


class CheckpointError(WeightsError):
    """A checkpoint file is damaged or not a checkpoint; the message names the file."""


class OutputDirLocked(InputError, RuntimeError):
    """Another live run owns the output folder; the message names it and says what to do."""


class NonFiniteLossError(InputError, FloatingPointError):
    """The loss became NaN or infinite; the message names the iteration, the loss terms and the last good
    checkpoint."""


class TrainingOutOfMemory(InputError, RuntimeError):
    """A training or evaluation step ran out of memory; the message names the setting to lower."""


class DeviceError(InputError, RuntimeError):
    """The requested device or precision is not available here (``device=cuda`` without a GPU, ...)."""


class MissingDependency(InputError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: the one rule every caller uses (tools' exit codes, training's
    :class:`TrainingOutOfMemory`). ``MemoryError``, ``torch.OutOfMemoryError`` (CUDA), and the RuntimeErrors
    CPU allocators and some CUDA paths raise ("can't allocate memory", "out of memory")."""
    if isinstance(e, MemoryError):
        return True
    # torch is looked up, not imported: this module stays importable without it
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    if isinstance(oom, type) and isinstance(e, oom):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())
