"""Reading untrusted files: weights, checkpoints and pickles never run code.

* :func:`safe_load_pickle`: plain pickles (MSRA/Caffe ``R-101.pkl``) through an unpickler that resolves only
  an exact allow-list of (module, name) pairs: containers, numbers, strings and numpy arrays.
* :func:`load_torch_file`: torch checkpoints through ``torch.load(weights_only=True)``, with errors that name
  the file and say what is wrong (empty, cut short, not a checkpoint, holding objects other than tensors).
* :func:`tensors_checksum` / :func:`verify_checksum`: our checkpoints carry a SHA-256 of their tensors under
  ``"checksum"``, so a damaged payload (a flipped byte) is detected on load rather than trained on.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Tuple

import numpy as np
import torch

try:  # numpy 2 moved the array pickling helpers to numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

from .errors import CheckpointError, WeightsError

__all__ = ["WeightsError", "CheckpointError", "safe_load_pickle", "load_torch_file", "check_not_empty", "tensors_checksum",
           "verify_checksum", "CHECKSUM_KEY"]

CHECKSUM_KEY = "checksum"




def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as python-2 style pickles use it (``encode(str, "latin1")`` for a byte string),
    and nothing else: other codecs and argument types are refused."""
    if not isinstance(obj, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1" or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got encoding "
                                     f"{encoding!r} for a {type(obj).__name__}")
    return obj.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits plain containers, numbers, strings and numpy arrays; refuses everything else.

    ``find_class`` is what both ``GLOBAL`` and ``STACK_GLOBAL`` go through. Only the exact (module, name)
    pairs below resolve; a name with a dot is refused outright, since pickle protocol 4 resolves dotted
    names attribute by attribute, which reaches anything a module can see.
    """

    _ALLOWED = frozenset({
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 array pickles
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
        ("__builtin__", "set"),  # the same names in protocol-2 pickles
        ("__builtin__", "frozenset"),
        ("__builtin__", "slice"),
    })

    def __init__(self, file, path: str, max_array_bytes: int) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path
        self._max_array_bytes = max_array_bytes

    def _check_array(self, shape: Any, dtype: Any) -> None:
        """Refuse an array that would be allocated empty, before its data, at more than the file's size.

        Pickled arrays are built as ``_reconstruct(ndarray, (0,), ...)`` and then filled from bytes in the
        file, so their memory follows the file size. A shape given to ``_reconstruct`` or to ``ndarray()``
        itself is allocated at once: 200 bytes could otherwise claim gigabytes."""
        try:
            dims = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
            nbytes = math.prod(dims) * np.dtype(dtype).itemsize
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{self._path}: malformed array declaration in the pickle ({e})") from None
        if nbytes > self._max_array_bytes:
            raise WeightsError(f"{self._path}: the pickle declares an array of shape {dims} ({nbytes} bytes) before "
                               f"its data, more than the file's {self._max_array_bytes} bytes can hold; refused "
                               "without allocating it (the file is damaged or hostile)")

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Any:
        self._check_array(shape, dtype)
        return _np_reconstruct(np.ndarray, shape, dtype)

    def _ndarray(self, shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> np.ndarray:
        self._check_array(shape, dtype)
        return np.ndarray(shape, dtype, *args, **kwargs)

    def find_class(self, module: str, name: str) -> Any:
        if "." not in name:
            if (module, name) == ("_codecs", "encode"):  # how python-2 style pickles carry byte strings
                return _latin1_encode
            if name == "_reconstruct" and (module, name) in self._ALLOWED:
                return self._reconstruct  # the ndarray type it is given is always numpy's own (below)
            if (module, name) == ("numpy", "ndarray"):
                return self._ndarray
            if (module, name) in self._ALLOWED:
                return super().find_class(module, name)
        raise WeightsError(
            f"{self._path}: the pickle refers to {module}.{name}, which is not allowed: only plain "
            "containers and numpy arrays are loaded from pickles (they can otherwise run arbitrary code). "
            "Re-save it as a dict of numpy arrays (weights also as a torch state dict).")


def safe_load_pickle(path: os.PathLike | str) -> Any:
    """Unpickle ``path`` admitting only plain containers and numpy arrays (raises :class:`WeightsError`); an
    array declared larger than the file, before its data, is refused without being allocated."""
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, str(path), max_array_bytes=os.fstat(f.fileno()).st_size).load()
        except WeightsError:
            raise
        except Exception as e:  # truncated, not a pickle at all, or a refused _codecs.encode call
            raise WeightsError(f"{path}: cannot read as a pickle of numpy arrays: {e}") from None


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def check_not_empty(path: Path) -> int:
    """The size of ``path``; :class:`CheckpointError` when it is missing or empty."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"file not found: {path}") from None
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); it was never written completely. Delete it, "
                              "or point to another file")
    return size


def load_torch_file(path: os.PathLike | str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, raising :class:`CheckpointError` with a message that
    names the file and the damage (empty, cut short, not a torch checkpoint, objects other than tensors)."""
    path = Path(path)
    size = check_not_empty(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a torch checkpoint (no zip archive found: {size} bytes of something "
                              "else, or a file cut short). Delete it, or point to another checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError, ... on damage
        text = str(e)
        refused = _UNSUPPORTED_GLOBAL.search(text)
        if refused:
            raise CheckpointError(
                f"{path}: refused to load: it holds {refused.group(1)}, which is not a tensor or a plain "
                "container (loading it could run code). Save plain tensors, e.g. "
                "torch.save(model.state_dict(), path)") from None
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if text.strip() else type(e).__name__
        raise CheckpointError(f"{path}: the checkpoint is damaged and cannot be read ({detail[:200]}). Delete it, "
                              "or point to another checkpoint") from None


def _tensors(obj: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    if isinstance(obj, torch.Tensor) or isinstance(obj, np.ndarray):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            if not (prefix == "" and k == CHECKSUM_KEY):
                yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def tensors_checksum(obj: Any) -> str:
    """SHA-256 (hex) over every tensor and numpy array in a nested dict/list, with their key paths, dtypes and
    shapes; a top-level ``"checksum"`` entry is left out."""
    h = hashlib.sha256()
    for key, t in _tensors(obj):
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        else:
            data = np.ascontiguousarray(t).reshape(-1).view(np.uint8) if t.size and t.dtype.kind != "O" else b""
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(data)
    return h.hexdigest()


def verify_checksum(obj: Any, path: os.PathLike | str) -> None:
    """Raise :class:`CheckpointError` when ``obj`` carries a ``"checksum"`` that its tensors do not match."""
    if not isinstance(obj, Mapping) or CHECKSUM_KEY not in obj:
        return
    if tensors_checksum(obj) != obj[CHECKSUM_KEY]:
        raise CheckpointError(f"{path}: checksum mismatch: the file's tensors were changed or damaged after it "
                              "was written. Delete it, or point to another checkpoint")
