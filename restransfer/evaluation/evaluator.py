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
protocol implements over whole arrays (and where it writes its files: only the main process gets there).

Protocols are registered by name (:func:`register_evaluator`) and by the dataset format they evaluate, so
``test.evaluator: auto`` finds one for any test set. A factory is called with keyword arguments: ``dataset``
(the test dataset: ``image_ids`` in order, ``class_names``, the protocol's ground truth), ``output_dir``
(where it writes its files; None: nowhere), ``metrics_path`` (None: the protocol's default) and the options
its protocol documents; it must accept and may ignore options it does not know (``**options``), since the
caller does not know which protocol it gets. A :class:`DatasetEvaluator` subclass is such a factory as it
stands: the constructor keeps those arguments, and the protocol takes its own options in
:meth:`DatasetEvaluator.configure`.

Training logs :meth:`Evaluator.scalars` in ``log.jsonl`` and keeps ``model_best.pth`` by
:attr:`Evaluator.main_metric` (higher is better unless :attr:`Evaluator.higher_is_better` is False).
"""

from __future__ import annotations

import abc
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from ..errors import ConfigError
from ..process_group import gather_object, is_main_process

__all__ = [
    "Evaluator",
    "DatasetEvaluator",
    "register_evaluator",
    "evaluator_names",
    "evaluator_for_format",
    "evaluator_factory",
    "build_evaluator",
    "gather_predictions",
]

PathLike = Union[str, os.PathLike]


class Evaluator(abc.ABC):
    """One evaluation protocol. ``name`` is the prefix of its entries in ``log.jsonl`` (``imagenet_det/mAP``,
    ``voc/mAP``; COCO's keep their own ``bbox/AP``), ``main_metric`` the entry best-model tracking follows."""

    name: str = ""
    main_metric: str = ""  # a key of scalars(); empty: the first one
    higher_is_better: bool = True

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget everything processed so far."""

    @abc.abstractmethod
    def process(self, inputs: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]]) -> None:
        """Take one batch: ``inputs[i]`` is the target of the image whose prediction is ``outputs[i]``."""

    @abc.abstractmethod
    def evaluate(self) -> Dict[str, Any]:
        """The metrics (percentages) on the main process, ``{}`` on the others."""

    def scalars(self, metrics: Mapping[str, Any]) -> Dict[str, float]:
        """The numbers training logs for ``metrics``, as ``"<name>/<key>"``: by default every top-level
        number (a nested table such as per-class AP is left to metrics.json). NaN (undefined) stays NaN here;
        training leaves such entries out of ``log.jsonl``."""
        prefix = f"{self.name}/" if self.name else ""
        return {
            f"{prefix}{k}": float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }

    def main_value(self, metrics: Mapping[str, Any]) -> Optional[float]:
        """The value of :attr:`main_metric` in ``metrics`` (None when it is missing or NaN)."""
        scalars = self.scalars(metrics)
        key = self.main_metric or next(iter(scalars), None)
        value = scalars.get(key) if key is not None else None
        return None if value is None or math.isnan(value) else value

    def format(self, metrics: Mapping[str, Any]) -> str:
        """The metrics for people (rounded); the files keep full precision."""
        return "\n".join(f"{k}: {v:.2f}" for k, v in self.scalars(metrics).items())


def gather_predictions(
    predictions: List[Dict[str, Any]], image_ids: Optional[Sequence[int]] = None
) -> Optional[List[Dict[str, Any]]]:
    """Every process's ``predictions`` on the main process (None elsewhere), in ``image_ids`` order (images
    without a prediction left out), or by image id without ``image_ids``. Only the main process receives
    them (``torch.distributed.gather_object``): a large test set's predictions are not copied to every rank."""
    parts = gather_object(predictions)
    if not is_main_process():
        return None
    merged = {int(p["image_id"]): p for part in parts for p in part}
    if image_ids is None:
        return [merged[i] for i in sorted(merged)]
    return [merged[int(i)] for i in image_ids if int(i) in merged]


class DatasetEvaluator(Evaluator):
    """An evaluator over a dataset's whole prediction list: ``process`` keeps each image's prediction,
    ``evaluate`` gathers them to the main process in ``image_ids`` order and calls :meth:`compute`; the
    gathered list stays available as ``predictions`` (main process) for reports.

    The constructor takes what the registry hands every protocol and keeps it; a protocol takes its own
    options in :meth:`configure`, which the constructor calls last.

    Args:
        dataset: the test dataset, kept as ``dataset``; its ``image_ids`` are the order of the gathered
            predictions. A sequence of image ids in its place is that order alone (no dataset kept), as a
            subclass with a constructor of its own calls ``super().__init__(dataset.image_ids)``.
        output_dir: where the protocol's files go, kept as a Path ``output_dir`` (None: nowhere).
        metrics_path: ``metrics.json``'s path, kept as ``metrics_path`` (default ``output_dir/metrics.json``;
            None without ``output_dir``).
        image_ids: the order of the gathered predictions instead (None: the dataset's, else by image id).
        options: the protocol's own options, handed to :meth:`configure`.

    ``metrics`` is None until a protocol's :meth:`compute` sets it.
    """

    def __init__(
        self,
        dataset: Any = None,
        output_dir: Optional[PathLike] = None,
        *,
        metrics_path: Optional[PathLike] = None,
        image_ids: Optional[Sequence[int]] = None,
        **options: Any,
    ) -> None:
        if image_ids is None and dataset is not None:
            if hasattr(dataset, "image_ids"):
                image_ids = dataset.image_ids
            else:
                dataset, image_ids = None, dataset
        self.image_ids = None if image_ids is None else [int(i) for i in image_ids]
        self._predictions: List[Dict[str, Any]] = []
        self.predictions: Optional[List[Dict[str, Any]]] = None
        self.dataset = dataset
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.metrics_path = (
            Path(metrics_path) if metrics_path else self.output_dir / "metrics.json" if self.output_dir else None
        )
        self.metrics: Optional[Dict[str, Any]] = None
        self.configure(**options)

    def configure(self, **options: Any) -> None:
        """Take the protocol's own options (keyword-only, with their defaults in the signature); a protocol
        also takes ``**options`` and ignores those of other protocols, as this default does."""

    def reset(self) -> None:
        self._predictions = []
        self.predictions = None

    def process(self, inputs: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]]) -> None:
        for target, output in zip(inputs, outputs):
            pred = dict(output)
            pred.setdefault("image_id", int(target["image_id"]))
            self._predictions.append(pred)

    def gathered(self) -> Optional[List[Dict[str, Any]]]:
        """Every process's predictions on the main process, in ``image_ids`` order; None elsewhere."""
        return gather_predictions(self._predictions, self.image_ids)

    def evaluate(self) -> Dict[str, Any]:
        predictions = self.gathered()
        if predictions is None:
            return {}
        self.predictions = predictions
        return self.compute(predictions)

    @abc.abstractmethod
    def compute(self, predictions: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The protocol's metrics over all predictions (main process only)."""


# name -> (factory, dataset formats it evaluates); a factory takes keyword arguments its protocol documents
_REGISTRY: Dict[str, Any] = {}


def register_evaluator(name: str, factory: Callable[..., Evaluator], formats: Sequence[str] = ()) -> None:
    """Make ``test.evaluator: NAME`` build evaluators with ``factory``, and ``auto`` pick it for test sets of
    the given ``formats`` (``coco``, ``imagenet_det``, ``voc``, ...). See the module docstring for the
    factory's arguments."""
    _REGISTRY[name] = (factory, tuple(formats))


def evaluator_names() -> List[str]:
    return sorted(_REGISTRY)


def evaluator_factory(name: str) -> Callable[..., Evaluator]:
    if name not in _REGISTRY:
        raise ConfigError(
            f"test.evaluator: unknown evaluator {name!r}; choose auto or one of {', '.join(evaluator_names())}"
        )
    return _REGISTRY[name][0]


def evaluator_for_format(fmt: str) -> str:
    """The registered evaluator name for test sets of format ``fmt`` (``test.evaluator: auto``)."""
    for name, (_, formats) in _REGISTRY.items():
        if fmt in formats:
            return name
    raise ConfigError(
        f"test.evaluator=auto: no evaluator is registered for test sets of format {fmt!r}; set "
        f"test.evaluator to one of {', '.join(evaluator_names())}"
    )


def build_evaluator(name: str, fmt: str, **kwargs: Any) -> Evaluator:
    """The evaluator ``name`` (``auto``: the one registered for format ``fmt``) built with ``kwargs``
    (``dataset``, ``output_dir`` and protocol options)."""
    return evaluator_factory(evaluator_for_format(fmt) if name == "auto" else name)(**kwargs)
