"""Reading untrusted files: weights, checkpoints and pickles never run code, hang or flood memory.

* :func:`safe_load_pickle`: plain pickles (MSRA/Caffe ``R-101.pkl``) through an unpickler that resolves only
  an exact allow-list of (module, name) pairs: containers, numbers, strings and numpy arrays.
* :func:`load_torch_file`: the one verified load of a torch file. Before anything is decompressed, the zip's
  members are checked against the file (sizes, local headers against the central directory, no overlaps,
  compressed members within :data:`MAX_INFLATION` times the file's size and :data:`MAX_INFLATED_BYTES`);
  then every member's CRC-32; then ``torch.load(weights_only=True)``; then :func:`verify_checksum`.
  Errors name the file and say what is wrong (:class:`CheckpointError`).
* :func:`payload_checksum` / :func:`verify_checksum`: our checkpoints carry under ``"checksum"`` a SHA-256
  of their whole payload (tensors and every other entry: iteration, optimizer, scheduler, RNG, config, ...),
  computed by one bounded walk (:data:`MAX_DEPTH`, :data:`MAX_NODES`; shared containers hashed once, a
  cycle refused). Files written before it carry a SHA-256 of their tensors only (:func:`tensors_checksum`)
  or no checksum; they load with a warning saying what could not be verified.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, List, Mapping, Optional, Set, Tuple

import numpy as np
import torch

try:  # numpy 2 moved the array pickling helpers to numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

from .errors import CheckpointError, WeightsError

logger = logging.getLogger(__name__)

__all__ = [
    "WeightsError",
    "CheckpointError",
    "safe_load_pickle",
    "load_torch_file",
    "check_not_empty",
    "check_torch_archive",
    "payload_checksum",
    "tensors_checksum",
    "verify_checksum",
    "CHECKSUM_KEY",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_INFLATION",
    "MAX_INFLATED_BYTES",
]

CHECKSUM_KEY = "checksum"
# the value of a whole-payload checksum; a legacy one (tensors only) is 64 bare hex digits
PAYLOAD_CHECKSUM_PREFIX = "payload-sha256-v2:"

# Limits of a verified load (module-wide defaults; load_torch_file takes each as an argument). Real
# checkpoints nest under 10 levels and hold a few thousand values besides their tensors.
MAX_DEPTH = 32  # containers inside containers
MAX_NODES = 1_000_000  # values and containers in all (a tensor counts one)
# torch writes every record stored (uncompressed); a compressed member may declare, all of them together,
# at most MAX_INFLATION times the file's size and never more than MAX_INFLATED_BYTES
MAX_INFLATION = 4
MAX_INFLATED_BYTES = 8 << 30


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as python-2 style pickles use it (``encode(str, "latin1")`` for a byte string),
    and nothing else: other codecs and argument types are refused."""
    if not isinstance(obj, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1" or errors != "strict":
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed as encode(str, 'latin1'), got encoding "
            f"{encoding!r} for a {type(obj).__name__}"
        )
    return obj.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits plain containers, numbers, strings and numpy arrays; refuses everything else.

    ``find_class`` is what both ``GLOBAL`` and ``STACK_GLOBAL`` go through. Only the exact (module, name)
    pairs below resolve; a name with a dot is refused outright, since pickle protocol 4 resolves dotted
    names attribute by attribute, which reaches anything a module can see.
    """

    _ALLOWED = frozenset(
        {
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
        }
    )

    def __init__(self, file: BinaryIO, path: str, max_array_bytes: int) -> None:
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
            raise WeightsError(
                f"{self._path}: the pickle declares an array of shape {dims} ({nbytes} bytes) before "
                f"its data, more than the file's {self._max_array_bytes} bytes can hold; refused "
                "without allocating it (the file is damaged or hostile)"
            )

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
            "Re-save it as a dict of numpy arrays (weights also as a torch state dict)."
        )


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
_DELETE = "Delete it, or point to another checkpoint"


def check_not_empty(path: Path) -> int:
    """The size of ``path``; :class:`CheckpointError` when it is missing or empty."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"file not found: {path}") from None
    if size == 0:
        raise CheckpointError(
            f"{path}: the file is empty (0 bytes); it was never written completely. Delete it, or point to another file"
        )
    return size


