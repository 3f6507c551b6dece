"""The one writer of ``metrics.json`` (and of the other metric and result jsons): strict JSON, all or nothing.

Every protocol (COCO, ImageNet-DET, localization, classification testing, ...) writes its metrics through
:func:`write_metrics`: percentages keep their full float precision (tables printed for people round, the
files do not), and a value that is undefined (NaN: no ground truth to measure against) or infinite becomes
JSON ``null``, so every file parses with any JSON reader. numpy numbers and arrays become plain JSON numbers
and lists.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from ..fileio import atomic_open

__all__ = ["json_safe", "write_json", "write_metrics"]


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None, numpy scalars and arrays as Python numbers and lists, tuples
    as lists (recursively through dicts and lists); everything else as it is."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(obj: Any, path: Union[str, os.PathLike], indent: Union[int, None] = None) -> Path:
    """Write ``obj`` as strict JSON to ``path`` all or nothing (a non-finite float is an error here: use
    :func:`write_metrics` for values that may be undefined)."""
    path = Path(path)
    with atomic_open(path) as f:
        json.dump(obj, f, allow_nan=False, indent=indent)
        if indent is not None:
            f.write("\n")
    return path


def write_metrics(metrics: Mapping[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write ``metrics`` to ``path`` as strict JSON, NaN (undefined) and infinities as ``null``, numbers at full
    precision, indented for people; all or nothing."""
    return write_json(json_safe(metrics), path, indent=2)
