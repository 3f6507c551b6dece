"""Atomic, resumable checkpoints.

Every file is written through :mod:`restransfer.fileio` (a temporary name in the same folder, flushed to
disk, then renamed over the target), so a run killed at any moment leaves either the old file or the new
one, never half of one; temporary files a killed run left behind are removed when the next run starts.
``output_dir/last_checkpoint`` names the newest periodic checkpoint; the last ``keep_last`` periodic
checkpoints are kept (``model_final.pth`` and ``model_best.pth`` are never deleted). Every checkpoint
carries a SHA-256 of its whole payload (tensors, iteration, optimizer, scheduler, RNG, config, ...), checked
on load after the zip's member sizes and CRCs (:func:`restransfer.serialization.load_torch_file`). Resuming
takes the newest checkpoint that reads back intact and names any damaged one it passes over.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..fileio import TEMPORARY, atomic_write_bytes, atomic_write_text
from ..serialization import CHECKSUM_KEY, CheckpointError, load_torch_file, payload_checksum

logger = logging.getLogger(__name__)

__all__ = ["Checkpointer", "CheckpointError", "atomic_torch_save", "atomic_write_text", "rng_state", "set_rng_state"]

_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")
FINAL = "model_final.pth"
# temporaries that earlier versions wrote under names of their own
_OLD_TEMPORARIES = ("config.yaml.tmp",)


def atomic_torch_save(obj: Any, path: os.PathLike | str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].copy()),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
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
        state = {**state, CHECKSUM_KEY: payload_checksum(state)}
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
        for old in periodic[: -self.keep_last]:
            old.unlink(missing_ok=True)

    def remove_temporaries(self) -> List[Path]:
        """Delete the temporary files of writes a killed run left behind; returns them."""
        if not self.dir.is_dir():
            return []
        leftovers = [
            p for p in self.dir.iterdir() if p.is_file() and (TEMPORARY.match(p.name) or p.name in _OLD_TEMPORARIES)
        ]
        for p in leftovers:
            p.unlink(missing_ok=True)
        if leftovers:
            logger.info(
                "removed %d unfinished temporary file(s) of an earlier run: %s",
                len(leftovers),
                ", ".join(p.name for p in leftovers),
            )
        return leftovers

    def candidates(self) -> List[Path]:
        """Resumable checkpoints, newest first: ``model_final.pth``, then periodic ones by iteration."""
        if not self.dir.is_dir():
            return []
        periodic = sorted((p for p in self.dir.iterdir() if _PERIODIC.match(p.name)), reverse=True)
        final = self.dir / FINAL
        return ([final] if final.is_file() else []) + periodic

    def _check_pointer(self, candidates: List[Path]) -> None:
        pointer = self.dir / "last_checkpoint"
        if not pointer.is_file():
            if any(_PERIODIC.match(p.name) for p in candidates):
                logger.warning("%s is missing; looking for the newest intact checkpoint instead", pointer)
            return
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            logger.warning("%s cannot be read (%s); looking for the newest intact checkpoint instead", pointer, e)
            return
        if not _PERIODIC.match(name) or not (self.dir / name).is_file():
            logger.warning(
                "%s names %r, which is not a checkpoint in %s; looking for the newest intact checkpoint instead",
                pointer,
                name,
                self.dir,
            )

    def newest_intact(self) -> Optional[Tuple[Path, Dict[str, Any]]]:
        """``(path, state)`` of the newest checkpoint that reads back intact (checksum included), or None
        when there is no checkpoint. Damaged ones are named in a warning and passed over; when checkpoints
        exist but none is intact, :class:`CheckpointError` lists them."""
        candidates = self.candidates()
        self._check_pointer(candidates)
        damaged: List[str] = []
        for path in candidates:
            try:
                state = self.load(path)
            except CheckpointError as e:
                logger.warning("skipping damaged checkpoint: %s", e)
                damaged.append(str(e))
                continue
            if damaged:
                logger.warning(
                    "resuming from %s, the newest intact checkpoint (passed over %d damaged)", path, len(damaged)
                )
            return path, state
        if damaged:
            raise CheckpointError(
                f"{self.dir}: none of its {len(damaged)} checkpoints can be read: "
                f"{'; '.join(damaged)}. Pass --restart to start over from iteration 0 (the "
                "damaged files are set aside), or restore a checkpoint from a backup"
            )
        return None

    def last(self) -> Optional[Path]:
        """The newest checkpoint that reads back intact (see :meth:`newest_intact`), or None."""
        found = self.newest_intact()
        return found[0] if found else None

    def set_aside(self) -> Optional[Path]:
        """Move this folder's checkpoints (periodic, final, best, ``last_checkpoint``) into a new
        ``replaced-<time>/`` subfolder, so that a run starting over cannot mix with them; returns it."""
        names = [p for p in self.candidates()] + [self.dir / n for n in ("model_best.pth", "last_checkpoint")]
        names = [p for p in names if p.is_file()]
        if not names:
            return None
        # a new folder, never an existing name: a link planted at this predictable name would carry the
        # checkpoints elsewhere
        stem = self.dir / time.strftime("replaced-%Y%m%d-%H%M%S")
        dest, n = stem, 1
        while True:
            try:
                dest.mkdir()
                break
            except FileExistsError:
                n += 1
                dest = stem.with_name(f"{stem.name}-{n}")
        for p in names:
            os.replace(p, dest / p.name)
        logger.warning("starting over: moved %d earlier checkpoint file(s) to %s", len(names), dest)
        return dest

    @staticmethod
    def load(path: os.PathLike | str) -> Dict[str, Any]:
        """Read a checkpoint as untrusted input (tensors and plain containers only) through the verified load
        (zip member sizes and CRCs, a bounded walk, the payload checksum); :class:`CheckpointError` names the
        file and the damage."""
        state = load_torch_file(path)
        if not isinstance(state, dict) or "iteration" not in state:
            raise CheckpointError(f"{path}: not a training checkpoint of this toolkit (it has no iteration entry)")
        return state