# ------------------------------------------------------------------------------------ the zip archive

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # signature .. extra length: 30 bytes
_LOCAL_SIGNATURE = 0x04034B50
_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
_ZIP64_EXTRA = 0x0001


def _zip64_sizes(extra: bytes) -> Optional[Tuple[int, int]]:
    """(uncompressed, compressed) from a local header's zip64 extra field, if it has one."""
    i = 0
    while i + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, i)
        if tag == _ZIP64_EXTRA and n >= 16:
            return struct.unpack_from("<QQ", extra, i + 4)
        i += 4 + n
    return None


def _check_member(f: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Compare a member's local header (and data descriptor) with its central directory entry; returns the
    offset where its data ends. Raises ``ValueError`` saying what disagrees."""
    f.seek(info.header_offset)
    head = f.read(_LOCAL_HEADER.size)
    if len(head) < _LOCAL_HEADER.size or _LOCAL_HEADER.unpack(head)[0] != _LOCAL_SIGNATURE:
        raise ValueError("no local header where the central directory places it")
    _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = _LOCAL_HEADER.unpack(head)
    name = f.read(name_len)
    extra = f.read(extra_len)
    if name.decode("utf-8" if flags & 0x800 else "cp437", "replace") != info.orig_filename:
        raise ValueError(f"its local header names it {name!r}")
    if method != info.compress_type:
        raise ValueError(
            f"its local header says compression method {method}, the central directory {info.compress_type}"
        )
    data_end = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
    want = (info.CRC, info.compress_size, info.file_size)
    if 0xFFFFFFFF in (csize, usize):
        usize, csize = _zip64_sizes(extra) or (usize, csize)
    # with flag bit 3 (torch's writer sets it) the local header may leave CRC and sizes zero
    if (crc, csize, usize) != want and not (flags & 0x08 and (crc, csize, usize) == (0, 0, 0)):
        raise ValueError(
            f"its local header says CRC {crc:08x}, {csize} bytes stored, {usize} uncompressed; the "
            f"central directory {info.CRC:08x}, {info.compress_size}, {info.file_size}"
        )
    if not flags & 0x08:
        return data_end
    # then CRC and sizes follow the data, in a descriptor with or without signature, 32- or 64-bit sizes
    f.seek(data_end)
    tail = f.read(24)
    if tail[:4] == _DESCRIPTOR_SIGNATURE:
        tail = tail[4:]
    layouts = [struct.unpack_from(fmt, tail) for fmt in ("<III", "<IQQ") if len(tail) >= struct.calcsize(fmt)]
    if want not in [(c, cs, us) for c, cs, us in layouts]:
        raise ValueError(
            f"its data descriptor disagrees with the central directory ({info.CRC:08x}, "
            f"{info.compress_size} bytes stored, {info.file_size} uncompressed)"
        )
    return data_end


def check_torch_archive(
    path: os.PathLike | str,
    *,
    crc: bool = True,
    max_inflation: Optional[float] = None,
    max_inflated_bytes: Optional[int] = None,
) -> None:
    """Check a zip checkpoint's members before anything is decompressed, then (``crc=True``) their CRC-32.

    Refused, as :class:`CheckpointError` naming the file and the member: compressed members that declare,
    all together, more than ``max_inflation`` times the file's size or more than ``max_inflated_bytes``
    uncompressed (defaults :data:`MAX_INFLATION`, :data:`MAX_INFLATED_BYTES`; torch itself compresses
    nothing); a stored member whose two sizes differ; a local header or data descriptor that disagrees with
    the central directory; members whose data overlap or run past the end of the file; duplicate names;
    encrypted members; a CRC mismatch (read in bounded chunks: memory stays small whatever the sizes).
    """
    path = Path(path)
    ratio = MAX_INFLATION if max_inflation is None else max_inflation
    cap = MAX_INFLATED_BYTES if max_inflated_bytes is None else max_inflated_bytes
    member = ""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
            seen: Set[str] = set()
            for info in infos:
                if info.filename in seen:
                    raise CheckpointError(
                        f"{path}: the archive holds member {info.filename!r} more than once. {_DELETE}"
                    )
                seen.add(info.filename)
            limit = min(cap, ratio * size)
            inflated = 0
            spans = []
            for info in infos:
                member = info.filename
                if info.flag_bits & 0x1:
                    raise ValueError("it is encrypted")
                if info.compress_type != zipfile.ZIP_STORED:
                    inflated += info.file_size
                    if inflated > limit:
                        raise CheckpointError(
                            f"{path}: zip member {member!r} is compressed and declares {info.file_size} bytes "
                            f"uncompressed ({inflated} for the compressed members so far), more than "
                            f"{int(limit)} (at most {ratio:g}x the file's {size} bytes, and "
                            f"{cap} bytes in all); refused before decompressing (torch writes checkpoint "
                            f"records uncompressed). {_DELETE}"
                        )
                elif info.file_size != info.compress_size:
                    raise ValueError(
                        f"it is stored uncompressed but declares {info.file_size} bytes and holds {info.compress_size}"
                    )
                end = _check_member(f, info)
                if end > size:
                    raise ValueError(f"its data would end at byte {end}, past the end of the file ({size} bytes)")
                spans.append((info.header_offset, end, member))
            spans.sort()
            for (_, end, first), (start, _, second) in itertools.pairwise(spans):
                if start < end:
                    member = second
                    raise ValueError(f"its data overlap those of member {first!r} (one record read as two)")
            if crc:
                for info in infos:
                    member = info.filename
                    with zf.open(info) as m:
                        while m.read(1 << 20):
                            pass  # zipfile compares the CRC-32 at the end of the member
    except CheckpointError:
        raise
    except zipfile.BadZipFile as e:
        if "CRC" in str(e):
            raise CheckpointError(
                f"{path}: checksum mismatch: zip member {member!r} fails its CRC-32 check (the "
                f"file was changed or damaged after it was written). {_DELETE}"
            ) from None
        raise CheckpointError(f"{path}: not a readable zip archive ({e}). {_DELETE}") from None
    except ValueError as e:  # what _check_member and the checks above found
        raise CheckpointError(f"{path}: zip member {member!r} is malformed: {e}. {_DELETE}") from None
    except Exception as e:  # zipfile's parser on hostile bytes: struct.error, OverflowError, OSError, ...
        raise CheckpointError(f"{path}: not a readable zip archive ({type(e).__name__}: {e}). {_DELETE}") from None


# ------------------------------------------------------------------------------------------ loading


def load_torch_file(
    path: os.PathLike | str,
    *,
    max_depth: Optional[int] = None,
    max_nodes: Optional[int] = None,
    max_inflation: Optional[float] = None,
    max_inflated_bytes: Optional[int] = None,
) -> Any:
    """The one verified load of a torch file: :func:`check_torch_archive` (member sizes before any
    decompression, then every member's CRC), ``torch.load(path, weights_only=True)`` on CPU, then
    :func:`verify_checksum` (a bounded walk of what was loaded and its ``"checksum"`` entry, if any).

    Raises :class:`CheckpointError` naming the file and the damage (empty, cut short, not a torch
    checkpoint, a CRC or checksum mismatch, a zip bomb, a structure too deep, too large or containing
    itself, objects other than tensors and plain containers). The limits default to the module's
    :data:`MAX_DEPTH`, :data:`MAX_NODES`, :data:`MAX_INFLATION` and :data:`MAX_INFLATED_BYTES`.
    """
    path = Path(path)
    size = check_not_empty(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a torch checkpoint (no zip archive found: {size} bytes of something "
            "else, or a file cut short). Delete it, or point to another checkpoint"
        )
    check_torch_archive(path, max_inflation=max_inflation, max_inflated_bytes=max_inflated_bytes)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError, ... on damage
        text = str(e)
        refused = _UNSUPPORTED_GLOBAL.search(text)
        if refused:
            raise CheckpointError(
                f"{path}: refused to load: it holds {refused.group(1)}, which is not a tensor or a plain "
                "container (loading it could run code). Save plain tensors, e.g. "
                "torch.save(model.state_dict(), path)"
            ) from None
        detail = (
            text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if text.strip() else type(e).__name__
        )
        raise CheckpointError(
            f"{path}: the checkpoint is damaged and cannot be read ({detail[:200]}). Delete it, "
            "or point to another checkpoint"
        ) from None
    verify_checksum(obj, path, max_depth=max_depth, max_nodes=max_nodes)
    return obj


# ------------------------------------------------------------------------- the payload's checksum


class _Refused(Exception):
    """A structure the walk does not take (too deep, too large, containing itself, not digestible)."""


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)  # linear in size, unlike str(n)


_SCALAR_TAGS = {
    type(None): b"N",
    bool: b"B",
    int: b"I",
    float: b"F",
    complex: b"C",
    str: b"S",
    bytes: b"Y",
    bytearray: b"y",
}
_CONTAINER_TAGS = ((dict, b"D"), (list, b"L"), (tuple, b"U"), (set, b"E"), (frozenset, b"E"))
_ATOM_TYPES = (torch.dtype, torch.device, torch.layout, torch.memory_format, torch.qscheme, np.dtype)


class _Walk:
    """One pass over a loaded payload, bounded in depth and in the number of values, that (with ``digest``)
    feeds a canonical encoding of it into a SHA-256.

    The encoding: a type tag and the value of every scalar; every container's type, length and items in
    their order (dict keys included); every tensor's dtype, shape, stride, storage offset and storage, whose
    bytes are hashed at its first use and referenced by index after (torch.save keeps storages shared, so
    tied weights cost their size once); numpy arrays by dtype, shape and bytes. A container met a second
    time (pickle keeps shared objects shared) is encoded as a reference to its first visit, so a structure
    that shares itself costs its size, not its number of paths; a container met again inside itself is a
    cycle and refused. The limits hold for the structure read as a tree (a shared container counts its
    values and its depth at every place it appears, from what its first visit measured), so whatever walks a
    loaded checkpoint as plain nested containers stays within them too. Subclasses add their qualified name to
    the tag (``OrderedDict`` differs from
    ``dict``) and their attributes (a state dict's ``_metadata``). Set elements are encoded apart and
    sorted, so their iteration order does not matter.
    """

    def __init__(self, digest: bool, max_depth: int, max_nodes: int) -> None:
        self.sha = hashlib.sha256() if digest else None
        self.out: Optional[List[bytes]] = None  # set while encoding a set element apart
        self.max_depth, self.max_nodes = max_depth, max_nodes
        self.nodes = 0  # values so far, counting every path to a shared container
        self.deepest = 0  # deepest container level reached so far, the same way
        # id(container) -> [index of its first visit, values and levels in it as a tree]
        self.first: Dict[int, List[int]] = {}
        self.open: Set[int] = set()  # ids of the containers being walked (a cycle leads back to one)
        self.storages: Dict[Tuple[str, int], int] = {}
        self.where: List[str] = []  # key path, for messages

    def at(self) -> str:
        keys = self.where if len(self.where) <= 12 else self.where[:6] + ["..."] + self.where[-5:]
        return "/" + "/".join(keys)

    def emit(self, *parts: bytes) -> None:
        if self.out is not None:
            self.out.extend(parts)
        elif self.sha is not None:
            for p in parts:
                self.sha.update(p)

    def emit_str(self, tag: bytes, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        self.emit(tag, struct.pack("<Q", len(data)), data)

    def tag(self, base: bytes, obj: Any, exact: type) -> None:
        t = type(obj)
        self.emit_str(base, "" if t is exact else f"{t.__module__}.{t.__qualname__}")

    def visit(self, obj: Any, depth: int = 0, top: bool = False) -> None:
        self.count(1)
        scalar = _SCALAR_TAGS.get(type(obj))
        if scalar is not None:
            if self.sha is not None:
                self.scalar(scalar, obj)
            return
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj, depth)
        if isinstance(obj, np.ndarray):
            return self.array(obj, depth)
        for kind, tag in _CONTAINER_TAGS:
            if isinstance(obj, kind):
                return self.container(obj, tag, kind, depth, top)
        if isinstance(obj, np.generic):
            if obj.dtype.hasobject:
                raise _Refused(f"it holds a numpy object scalar at {self.at()}")
            self.emit_str(b"G", obj.dtype.str)
            self.emit(obj.tobytes())
        elif isinstance(obj, _ATOM_TYPES):
            self.emit_str(b"A" + type(obj).__name__.encode(), str(obj))
        elif isinstance(obj, slice):
            self.emit(b"Q")
            for name in ("start", "stop", "step"):
                self.child(name, getattr(obj, name), depth)
        elif self.sha is not None:
            raise _Refused(
                f"it holds a {type(obj).__module__}.{type(obj).__qualname__} at {self.at()}, which "
                "has no checksum encoding"
            )
        # else: a plain check of the structure; other leaves have nothing to walk

    def scalar(self, tag: bytes, obj: Any) -> None:
        if tag == b"B":
            self.emit(b"B1" if obj else b"B0")
        elif tag == b"I":
            data = _int_bytes(obj)
            self.emit(b"I", struct.pack("<Q", len(data)), data)
        elif tag == b"F":
            self.emit(b"F", struct.pack("<d", obj))
        elif tag == b"C":
            self.emit(b"C", struct.pack("<dd", obj.real, obj.imag))
        elif tag == b"S":
            self.emit_str(b"S", obj)
        elif tag in (b"Y", b"y"):
            self.emit(tag, struct.pack("<Q", len(obj)), bytes(obj))
        else:
            self.emit(tag)

    def count(self, n: int) -> None:
        self.nodes += n
        if self.nodes > self.max_nodes:
            raise _Refused(
                f"it holds more than {self.max_nodes} values outside its tensors, counting every place "
                f"a shared container appears (at {self.at()}; a checkpoint holds a few thousand)"
            )

    def reach(self, depth: int) -> None:
        if depth >= self.max_depth:
            raise _Refused(
                f"it nests containers more than {self.max_depth} levels deep (at {self.at()}); "
                "checkpoints nest a few levels"
            )
        self.deepest = max(self.deepest, depth)

    def enter(self, obj: Any, depth: int) -> Optional[Tuple[int, int]]:
        """Start walking a container; None (and a reference emitted) when it was walked before. Hand what it
        returns to :meth:`leave`."""
        key = id(obj)
        if key in self.open:
            raise _Refused(
                f"it holds a container that contains itself (at {self.at()}); a checkpoint is a tree "
                "of tensors and plain values"
            )
        if key in self.first:
            index, size, height = self.first[key]
            self.count(size - 1)  # visit() counted one
            self.reach(depth + height)
            self.emit(b"R", struct.pack("<Q", index))
            return None
        self.reach(depth)
        self.first[key] = [len(self.first), 0, 0]
        self.open.add(key)
        token = self.nodes, self.deepest
        self.deepest = depth
        return token

    def leave(self, obj: Any, depth: int, token: Tuple[int, int]) -> None:
        nodes, deepest = token
        entry = self.first[id(obj)]
        entry[1], entry[2] = self.nodes - nodes + 1, self.deepest - depth
        self.deepest = max(deepest, self.deepest)
        self.open.discard(id(obj))

    def child(self, name: str, value: Any, depth: int) -> None:
        self.where.append(name)
        self.visit(value, depth + 1)
        self.where.pop()

    def container(self, obj: Any, tag: bytes, kind: type, depth: int, top: bool) -> None:
        token = self.enter(obj, depth)
        if token is None:
            return
        self.tag(tag, obj, kind)
        if kind is dict:
            items = [(k, v) for k, v in obj.items() if not (top and k == CHECKSUM_KEY)]  # it cannot cover itself
            self.emit(struct.pack("<Q", len(items)))
            for k, v in items:
                name = str(k)[:40] if isinstance(k, (str, int)) else f"<{type(k).__name__} key>"
                self.child(f"<key {name}>", k, depth)
                self.child(name, v, depth)
        elif kind is set or kind is frozenset:
            self.set(obj, depth)
        else:
            self.emit(struct.pack("<Q", len(obj)))
            for i, v in enumerate(obj):
                self.child(str(i), v, depth)
        attrs = getattr(obj, "__dict__", None) if type(obj) is not kind else None
        if attrs:  # e.g. the _metadata (module versions) of a state dict, which pickle keeps
            self.emit(b"a")
            self.child("<attributes>", attrs, depth)
        self.leave(obj, depth, token)

    def set(self, obj: Any, depth: int) -> None:
        """With a digest, elements are encoded apart (each with references of its own) and sorted: a set's
        iteration order differs between processes."""
        self.emit(struct.pack("<Q", len(obj)))
        if self.sha is None:
            for e in obj:
                self.child("<element>", e, depth)
            return
        encoded = []
        outer = self.out, self.first, self.storages
        try:
            for e in obj:
                self.out, self.first, self.storages = [], {}, {}
                self.child("<element>", e, depth)
                encoded.append(b"".join(self.out))
        finally:
            self.out, self.first, self.storages = outer
        for e in sorted(encoded):
            self.emit(struct.pack("<Q", len(e)), e)

    def tensor(self, t: torch.Tensor, depth: int) -> None:
        attrs = vars(t)  # a tensor subclass may carry attributes (torch's _rebuild_from_type_v2)
        if self.sha is not None:
            if t.layout != torch.strided or t.is_quantized:
                raise _Refused(
                    f"it holds a {t.layout}{' quantized' if t.is_quantized else ''} tensor at {self.at()}, "
                    "which has no checksum encoding"
                )
            if self.out is not None:
                raise _Refused(f"it holds a tensor inside a set at {self.at()}, which has no checksum encoding")
            try:
                self.tensor_data(t)
            except RuntimeError as e:  # a meta or nested tensor: no bytes to read
                raise _Refused(
                    f"it holds a tensor at {self.at()} whose data cannot be read ({str(e).splitlines()[0][:100]})"
                ) from None
            self.emit(b"a" if attrs else b"-")
        if attrs:
            self.child("<attributes>", attrs, depth)

    def tensor_data(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        self.emit_str(b"T", str(t.dtype))
        self.emit(struct.pack(f"<{1 + 2 * t.dim() + 1}q", t.dim(), *t.shape, *t.stride(), t.storage_offset()))
        nbytes = storage.nbytes()
        key = (str(storage.device), storage.data_ptr())
        if nbytes and key in self.storages:
            self.emit(b"r", struct.pack("<Q", self.storages[key]))
            return
        if nbytes:
            self.storages[key] = len(self.storages)
        self.emit(b"s", struct.pack("<Q", nbytes))
        if nbytes:
            data = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
            self.emit(data.cpu().numpy().data)

    def array(self, a: np.ndarray, depth: int) -> None:
        if a.dtype.kind == "O":  # walked element by element (weights files refuse them later, by name)
            token = self.enter(a, depth)
            if token is not None:
                self.emit_str(b"O", repr(a.shape))
                for i, v in enumerate(a.flat):
                    self.child(str(i), v, depth)
                self.leave(a, depth, token)
            return
        if self.sha is not None:
            if a.dtype.hasobject:
                raise _Refused(f"it holds a numpy array with object fields at {self.at()}")
            self.emit_str(b"A", a.dtype.str)
            self.emit(struct.pack(f"<{1 + a.ndim}q", a.ndim, *a.shape))
            self.emit(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data if a.size else b"")


def _walk(obj: Any, digest: bool, max_depth: Optional[int], max_nodes: Optional[int]) -> Optional[str]:
    walk = _Walk(digest, MAX_DEPTH if max_depth is None else max_depth, MAX_NODES if max_nodes is None else max_nodes)
    walk.visit(obj, top=True)
    return walk.sha.hexdigest() if walk.sha is not None else None


def payload_checksum(obj: Any, *, max_depth: Optional[int] = None, max_nodes: Optional[int] = None) -> str:
    """The whole-payload checksum a checkpoint carries under ``"checksum"``: ``PAYLOAD_CHECKSUM_PREFIX`` and the
    SHA-256 (hex) of the canonical encoding of ``obj`` (see ``_Walk``) without its top-level ``"checksum"``.
    Raises ``ValueError`` for a structure the walk refuses (too deep or large, containing itself, a value
    without an encoding)."""
    try:
        return PAYLOAD_CHECKSUM_PREFIX + str(_walk(obj, True, max_depth, max_nodes))
    except _Refused as e:
        raise ValueError(f"cannot checksum the checkpoint: {e}") from None


def _legacy_tensors(obj: Any, prefix: str, depth: int, budget: List[int]) -> Iterator[Tuple[str, Any]]:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:  # paths, not values: a shared structure multiplies them
        raise _Refused(f"it holds more than {MAX_NODES} key paths or nests more than {MAX_DEPTH} levels deep")
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            if not (prefix == "" and k == CHECKSUM_KEY):
                yield from _legacy_tensors(obj[k], f"{prefix}/{k}", depth + 1, budget)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _legacy_tensors(v, f"{prefix}/{i}", depth + 1, budget)


def _tensors_digest(obj: Any) -> str:
    h = hashlib.sha256()
    for key, t in _legacy_tensors(obj, "", 0, [MAX_NODES]):
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        else:
            data = np.ascontiguousarray(t).reshape(-1).view(np.uint8) if t.size and t.dtype.kind != "O" else b""
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(data)
    return h.hexdigest()


def tensors_checksum(obj: Any) -> str:
    """The legacy checksum (checkpoints written before :func:`payload_checksum`): SHA-256 (hex) over every
    tensor and numpy array in a nested dict/list, with their key paths, dtypes and shapes; a top-level
    ``"checksum"`` entry is left out. Raises ``ValueError`` past :data:`MAX_NODES` key paths or
    :data:`MAX_DEPTH` levels."""
    try:
        return _tensors_digest(obj)
    except _Refused as e:
        raise ValueError(f"cannot checksum: {e}") from None


def _is_legacy_checksum(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def verify_checksum(
    obj: Any, path: os.PathLike | str, *, max_depth: Optional[int] = None, max_nodes: Optional[int] = None
) -> None:
    """Walk a loaded file (bounded: :data:`MAX_DEPTH`, :data:`MAX_NODES`, shared containers once, a cycle
    refused) and check its ``"checksum"``:

    * a whole-payload checksum (``PAYLOAD_CHECKSUM_PREFIX``): every tensor and every other entry must match;
    * a legacy tensor-only checksum (64 hex digits, earlier versions): the tensors must match; one warning
      says the other entries could not be verified;
    * none: a training checkpoint (a dict with an ``"iteration"``, from a version before checksums) loads
      with one warning that it could not be verified; plain weights files (torchvision, timm, ...) carry
      none and load silently.

    Raises :class:`CheckpointError` naming the file on a mismatch, an unrecognized checksum or a structure
    the walk refuses.
    """
    value = obj.get(CHECKSUM_KEY) if isinstance(obj, Mapping) else None
    whole = isinstance(value, str) and value.startswith(PAYLOAD_CHECKSUM_PREFIX)
    try:
        digest = _walk(obj, whole, max_depth, max_nodes)
        legacy = _tensors_digest(obj) if _is_legacy_checksum(value) else None
    except _Refused as e:
        raise CheckpointError(f"{path}: refused: {e}. {_DELETE}") from None
    if whole:
        if PAYLOAD_CHECKSUM_PREFIX + str(digest) != value:
            raise CheckpointError(
                f"{path}: checksum mismatch: the file's contents (its tensors or other entries: "
                f"iteration, optimizer, scheduler, RNG, config, ...) were changed or damaged after "
                f"it was written. {_DELETE}"
            )
    elif legacy is not None:
        if legacy != value:
            raise CheckpointError(
                f"{path}: checksum mismatch: the file's tensors were changed or damaged after it was written. {_DELETE}"
            )
        logger.warning(
            "%s: written by an earlier version whose checksum covers the tensors only: the tensors are "
            "verified; the other entries (iteration, optimizer, scheduler, RNG, config, ...) could not be "
            "verified",
            path,
        )
    elif value is not None:
        shown = repr(value[:40]) if isinstance(value, str) else f"a {type(value).__name__}"
        raise CheckpointError(
            f"{path}: its checksum entry has an unrecognized format ({shown}); it was damaged, or "
            "written by a newer version of restransfer"
        )
    elif isinstance(obj, Mapping) and "iteration" in obj:
        logger.warning(
            "%s: written without a checksum (by a version before checksums): its contents could not be verified", path
        )
