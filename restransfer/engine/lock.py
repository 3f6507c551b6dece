"""One run per output folder.

A run (training, or evaluation into the folder) takes ``output_dir/run.lock`` before it writes anything and
holds it to the end.

* The file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: an existing name, a planted link included, is
  never created through. The run holds an exclusive ``flock`` on it for its whole lifetime; the kernel drops
  that lock when the process ends, however it ends (processes it forks do not inherit it).
* The file holds a json record of the owner: pid, host, boot id, the process's start time (clock ticks since
  boot, field 22 of ``/proc/<pid>/stat``), what it does and since when. A live process that merely reuses
  the pid (after a container restart, say) is told apart by its start time, and the messages say so.
* A starter that finds the file tries the flock on that very file. Held: the folder is in use, and the
  starter stops at once with an error naming the owner. Free, with the record's owner gone: the starter
  checks that the file it locked is still the one named ``run.lock`` and rewrites the record in place, with a
  warning. Taking the flock is the one atomic step, and only the holder of the flock ever deletes the file
  (on release, before letting go), so of several starters exactly one wins.
* Refused whatever the flock says: a record from another host (its processes cannot be checked from here), a
  live owner without a recorded start time (an earlier version, which held no flock), a link, folder, pipe
  or hard-linked file at ``run.lock``. On a file system without ``flock`` (Lustre without ``-o flock``) a
  stale lock is not taken over: the error says to delete it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Set, Tuple

try:
    import fcntl
except ImportError:  # Windows: no flock, locks are judged by their record only
    fcntl = None

from ..distributed import all_gather_object, is_main_process
from ..errors import OutputDirLocked
from ..fileio import unsafe_output_message

logger = logging.getLogger(__name__)

__all__ = ["OutputDirLock", "OutputDirLocked", "LOCK_NAME", "locked_output_dir", "process_start_ticks", "boot_id"]

LOCK_NAME = "run.lock"
# how long a record that is being written (empty or partial, or the old owner's while a takeover is under
# way) is waited for before the folder is reported as it is
RECORD_WAIT_S = 2.0
_ATTEMPTS = 5
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a pipe planted at the name must not block the open
# flock's answers on a file system that does not implement it
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


def boot_id() -> Optional[str]:
    """This boot of the machine (``/proc/sys/kernel/random/boot_id``), None where unavailable."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except (OSError, ValueError):
        return None


def process_start_ticks(pid: int) -> Optional[int]:
    """When process ``pid`` started, in clock ticks since boot (field 22 of ``/proc/<pid>/stat``); None when
    it is gone or there is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # field 2, the command name in parentheses, may itself hold spaces and parentheses; field 3 follows
        return int(data[data.rindex(b")") + 2 :].split()[22 - 3])
    except (OSError, ValueError, IndexError):
        return None


def _ticks_as_time(ticks: int) -> str:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            booted = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(booted + ticks / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, StopIteration, AttributeError):
        return f"{ticks} clock ticks after boot"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def _owner_gone(owner: Dict[str, Any]) -> Optional[str]:
    """Why the process a record of this host names is not the run that wrote it; None when it may be."""
    pid = owner["pid"]
    recorded_boot, this_boot = owner.get("boot_id"), boot_id()
    if recorded_boot and this_boot and recorded_boot != this_boot:
        return f"process {pid} ran before this machine last started"
    if not _pid_alive(pid):
        return f"process {pid} is no longer running"
    recorded = owner.get("start_ticks")
    if isinstance(recorded, int):
        now = process_start_ticks(pid)
        if now is not None and now != recorded:
            return (
                f"process {pid} is alive but started at {_ticks_as_time(now)}, not the run that wrote the "
                f"lock (that one started at {_ticks_as_time(recorded)})"
            )
    return None


def _try_flock(fd: int) -> Optional[bool]:
    """True: this descriptor now holds the exclusive flock; False: another holds it; None: no flock here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _NO_FLOCK:
            return None
        raise


