"""One run per output folder.

A run (training, or evaluation into the folder) takes ``output_dir/run.lock`` before it writes anything:
a small json with the owner's pid and host. A second run on a live folder stops at once with an error
that names the folder and the owner. A lock left by a process that is gone (a dead pid on this host) is
taken over with a warning. The file is created complete in one step (written under a temporary name, then
hard-linked into place), so no reader ever sees half a lock.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from ..errors import OutputDirLocked
from ..distributed import all_gather_object, is_main_process

logger = logging.getLogger(__name__)

__all__ = ["OutputDirLock", "OutputDirLocked", "LOCK_NAME", "locked_output_dir"]

LOCK_NAME = "run.lock"




def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputDirLock:
    """``with OutputDirLock(output_dir): ...`` holds ``output_dir/run.lock`` for the duration.

    Raises :class:`OutputDirLocked` when a live process (or one on another host, whose liveness cannot be
    checked) holds it.
    """

    def __init__(self, output_dir: os.PathLike | str, purpose: str = "training") -> None:
        self.dir = Path(output_dir)
        self.path = self.dir / LOCK_NAME
        self.purpose = purpose
        self.held = False

    def _owner(self) -> Optional[Dict[str, Any]]:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _try_create(self) -> bool:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = self.dir / f".{LOCK_NAME}.{os.getpid()}"
        tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
        try:
            os.link(tmp, self.path)  # fails if the lock exists: creation and content in one step
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> "OutputDirLock":
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._try_create():
                self.held = True
                return self
            owner = self._owner()
            if owner is None:
                continue  # released between our attempt and the read
            pid, host = owner.get("pid"), owner.get("host")
            if not isinstance(pid, int) or not isinstance(host, str):
                raise OutputDirLocked(
                    f"{self.dir} is locked by {self.path}, which cannot be read. If no run uses this folder, "
                    f"delete {self.path}; otherwise choose another output_dir=...")
            if host == socket.gethostname() and (pid == os.getpid() or not _pid_alive(pid)):
                if pid != os.getpid():
                    logger.warning("%s: taking over the lock of process %d (%s since %s), which is no longer "
                                   "running", self.dir, pid, owner.get("purpose", "a run"), owner.get("started", "?"))
                self.path.unlink(missing_ok=True)
                continue
            where = "" if host == socket.gethostname() else f" on host {host}"
            raise OutputDirLocked(
                f"{self.dir} is in use by process {pid}{where} ({owner.get('purpose', 'a run')} since "
                f"{owner.get('started', '?')}): two runs in one output_dir would overwrite each other's "
                f"checkpoints. Wait for it to finish, stop it, or choose another output_dir=...; if that process "
                f"is gone, delete {self.path}")
        raise OutputDirLocked(f"{self.dir}: could not take {self.path} (it keeps changing); is another run "
                              "starting in this folder? Choose another output_dir=...")

    def release(self) -> None:
        if not self.held:
            return
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self.held = False

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
