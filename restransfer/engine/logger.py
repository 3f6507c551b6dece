"""Logging: console (main process), ``output_dir/log.txt``, ``output_dir/log.jsonl`` (one json object per
logged iteration), TensorBoard event files when tensorboard is installed, and a progress bar with ETA
when stderr is a terminal.

The logs are opened for append without following a link (``fileio.open_for_append``): a log name in the
output folder taken by a symbolic link is an error naming it, never a write into the file it points to. The
event files get a random suffix, so that no link can be planted at their names beforehand."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from ..fileio import open_for_append

__all__ = ["setup_logging", "MetricsWriter"]


class _LogFile(logging.FileHandler):
    """``logging.FileHandler`` whose file is opened through :func:`open_for_append` (UTF-8: the log
    carries text from annotation files)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8")

    def _open(self):
        return open_for_append(self.baseFilename, encoding=self.encoding, errors=self.errors)


def setup_logging(output_dir: Optional[str], rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``restransfer`` logger: console on rank 0, a file per rank in ``output_dir``."""
    log = logging.getLogger("restransfer")
    log.setLevel(level)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(levelname)s %(message)s", "%m/%d %H:%M:%S")
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(fmt)
        log.addHandler(console)
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        name = "log.txt" if rank == 0 else f"log.rank{rank}.txt"
        fh = _LogFile(Path(output_dir) / name)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


class MetricsWriter:
    """Writes training metrics to log.jsonl, TensorBoard (if installed) and the terminal."""

    def __init__(self, output_dir: str, max_iter: int, start_iter: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.max_iter = max_iter
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._jsonl = open_for_append(out / "log.jsonl")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out), filename_suffix=f".{secrets.token_hex(8)}")
        except ImportError:  # tensorboard is optional
            self._tb = None
        if sys.stderr.isatty() and not os.environ.get("RESTRANSFER_NO_PROGRESS"):
            from tqdm import tqdm

            self._bar = tqdm(total=max_iter, initial=start_iter, desc="train", unit="it", dynamic_ncols=True)

    @property
    def interactive(self) -> bool:
        return self._bar is not None

    def write(self, iteration: int, values: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"iteration": iteration, **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, iteration)

    def progress(self, iteration: int, postfix: str) -> None:
        if self._bar is not None:
            self._bar.n = iteration
            self._bar.set_postfix_str(postfix, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