def _is_named(fd: int, path: Path) -> bool:
    """Whether the file open as ``fd`` is still the one at ``path`` (not deleted or replaced since)."""
    try:
        st, now = os.fstat(fd), os.lstat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _read_owner(fd: int) -> Optional[Dict[str, Any]]:
    """The record in the lock file, None while it is empty, partial or not one."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = json.loads(os.read(fd, 1 << 16).decode("utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(owner, dict) and isinstance(owner.get("pid"), int) and isinstance(owner.get("host"), str):
        return owner
    return None


# locks this process holds (until released, even when nothing else refers to them), closed in a forked
# child: a DataLoader worker must not keep a dead run's lock
_HELD: "Set[OutputDirLock]" = set()


def _forget_in_child() -> None:
    for lock in list(_HELD):
        with contextlib.suppress(OSError):
            if lock._fd is not None:
                os.close(lock._fd)
        lock._fd, lock.held = None, False
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


class OutputDirLock:
    """``with OutputDirLock(output_dir): ...`` holds ``output_dir/run.lock`` for the duration.

    Raises :class:`OutputDirLocked` when a live process (or one on another host, whose liveness cannot be
    checked) holds it, or when ``run.lock`` is something this toolkit does not write through.
    """

    def __init__(self, output_dir: os.PathLike | str, purpose: str = "training") -> None:
        self.dir = Path(output_dir)
        self.path = self.dir / LOCK_NAME
        self.purpose = purpose
        self.held = False
        self._fd: Optional[int] = None

    def acquire(self) -> "OutputDirLock":
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
            except FileExistsError:
                fd = None
            except OSError as e:
                raise OSError(e.errno, f"cannot create {self.path}: {e.strerror or e}", str(self.path)) from None
            if fd is not None:
                # another starter may lock the fresh file first (it finds it empty and free) and win with it
                kernel_lock = _try_flock(fd)
                if kernel_lock is False or (kernel_lock and not _is_named(fd, self.path)):
                    os.close(fd)
                    continue
                return self._take(fd)
            fd, writable = self._open_existing()
            if fd is None:
                continue  # released between the two opens
            try:
                take = self._judge(fd, writable)
            except BaseException:
                os.close(fd)
                raise
            if take:
                return self._take(fd)
            os.close(fd)
        raise OutputDirLocked(
            f"{self.dir}: could not take {self.path} (it keeps changing); is another run "
            "starting in this folder? Choose another output_dir=..."
        )

    def _open_existing(self) -> Tuple[Optional[int], bool]:
        """The existing lock file, opened without following a link: ``(fd, writable)``, fd None if gone."""
        fd, writable = None, True
        for flags in (os.O_RDWR, os.O_RDONLY):  # read-only: another user's lock can still be locked and read
            try:
                fd = os.open(self.path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
                break
            except FileNotFoundError:
                return None, False
            except PermissionError:
                writable = False
            except OSError:
                break
        unsafe = unsafe_output_message(self.path, os.fstat(fd) if fd is not None else None)
        if unsafe:
            if fd is not None:
                os.close(fd)
            raise OutputDirLocked(f"{self.dir} cannot be locked: {unsafe}")
        if fd is None:
            raise OutputDirLocked(
                f"{self.dir}: {self.path} exists and cannot be opened; if no run uses this "
                f"folder, delete {self.path}; otherwise choose another output_dir=..."
            )
        return fd, writable

    def _judge(self, fd: int, writable: bool) -> bool:
        """Whether to take over the existing lock file ``fd`` (True) or try again from the start (False);
        raises :class:`OutputDirLocked` when the folder is in use or the lock cannot be taken over."""
        kernel_lock = _try_flock(fd)
        if kernel_lock and not _is_named(fd, self.path):
            return False  # its owner released it (deleting it) between our open and our flock
        here = socket.gethostname()
        owner, deadline = _read_owner(fd), time.monotonic() + RECORD_WAIT_S
        # a held or lock-less file may be in the middle of being written (a new lock, or a takeover that will
        # replace a gone owner's record): wait a little for the record of the process that holds it
        while (
            kernel_lock is not True
            and time.monotonic() < deadline
            and (owner is None or (kernel_lock is False and owner["host"] == here and _owner_gone(owner)))
        ):
            time.sleep(0.02)
            owner = _read_owner(fd)
        if owner is None:
            if kernel_lock and writable:  # a starter died between creating and writing it, or junk
                empty = os.fstat(fd).st_size == 0
                logger.log(
                    logging.INFO if empty else logging.WARNING,
                    "%s: taking over %s, which %s and which no process holds",
                    self.dir,
                    self.path,
                    "is empty" if empty else "holds no lock record",
                )
                return True
            raise OutputDirLocked(
                f"{self.dir} is locked by {self.path}, which cannot be read"
                f"{' (a live process holds it)' if kernel_lock is False else ''}. If no run uses this folder, "
                f"delete {self.path}; otherwise choose another output_dir=..."
            )
        pid, host = owner["pid"], owner["host"]
        what = f"{owner.get('purpose', 'a run')} since {owner.get('started', '?')}"
        if host != here:
            raise OutputDirLocked(
                f"{self.dir} is in use by process {pid} on host {host} ({what}), which cannot be checked from "
                f"here: two runs in one output_dir would overwrite each other's checkpoints. Wait for it to "
                f"finish or choose another output_dir=...; if that run is gone, delete {self.path}"
            )
        if kernel_lock is False:
            if pid == os.getpid():
                raise OutputDirLocked(
                    f"{self.dir} is already held by this process ({what}): a run cannot start "
                    "inside another one in the same folder; choose another output_dir=..."
                )
            gone = _owner_gone(owner)
            holder = f"a process that process {pid} started ({gone})" if gone else f"process {pid}"
            raise OutputDirLocked(
                f"{self.dir} is in use by {holder} ({what}): two runs in one output_dir would overwrite each "
                "other's checkpoints. Wait for it to finish, stop it, or choose another output_dir=..."
            )
        gone = _owner_gone(owner)
        if gone is None and pid == os.getpid() and kernel_lock:
            gone = f"process {pid} is this process, which no longer holds it"
        if gone is None:
            raise OutputDirLocked(
                f"{self.dir} is in use by process {pid} ({what}): two runs in one output_dir would overwrite "
                f"each other's checkpoints. Wait for it to finish, stop it, or choose another output_dir=...; "
                f"if that process is not a run of this toolkit, delete {self.path}"
            )
        if kernel_lock is None:
            raise OutputDirLocked(
                f"{self.dir}: {self.path} is stale ({gone}; it was {what}), but this file system offers no "
                f"file locks (flock) to take it over safely: delete {self.path} and start again"
            )
        if not writable:
            raise OutputDirLocked(
                f"{self.dir}: {self.path} is stale ({gone}; it was {what}) but belongs to another user, so it "
                f"cannot be rewritten: delete {self.path} (or have its owner do so) and start again"
            )
        logger.warning("%s: taking over the lock of process %d (%s): %s", self.dir, pid, what, gone)
        return True

    def _take(self, fd: int) -> "OutputDirLock":
        """Write this process's record into the lock file ``fd`` (created or taken over, flock held where
        the file system has one) and keep it open for the run's lifetime."""
        pid = os.getpid()
        record = (
            json.dumps(
                {
                    "pid": pid,
                    "host": socket.gethostname(),
                    "purpose": self.purpose,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "boot_id": boot_id(),
                    "start_ticks": process_start_ticks(pid),
                }
            )
            + "\n"
        )
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            data = memoryview(record.encode("utf-8"))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError as e:  # a full disk: leave no lock behind (the flock is ours, so is the name)
            with contextlib.suppress(OSError):
                if _is_named(fd, self.path):
                    os.unlink(self.path)
            os.close(fd)
            raise OSError(e.errno, f"cannot write {self.path}: {e.strerror or e}", str(self.path)) from None
        self._fd, self.held = fd, True
        _HELD.add(self)
        return self

    def release(self) -> None:
        fd, self._fd, self.held = self._fd, None, False
        _HELD.discard(self)
        if fd is None:
            return
        try:
            if _is_named(fd, self.path):  # delete it while the flock is still ours: nobody else deletes it
                os.unlink(self.path)
        except OSError as e:
            logger.warning("could not remove %s: %s", self.path, e)
        finally:
            os.close(fd)

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def locked_output_dir(output_dir: os.PathLike | str, purpose: str = "training") -> Iterator[None]:
    """Hold the output folder's lock for the block. Under torch.distributed the main process takes it and
    every process raises :class:`OutputDirLocked` when it could not (none is left waiting)."""
    lock = OutputDirLock(output_dir, purpose)
    error = None
    if is_main_process():
        try:
            lock.acquire()
        except OutputDirLocked as e:
            error = str(e)
    error = all_gather_object(error)[0]
    if error:
        raise OutputDirLocked(error)
    try:
        yield
    finally:
        lock.release()
