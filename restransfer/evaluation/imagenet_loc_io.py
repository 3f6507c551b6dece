"""ImageNet CLS-LOC submissions: the in-memory forms and both file formats, read and written here.

* :class:`LocSubmission`: what the devkit evaluates, labels of a class list and inclusive devkit boxes;
* :class:`LocGuesses`: the toolkit's guesses, WNIDs and internal ``xyxy`` boxes (converted to devkit boxes
  at the file boundary with :mod:`restransfer.boxes`);
* the devkit's text submission (line ``i``: image ``i``'s guesses ``label xmin ymin xmax ymax ...``) and
  Kaggle's CSV (``ImageId,PredictionString`` with ``WNID xmin ymin xmax ymax`` guesses, the row format of
  its solution files, read by :func:`restransfer.data.imagenet_loc.iter_kaggle_rows`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..boxes import xyxy_to_devkit
from ..data.ilsvrc import IlsvrcFormatError, Synsets, is_number, where
from ..data.imagenet_loc import iter_kaggle_rows, parse_box_groups
from ..data.json_io import read_text
from ..fileio import atomic_write_text

__all__ = [
    "MAX_GUESSES",
    "LocSubmission",
    "LocGuesses",
    "read_devkit_submission",
    "read_kaggle_submission",
    "read_submission",
    "write_devkit_submission",
    "write_kaggle_submission",
]

MAX_GUESSES = 5


@dataclass
class LocSubmission:
    """Guesses for N images in ground-truth order.

    Attributes:
        labels: (N, G) int64 class labels 1..K of a :class:`Synsets`; 0 where an image has fewer guesses.
        boxes: (N, G, 4) float64 devkit boxes (inclusive ``xmin ymin xmax ymax``).
    """

    labels: np.ndarray
    boxes: np.ndarray


@dataclass
class LocGuesses:
    """Up to G guesses for each of N images.

    Attributes:
        image_ids: (N,) int64 COCO image ids.
        wnids: (N, G) str; ``""`` where an image has fewer guesses.
        boxes: (N, G, 4) float64 internal xyxy boxes (original pixels, exclusive right/bottom edge).
        scores: (N, G) float64 guess scores (detection or classifier score); NaN where there is no guess.
    """

    image_ids: np.ndarray
    wnids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls, image_ids: Sequence[int], g: int = MAX_GUESSES) -> "LocGuesses":
        n = len(image_ids)
        return cls(
            np.asarray(image_ids, dtype=np.int64),
            np.full((n, g), "", dtype="<U32"),
            np.zeros((n, g, 4)),
            np.full((n, g), np.nan),
        )

    def reorder(self, image_ids: Sequence[int]) -> "LocGuesses":
        """The rows for ``image_ids`` in that order; an id without a row gets no guesses."""
        out = LocGuesses.empty(image_ids, self.wnids.shape[1])
        row = {int(k): i for i, k in enumerate(self.image_ids)}
        src = np.array([row.get(int(k), -1) for k in image_ids], dtype=np.int64)
        have = src >= 0
        for name in ("wnids", "boxes", "scores"):
            getattr(out, name)[have] = getattr(self, name)[src[have]]
        return out

    def to_submission(self, synsets: Synsets) -> LocSubmission:
        """Devkit-coordinate arrays with ``synsets`` labels (rows in this object's order)."""
        labels = np.zeros(self.wnids.shape, dtype=np.int64)
        present = self.wnids != ""
        labels[present] = [synsets.label(w) for w in self.wnids[present]]
        boxes = xyxy_to_devkit(self.boxes.reshape(-1, 4)).reshape(self.boxes.shape)
        return LocSubmission(labels, np.where(present[..., None], boxes, 0.0))


def _empty_submission(n: int, g: int) -> LocSubmission:
    return LocSubmission(np.zeros((n, g), dtype=np.int64), np.zeros((n, g, 4), dtype=np.float64))


def read_devkit_submission(
    path: os.PathLike | str, synsets: Synsets, num_images: int, *, max_guesses: int = MAX_GUESSES
) -> LocSubmission:
    """Read a devkit submission: line ``i`` holds image ``i``'s guesses ``label xmin ymin xmax ymax ...``.

    Labels are the class list's labels (devkit ids with ``map_clsloc.txt``); an empty line is an image without
    guesses; guesses after ``max_guesses`` are ignored.

    Raises:
        IlsvrcFormatError: the wrong number of lines, a field count that is not a multiple of 5, a non-numeric
            field, or a label that is not a class id (with file and line).
    """
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != num_images:
        raise IlsvrcFormatError(
            f"{path}: {len(lines)} lines, but the ground truth has {num_images} images; write one "
            "line per image in ground-truth order (empty for an image without guesses)"
        )
    width = 5 * max_guesses
    fields = np.zeros((num_images, width), dtype=object)
    fields[:] = "0"
    num_guesses = np.zeros(num_images, dtype=np.int64)
    for i, raw in enumerate(lines):
        tokens = raw.split()
        if len(tokens) % 5:
            raise IlsvrcFormatError(
                f"{where(path, i + 1)}: {len(tokens)} fields; each guess needs 5 (label xmin ymin xmax ymax)"
            )
        tokens = tokens[:width]
        fields[i, : len(tokens)] = tokens
        num_guesses[i] = len(tokens) // 5
    try:
        values = fields.astype(np.float64)
    except ValueError:
        for i, raw in enumerate(lines):  # slow path only to name the line
            bad = [t for t in raw.split()[:width] if not is_number(t)]
            if bad:
                raise IlsvrcFormatError(f"{where(path, i + 1)}: {bad[0]!r} is not a number") from None
        raise
    values = values.reshape(num_images, max_guesses, 5)
    raw_labels = values[:, :, 0]
    present = np.arange(max_guesses)[None, :] < num_guesses[:, None]
    bad = present & ((raw_labels != np.round(raw_labels)) | (raw_labels < 1) | (raw_labels > len(synsets)))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise IlsvrcFormatError(
            f"{where(path, i + 1)}: guess {j + 1} has label {raw_labels[i, j]:g}, which is not a class "
            f"id of {synsets.path or 'the class list'} (1..{len(synsets)})"
        )
    return LocSubmission(np.where(present, raw_labels, 0).astype(np.int64), values[:, :, 1:].copy())


def read_kaggle_submission(
    path: os.PathLike | str, synsets: Synsets, names: Sequence[str], *, max_guesses: int = MAX_GUESSES
) -> LocSubmission:
    """Read a Kaggle CSV submission (``ImageId,PredictionString`` with ``WNID xmin ymin xmax ymax`` guesses),
    matched to ``names`` (the ground-truth order) by ImageId.

    Raises:
        IlsvrcFormatError: a wrong header, an ImageId not in the ground truth or given twice, images missing, a
            field count that is not a multiple of 5, an unknown WNID (with file and line).
    """
    index = {name: i for i, name in enumerate(names)}
    sub = _empty_submission(len(names), max_guesses)
    seen = np.zeros(len(names), dtype=bool)
    for lineno, image_id, tokens in iter_kaggle_rows(path):
        i = index.get(image_id)
        if i is None:
            raise IlsvrcFormatError(f"{where(path, lineno)}: ImageId {image_id!r} is not in the ground truth")
        if seen[i]:
            raise IlsvrcFormatError(f"{where(path, lineno)}: ImageId {image_id} appears twice")
        seen[i] = True
        wnids, boxes = parse_box_groups(tokens, path, lineno, synsets, what="guess")
        g = min(len(wnids), max_guesses)
        sub.labels[i, :g] = [synsets.label(w) for w in wnids[:g]]
        sub.boxes[i, :g] = boxes[:g]
    if not seen.all():
        missing = [names[i] for i in np.flatnonzero(~seen)[:3]]
        raise IlsvrcFormatError(
            f"{path}: {int((~seen).sum())} ground-truth images have no row (e.g. {', '.join(missing)}); "
            "write a row for every image, with an empty PredictionString if needed"
        )
    return sub


def read_submission(path: os.PathLike | str, synsets: Synsets, names: Sequence[str], max_guesses: int) -> LocSubmission:
    """A Kaggle CSV (recognized by its header) or a devkit text submission, ``max_guesses`` per image."""
    first = read_text(path).split("\n", 1)[0]
    if first.strip().startswith("ImageId"):
        return read_kaggle_submission(path, synsets, names, max_guesses=max_guesses)
    return read_devkit_submission(path, synsets, len(names), max_guesses=max_guesses)


def _fmt(v: float) -> str:
    """Shortest text that keeps a coordinate to 1/100 pixel (integers stay integers)."""
    return f"{v:.2f}".rstrip("0").rstrip(".")


def write_devkit_submission(path: os.PathLike | str, guesses: LocGuesses, synsets: Synsets) -> None:
    """Write the devkit text submission: one line per row of ``guesses`` (which must be in ground-truth order,
    see :meth:`LocGuesses.reorder`), ``label xmin ymin xmax ymax`` per guess, labels of ``synsets`` (devkit ids
    with ``map_clsloc.txt``), inclusive devkit box coordinates."""
    sub = guesses.to_submission(synsets)
    lines = []
    for labels, boxes in zip(sub.labels, sub.boxes):
        lines.append(" ".join(f"{k} " + " ".join(_fmt(v) for v in b) for k, b in zip(labels, boxes) if k > 0))
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_kaggle_submission(path: os.PathLike | str, guesses: LocGuesses, names: Sequence[str]) -> None:
    """Write Kaggle's CSV: ``ImageId,PredictionString`` with ``WNID xmin ymin xmax ymax`` per guess (devkit
    coordinates); ``names[i]`` is the ImageId of row ``i``."""
    if len(names) != len(guesses.image_ids):
        raise ValueError(f"{len(names)} names for {len(guesses.image_ids)} images")
    boxes = xyxy_to_devkit(guesses.boxes.reshape(-1, 4)).reshape(guesses.boxes.shape)
    rows = ["ImageId,PredictionString"]
    for name, wnids, bxs in zip(names, guesses.wnids, boxes):
        rows.append(name + "," + " ".join(f"{w} " + " ".join(_fmt(v) for v in b) for w, b in zip(wnids, bxs) if w))
    atomic_write_text(path, "\n".join(rows) + "\n")
