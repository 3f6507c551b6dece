"""Writing files in an output folder: all or nothing, and never through a link.

``atomic_open`` (and ``atomic_write_bytes`` / ``atomic_write_text``) is the one way every output of the
toolkit is written. The content goes to a temporary file beside the target, created under an unpredictable
name (``.NAME.<16 hex digits>.tmp``) with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so no link planted in the folder
can stand in for it; it is flushed to disk, then ``os.replace``-d onto the target: a reader, or a run killed
at any moment, sees the old file or the new one, never half of one, and a symbolic link at the target's name
is replaced by the new file, not written through. On failure the temporary is removed and the error is an
``OSError`` naming the target (its ``errno`` kept, so a full disk reads as one). A killed process can leave
its temporary behind; ``TEMPORARY`` matches those names, and those of earlier versions (``.NAME.tmpPID``);
training removes them from its output_dir when the next run starts.

``open_for_append`` opens a log for appending without following a link: a log name taken by a symbolic
link, a hard-linked file or anything but a regular file is an ``OSError`` naming it and saying what to do.
``exclusive_lock`` holds a lock file opened the same way, for processes that take turns at generating files.

The folder a path names is taken as it is: links among its parent folders are followed (the user chose
that path); only the names the toolkit creates inside it are guarded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from pathlib import Path
from typing import IO, Iterator, Optional, TextIO, Tuple, Union

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "open_for_append",
    "exclusive_lock",
    "unsafe_output_message",
    "TEMPORARY",
]

# this version's temporaries, and the ``.NAME.tmpPID`` ones of earlier versions
TEMPORARY = re.compile(r"^\..+\.(?:[0-9a-f]{16}\.tmp|tmp\d+)$")

# absent on Windows, where there is no symbolic link to fear from other users in the same way
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _create_temporary(path: Path) -> Tuple[int, Path]:
    """A new file beside ``path`` under a name nobody can guess; ``O_EXCL`` refuses any existing name, a
    link included. Mode 0o666 lets the umask decide, as ``open()`` would."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # 64 random bits: only a folder being flooded gets here twice
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(path))


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable; a file system that cannot sync a folder is left as it is."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: Union[str, os.PathLike], mode: str = "w", encoding: Optional[str] = "utf-8", sync: bool = True
) -> Iterator[IO]:
    """``with atomic_open(path) as f: ...`` writes ``path`` (``mode`` "w" for text, "wb" for bytes) only when
    the block finishes without an exception; the parent folder is created if missing. ``sync=False`` skips
    the flush to disk (a few milliseconds a file), for files that are made again when lost, such as the
    images of a generated data set whose json is written last."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode {mode!r} (use 'w' or 'wb')")
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        if sync:
            _sync_folder(path.parent)
    except OSError as e:  # disk full, read-only folder, ...: name the file being written, not the temporary
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}", str(path)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_bytes(path: Union[str, os.PathLike], data: Union[bytes, memoryview], sync: bool = True) -> None:
    """``data``: bytes, or a view of a buffer (``BytesIO.getbuffer()``: no copy of a large serialized model)."""
    with atomic_open(path, "wb", sync=sync) as f:
        f.write(data)


def atomic_write_text(path: Union[str, os.PathLike], text: str, sync: bool = True) -> None:
    with atomic_open(path, "w", sync=sync) as f:
        f.write(text)


def unsafe_output_message(path: Path, st: Optional[os.stat_result] = None) -> Optional[str]:
    """Why the toolkit will not write into the existing ``path`` in place (a symbolic link, a file with other
    hard links, a folder, a pipe or device), or None when it is a plain file or absent. ``st``: its
    ``fstat`` once opened; otherwise the name is looked at without following it."""
    if st is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
    if stat.S_ISLNK(st.st_mode):
        try:
            what = f"a symbolic link (to {os.readlink(path)})"
        except OSError:
            what = "a symbolic link"
    elif not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, socket or device)"
    elif st.st_nlink > 1:
        what = f"a file with {st.st_nlink - 1} other hard link(s) elsewhere"
    else:
        return None
    return (
        f"{path} is {what}: the toolkit does not write through it, since that would change a file outside "
        f"the output folder. If the folder is yours, remove it (rm {path}) and run again; otherwise choose "
        "another output folder"
    )


def open_for_append(path: Union[str, os.PathLike], encoding: str = "utf-8", errors: Optional[str] = None) -> TextIO:
    """Open the text file ``path`` for appending (created if missing, as ``open(path, "a")``) without
    following a symbolic link at its name. A name taken by a link, a hard-linked file, a folder, a pipe or a
    device is an ``OSError`` whose message names it and says what to do."""
    path = Path(path)
    # O_NONBLOCK: a pipe planted at the name fails at once instead of waiting for a reader
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        message = unsafe_output_message(path)
        if message:
            raise OSError(message) from None
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}", str(path)) from None
    try:
        message = unsafe_output_message(path, os.fstat(fd))
        if message:
            raise OSError(message)
        if _NONBLOCK:  # a regular file ignores it; cleared so that writes keep their usual semantics
            os.set_blocking(fd, True)
        return os.fdopen(fd, "a", encoding=encoding, errors=errors)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def exclusive_lock(path: Union[str, os.PathLike]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (created if missing, opened as
    :func:`open_for_append` opens a log: never through a link) for the block, waiting for its holder: the
    processes that generate one data set (the ranks of a distributed run) take turns. Without ``fcntl``
    (Windows) there is no lock, and processes starting together repeat the work."""
    with open_for_append(path) as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield
