"""The records that the devkit detection protocols share: ILSVRC DET's ``eval_detection.m``
(:mod:`restransfer.evaluation.imagenet_det`) was derived from PASCAL VOC's ``VOCevaldet.m``
(:mod:`restransfer.evaluation.voc`), and both read a column table of detections and give per-class AP with
the precision/recall curves behind it.

* :class:`DetectionTable`: what a dataclass of N detections in columns (the image column, ``labels``,
  ``scores``, ``boxes``) gets: its length and its empty value.
* :class:`ClassAPResult`: per-class AP, positives, curves and per-detection outcomes; :func:`mean_over_classes`
  the mean that leaves out classes without positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Type, TypeVar

import numpy as np

__all__ = ["DetectionTable", "ClassAPResult", "mean_over_classes"]

_Table = TypeVar("_Table", bound="DetectionTable")


class DetectionTable:
    """A base for dataclasses of N detections whose four fields are, in order, the image column (N,) int64,
    ``labels`` (N,) int64, ``scores`` (N,) float64 and ``boxes`` (N, 4) float64."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls: Type[_Table]) -> _Table:
        """No detections: every column of length 0, with its dtype."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))


def mean_over_classes(ap: np.ndarray) -> float:
    """The mean of ``ap`` (K,) over the classes that have one (not NaN); NaN when none has."""
    valid = ~np.isnan(ap)
    return float(ap[valid].mean()) if valid.any() else float("nan")


@dataclass
class ClassAPResult:
    """Per-class results of a devkit protocol, AP as fractions: ``ap`` (K,) in [0, 1], NaN for classes
    without positives; ``num_pos`` (K,) positives; ``recall``/``precision``: per class, the curves over that
    class's detections in rank order; ``tp``/``fp`` (N,) bool in detection order (both False: ignored)."""

    ap: np.ndarray
    num_pos: np.ndarray
    recall: List[np.ndarray]
    precision: List[np.ndarray]
    tp: np.ndarray
    fp: np.ndarray

    @property
    def mean_ap(self) -> float:
        """Mean AP over the classes that have positives (a fraction in [0, 1]; NaN when no class has any)."""
        return mean_over_classes(self.ap)
