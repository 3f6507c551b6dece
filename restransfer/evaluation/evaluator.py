"""The evaluator interface: one protocol's metrics from a stream of predictions.

An :class:`Evaluator` is driven by the inference loop, as detectron2's ``DatasetEvaluator`` is::

    evaluator.reset()
    for inputs, outputs in batches:          # on every process, its own share of the images
        evaluator.process(inputs, outputs)
    metrics = evaluator.evaluate()           # gathers to the main process; {} elsewhere

``inputs`` are the batch's targets (dicts with at least ``"image_id"``), ``outputs`` the per-image
predictions in the toolkit's layout: ``{"image_id", "boxes" (N, 4) float xyxy in pixels of the image as
stored, "scores" (N,), "labels" (N,) in 1..K, "masks" (optional, a list of COCO RLEs)}`` as numpy arrays.

:class:`DatasetEvaluator` keeps the predictions, gathers them to the main process only (not to every
process) in the dataset's image order, and hands them to :meth:`DatasetEvaluator.compute`, which a
protocol implements over whole arrays. Protocols are registered by name (:func:`register_evaluator`) and
by the dataset format they evaluate, so ``test.evaluator: auto`` finds one for any test set.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..distributed import gather_object, is_main_process
from ..errors import ConfigError

__all__ = ["Evaluator", "DatasetEvaluator", "register_evaluator", "evaluator_names", "evaluator_for_format",
           "evaluator_factory"]


class Evaluator(abc.ABC):
    """One evaluation protocol. ``name`` is the prefix of its entries in ``log.jsonl`` (``bbox/AP``,
    ``imagenet_det/mAP``, ``voc/mAP``)."""

    name: str = ""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget everything processed so far."""

    @abc.abstractmethod
    def process(self, inputs: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]]) -> None:
        """Take one batch: ``inputs[i]`` is the target of the image whose prediction is ``outputs[i]``."""

    @abc.abstractmethod
    def evaluate(self) -> Dict[str, Any]:
        """The metrics (percentages) on the main process, ``{}`` on the others."""


class DatasetEvaluator(Evaluator):
    """An evaluator over a dataset's whole prediction list: ``process`` keeps each image's prediction,
    ``evaluate`` gathers them to the main process in ``image_ids`` order and calls :meth:`compute`."""

    def __init__(self, image_ids: Optional[Sequence[int]] = None) -> None:
        self.image_ids = None if image_ids is None else [int(i) for i in image_ids]
        self._predictions: List[Dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]]) -> None:
        for target, output in zip(inputs, outputs):
            pred = dict(output)
            pred.setdefault("image_id", int(target["image_id"]))
            self._predictions.append(pred)

    def gathered(self) -> Optional[List[Dict[str, Any]]]:
        """Every process's predictions on the main process, in ``image_ids`` order; None elsewhere."""
        parts = gather_object(self._predictions)
        if not is_main_process():
            return None
        merged = {int(p["image_id"]): p for part in parts for p in part}
        if self.image_ids is None:
            return [merged[i] for i in sorted(merged)]
        return [merged[i] for i in self.image_ids if i in merged]

    def evaluate(self) -> Dict[str, Any]:
        predictions = self.gathered()
        if predictions is None:
            return {}
        return self.compute(predictions)

    @abc.abstractmethod
    def compute(self, predictions: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The protocol's metrics over all predictions (main process only)."""


# name -> (factory, dataset formats it evaluates); a factory takes keyword arguments its protocol documents
_REGISTRY: Dict[str, Any] = {}


def register_evaluator(name: str, factory: Callable[..., Evaluator], formats: Sequence[str] = ()) -> None:
    """Make ``test.evaluator: NAME`` build evaluators with ``factory``, and ``auto`` pick it for test sets of
    the given ``formats`` (``coco``, ``imagenet_det``, ``voc``, ...)."""
    _REGISTRY[name] = (factory, tuple(formats))


def evaluator_names() -> List[str]:
    return sorted(_REGISTRY)


def evaluator_factory(name: str) -> Callable[..., Evaluator]:
    if name not in _REGISTRY:
        raise ConfigError(f"test.evaluator: unknown evaluator {name!r}; choose auto or one of "
                          f"{', '.join(evaluator_names())}")
    return _REGISTRY[name][0]


def evaluator_for_format(fmt: str) -> str:
    """The registered evaluator name for test sets of format ``fmt`` (``test.evaluator: auto``)."""
    for name, (_, formats) in _REGISTRY.items():
        if fmt in formats:
            return name
    raise ConfigError(f"test.evaluator=auto: no evaluator is registered for test sets of format {fmt!r}; set "
                      f"test.evaluator to one of {', '.join(evaluator_names())}")
