"""Writing a file all or nothing, the one way every output of the toolkit is written.

The content goes to a temporary file beside the target (``.NAME.tmpPID``), is flushed to disk, then renamed
over the target: a reader, or a run killed at any moment, sees the old file or the new one, never half of
one. On failure the temporary is removed and the error is an ``OSError`` naming the target (its ``errno``
kept, so a full disk reads as one). A killed process can leave its temporary behind; ``TEMPORARY`` matches
those names (training removes them from its output_dir when the next run starts).
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import IO, Iterator, Optional, Union

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "TEMPORARY"]

TEMPORARY = re.compile(r"^\..+\.tmp\d+$")


@contextlib.contextmanager
def atomic_open(path: Union[str, os.PathLike], mode: str = "w",
                encoding: Optional[str] = "utf-8") -> Iterator[IO]:
    """``with atomic_open(path) as f: ...`` writes ``path`` (``mode`` "w" for text, "wb" for bytes) only when
    the block finishes without an exception; the parent folder is created if missing."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode {mode!r} (use 'w' or 'wb')")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, read-only folder, ...: name the file being written, not the temporary
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}", str(path)) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Union[str, os.PathLike], data: Union[bytes, memoryview]) -> None:
    """``data``: bytes, or a view of a buffer (``BytesIO.getbuffer()``: no copy of a large serialized model)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
