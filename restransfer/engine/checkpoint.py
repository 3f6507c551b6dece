"""Atomic, resumable checkpoints.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over the
target, so a run killed at any moment leaves either the old file or the new one, never half of one.
``output_dir/last_checkpoint`` names the newest periodic checkpoint; the last ``keep_last`` periodic
checkpoints are kept (``model_final.pth`` and ``model_best.pth`` are never deleted).
"""
from __future__ import annotations

import io
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["Checkpointer", "atomic_torch_save", "atomic_write_text", "rng_state", "set_rng_state"]

_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: os.PathLike | str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy(), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and finds checkpoints in ``output_dir``.

    A checkpoint is a dict ``{"model": state_dict, "optimizer", "scheduler", "scaler", "iteration",
    "rng", "config", "class_names", "best"}``; :func:`restransfer.models.load_detector_weights` reads
    the ``model`` entry, so any checkpoint is also a ``model.weights`` file.
    """

    def __init__(self, output_dir: os.PathLike | str, keep_last: int = 3) -> None:
        self.dir = Path(output_dir)
        self.keep_last = keep_last

    def save(self, name: str, state: Dict[str, Any], periodic: bool = False) -> Path:
        path = self.dir / name
        atomic_torch_save(state, path)
        if periodic:
            atomic_write_text(self.dir / "last_checkpoint", name + "\n")
            self._prune()
        logger.info("saved checkpoint %s", path)
        return path

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        periodic = sorted(p for p in self.dir.iterdir() if _PERIODIC.match(p.name))
        for old in periodic[:-self.keep_last]:
            old.unlink(missing_ok=True)

    def last(self) -> Optional[Path]:
        """The newest resumable checkpoint: the one ``last_checkpoint`` names, else ``model_final.pth``."""
        pointer = self.dir / "last_checkpoint"
        if pointer.is_file():
            p = self.dir / pointer.read_text().strip()
            if p.is_file():
                return p
        final = self.dir / "model_final.pth"
        return final if final.is_file() else None

    @staticmethod
    def load(path: os.PathLike | str) -> Dict[str, Any]:
        """Read a checkpoint as untrusted input (tensors and plain containers only)."""
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}. If it is damaged, delete it "
                               "(and fix output_dir/last_checkpoint) to resume from an earlier one.") from None
