"""Logging: console (main process), ``output_dir/log.txt``, ``output_dir/log.jsonl`` (one json object per
logged iteration), TensorBoard event files when tensorboard is installed, and a progress bar with ETA
when stderr is a terminal."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["setup_logging", "MetricsWriter"]


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
        fh = logging.FileHandler(Path(output_dir) / name)
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
        self._jsonl = open(out / "log.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(out))
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
