"""A protocol run: the config's test set through its model (or the paper's test-time system), an evaluator,
and ``report.html``.

:func:`evaluate` is what every evaluation goes through: training's periodic (``test.eval_period``) and final
evaluations, ``--eval-only``, ``tools/eval_coco.py``, ``tools/eval_imagenet_det.py``,
``tools/eval_imagenet_loc.py`` and ``tools/ablation.py``; ``tools/analyze_coco.py`` takes the same predictions
(:func:`predict_dataset`). So the test-time switches (``test.aug``, ``test.box_refinement``, several
``--weights``: an ensemble) apply everywhere, the predictions are gathered to the main process only, and only
the main process writes.

The evaluator is ``test.evaluator`` (``auto``: the one registered for ``data.test.format``; see
:mod:`restransfer.evaluation.evaluator`) unless the caller gives one. ``test.report`` says which evaluations
write ``report.html``: ``final`` (the default: every evaluation but the periodic ones), ``always``, ``never``.

The per-protocol entries the tools call (:func:`run_coco_evaluation`, :func:`run_imagenet_det_evaluation`,
:func:`run_imagenet_loc_evaluation`) build their protocol's evaluator with its options and run
:func:`evaluate`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from omegaconf import DictConfig
from torch import nn

from ..analysis.run_reports import evaluation_report
from ..config import resolve_path
from ..data.build import build_test_dataset, build_test_loader
from ..devices import resolve_device
from ..distributed import get_rank, get_world_size, is_main_process
from ..errors import ConfigError
from ..evaluation.coco_evaluator import COCOEvaluator
from ..evaluation.evaluator import (
    Evaluator,
    build_evaluator,
    evaluator_factory,
    evaluator_for_format,
    gather_predictions,
)
from ..evaluation.imagenet_det import DetEvalResult
from ..evaluation.imagenet_det_evaluator import ImageNetDetEvaluator
from ..evaluation.imagenet_det_io import DetGroundTruth
from ..evaluation.imagenet_loc_evaluator import ImageNetLocEvaluator
from ..inference.classifier import classifier_scores_from_model
from ..inference.loop import inference_on_dataset
from ..models.system import build_test_model

logger = logging.getLogger(__name__)

__all__ = [
    "Evaluation",
    "evaluate",
    "evaluate_model",
    "PeriodicEvaluation",
    "build_periodic_evaluation",
    "writes_report",
    "evaluator_for_test_set",
    "run_on_test_set",
    "predict_dataset",
    "run_coco_evaluation",
    "DetModelEvaluation",
    "run_imagenet_det_evaluation",
    "run_imagenet_loc_evaluation",
]

PathLike = Union[str, os.PathLike]
Weights = Union[None, str, Sequence[str]]
REPORT_MODES = ("final", "always", "never")


@dataclass
class Evaluation:
    """What :func:`evaluate` computed (main process): the ``metrics``, the ``evaluator`` that computed them
    (and keeps the protocol's details, e.g. the gathered ``predictions``), the test ``dataset``, the seconds
    of the prediction step (reading the test set, building the model, inference) and the report's path."""

    metrics: Dict[str, Any]
    evaluator: Evaluator
    dataset: Any
    seconds: float
    report: Optional[Path] = None

    @property
    def scalars(self) -> Dict[str, float]:
        """The ``log.jsonl`` entries (``bbox/AP``, ``imagenet_det/mAP``, ...); undefined (NaN) values are left
        out, so that every line stays valid JSON."""
        return {k: v for k, v in self.evaluator.scalars(self.metrics).items() if math.isfinite(v)}

    @property
    def main_value(self) -> Optional[float]:
        """The evaluator's main metric (what ``model_best.pth`` keeps the best of); None when undefined."""
        return self.evaluator.main_value(self.metrics)

    def improves(self, best: Optional[float]) -> bool:
        """Whether the main metric is better than ``best`` (None: nothing yet)."""
        value = self.main_value
        if value is None:
            return False
        return best is None or (value > best if self.evaluator.higher_is_better else value < best)


def writes_report(mode: str, periodic: bool) -> bool:
    """Whether an evaluation writes ``report.html`` under ``test.report`` ``mode`` (``periodic``: one of
    training's ``test.eval_period`` evaluations)."""
    if mode not in REPORT_MODES:
        raise ConfigError(f"test.report: {mode!r} is not one of {', '.join(REPORT_MODES)}")
    return mode == "always" or (mode == "final" and not periodic)


def evaluator_for_test_set(
    cfg: DictConfig,
    dataset: Any,
    *,
    name: Optional[str] = None,
    output_dir: Optional[PathLike] = None,
    metrics_path: Optional[PathLike] = None,
) -> Evaluator:
    """The evaluator ``name`` (default ``test.evaluator``; ``auto``: the one registered for
    ``data.test.format``) for ``dataset``, writing into ``output_dir`` (default ``cfg.output_dir``)."""
    fmt = cfg.data.test.format if cfg.data.test is not None else "coco"
    # protocol options from cfg.test, passed when set (a factory ignores the options of other protocols)
    options = {"voc_metric": cfg.test.voc_metric} if cfg.test.voc_metric is not None else {}
    return build_evaluator(
        name or cfg.test.evaluator,
        fmt,
        dataset=dataset,
        output_dir=Path(output_dir if output_dir is not None else cfg.output_dir),
        metrics_path=metrics_path,
        **options,
    )


def run_on_test_set(
    cfg: DictConfig,
    weights: Weights = None,
    *,
    dataset: Any = None,
    model: Optional[nn.Module] = None,
    evaluator: Optional[Evaluator] = None,
    progress: bool = True,
) -> Tuple[Any, List[Dict[str, Any]]]:
    """Run the config's model over its test set (``cfg.data.test``) on this process's share of the images.

    The model is :func:`~restransfer.models.system.build_test_model`'s (the plain detector, or the test-time
    system for several ``weights`` or ``cfg.test``'s extras; it applies ``test.precision`` layer by layer), or
    a given ``model`` (e.g. the one being trained) run as it is under ``test.precision`` autocast; the images
    come from :func:`~restransfer.data.build.build_test_loader` through
    :func:`~restransfer.inference.loop.inference_on_dataset`.

    Args:
        cfg: the config.
        weights: detector checkpoint (default ``cfg.model.weights``), or several: the paper's ensemble.
        dataset: a test dataset to use instead of ``cfg.data.test``.
        model: an already built model to run as it is.
        evaluator: gets every batch (:meth:`~restransfer.evaluation.evaluator.Evaluator.process`).

    Returns:
        ``(dataset, predictions of this process)``.
    """
    device = resolve_device(cfg.device)
    dataset = dataset if dataset is not None else build_test_dataset(cfg)
    _check_test_classes(dataset, cfg.model.num_classes)
    if model is None:
        model, precision = build_test_model(cfg, weights, dataset.class_names, device), "fp32"
    else:
        precision = cfg.test.precision
    loader = build_test_loader(cfg, dataset, get_rank(), get_world_size())
    return dataset, inference_on_dataset(model, loader, device, precision, progress=progress, evaluator=evaluator)


def _check_test_classes(dataset: Any, num_classes: int) -> None:
    """The test set's classes against ``model.num_classes``."""
    if len(dataset.class_names) != num_classes:
        raise ConfigError(
            f"the test set {getattr(dataset, 'name', '')} has {len(dataset.class_names)} classes but "
            f"model.num_classes is {num_classes}; set model.num_classes={len(dataset.class_names)}"
        )


def predict_dataset(
    cfg: DictConfig,
    weights: Weights = None,
    dataset: Any = None,
    model: Optional[nn.Module] = None,
    progress: bool = True,
) -> Tuple[Any, Optional[List[Dict[str, Any]]]]:
    """:func:`run_on_test_set`, every process's predictions gathered to the main process.

    Returns:
        ``(dataset, predictions)``: predictions are per-image dicts ``{"image_id", "boxes" (N, 4) xyxy in
        original pixels, "scores", "labels" (1..K), "masks" (RLE list, Mask R-CNN)}`` in dataset order on
        the main process, None on the others.
    """
    dataset, predictions = run_on_test_set(cfg, weights, dataset=dataset, model=model, progress=progress)
    return dataset, gather_predictions(predictions, dataset.image_ids)


def evaluate(
    cfg: DictConfig,
    weights: Weights = None,
    *,
    model: Optional[nn.Module] = None,
    dataset: Any = None,
    evaluator: Union[None, str, Evaluator] = None,
    output_dir: Optional[PathLike] = None,
    metrics_path: Optional[PathLike] = None,
    periodic: bool = False,
    report: Optional[bool] = None,
    progress: bool = True,
    echo: bool = False,
) -> Optional[Evaluation]:
    """Run the config's model over its test set and evaluate it.

    Args:
        cfg: a loaded config.
        weights: detector checkpoint (default ``cfg.model.weights``), or several: the paper's ensemble
            (``cfg.test``'s extras apply too).
        model: an already built model (e.g. the one being trained) to run as it is, instead of ``weights``.
        dataset: the test dataset, instead of building ``cfg.data.test``.
        evaluator: an evaluator, or the name of a registered one; default ``test.evaluator``.
        output_dir, metrics_path: where a named or configured evaluator writes (default ``cfg.output_dir``).
        periodic: one of training's ``test.eval_period`` evaluations (``test.report: final`` writes no
            report for those).
        report: write ``report.html`` (default: as ``test.report`` says for this kind of evaluation).
        progress: show a progress bar. echo: print the metrics table (main process).

    Returns:
        the :class:`Evaluation` on the main process, None on the others.
    """
    start = time.perf_counter()
    dataset = dataset if dataset is not None else build_test_dataset(cfg)
    if not isinstance(evaluator, Evaluator):
        evaluator = evaluator_for_test_set(
            cfg, dataset, name=evaluator, output_dir=output_dir, metrics_path=metrics_path
        )
    evaluator.reset()
    run_on_test_set(cfg, weights, dataset=dataset, model=model, evaluator=evaluator, progress=progress)
    seconds = time.perf_counter() - start
    metrics = evaluator.evaluate()
    if not is_main_process():
        return None
    run = Evaluation(metrics, evaluator, dataset, seconds)
    if echo:
        print(evaluator.format(metrics), flush=True)
    if report if report is not None else writes_report(cfg.test.report, periodic):
        run.report = evaluation_report(evaluator, dataset)
    return run


def evaluate_model(
    cfg: DictConfig,
    model: Optional[nn.Module] = None,
    weights: Weights = None,
    dataset: Any = None,
    output_dir: Optional[PathLike] = None,
    metrics_path: Optional[PathLike] = None,
    progress: bool = True,
    periodic: bool = False,
) -> Optional[Dict[str, Any]]:
    """Training's final evaluation and ``--eval-only``: :func:`evaluate` with ``test.evaluator`` writing into
    ``output_dir`` (default ``cfg.output_dir``), then the printed table. Returns the metrics on the main
    process, None elsewhere."""
    run = evaluate(
        cfg,
        weights,
        model=model,
        dataset=dataset,
        output_dir=output_dir,
        metrics_path=metrics_path,
        periodic=periodic,
        progress=progress,
        echo=True,
    )
    return run.metrics if run is not None else None


class PeriodicEvaluation:
    """Training's evaluation every ``test.eval_period`` steps, with any evaluator: ``periodic(module)`` runs
    ``run(module, test_set)`` (an :class:`Evaluation` of ``module``, the weights being trained, run as they are;
    None on processes other than the main one) and returns the evaluator's scalars for ``log.jsonl`` on the main
    process (None elsewhere). ``metric`` and ``higher_is_better`` say which scalar ranks checkpoints for
    ``model_best.pth`` (``bbox/AP``, ``imagenet_det/mAP``, ...; empty: the evaluator's main metric, else its
    first scalar). The test set (``build_test_set()``) is read once, at the first evaluation.
    :func:`build_periodic_evaluation` makes the one a training config asks for."""

    def __init__(
        self,
        run: Callable[[nn.Module, Any], Optional[Evaluation]],
        build_test_set: Callable[[], Any],
        *,
        metric: str = "",
        higher_is_better: bool = True,
    ) -> None:
        self._run, self._build_test_set = run, build_test_set
        self._dataset: Any = None
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.last: Optional[Evaluation] = None

    def __call__(self, module: nn.Module) -> Optional[Dict[str, float]]:
        if self._dataset is None:
            self._dataset = self._build_test_set()
        run = self._run(module, self._dataset)
        self.last = run
        if run is None:
            return None
        if not self.metric:
            self.metric = run.evaluator.main_metric or next(iter(run.scalars), "")
        return run.scalars


def build_periodic_evaluation(cfg: DictConfig) -> PeriodicEvaluation:
    """The :class:`PeriodicEvaluation` of a training config: :func:`evaluate` on ``data.test`` with
    ``test.evaluator`` (no ``report.html`` unless ``test.report: always``), ranked by the evaluator's main
    metric (a registered class says it; a plain factory function ranks by its first scalar)."""
    fmt = cfg.data.test.format if cfg.data.test is not None else "coco"
    factory = evaluator_factory(evaluator_for_format(fmt) if cfg.test.evaluator == "auto" else cfg.test.evaluator)

    def run(module: nn.Module, dataset: Any) -> Optional[Evaluation]:
        return evaluate(cfg, model=module, dataset=dataset, periodic=True, progress=False, echo=True)

    return PeriodicEvaluation(
        run,
        functools.partial(build_test_dataset, cfg),
        metric=getattr(factory, "main_metric", ""),
        higher_is_better=bool(getattr(factory, "higher_is_better", True)),
    )


# ----------------------------------------------------------------------------- the protocols' entries


def run_coco_evaluation(
    cfg: DictConfig,
    weights: Weights = None,
    *,
    iou_types: Optional[Sequence[str]] = None,
    engine: str = "auto",
    metrics_path: Optional[PathLike] = None,
    results_path: Optional[PathLike] = None,
    model: Optional[Any] = None,
    dataset: Optional[Any] = None,
    progress: bool = True,
) -> Optional[Dict[str, Any]]:
    """The COCO protocol on the config's test set.

    Args:
        cfg: a loaded config.
        weights: detector checkpoint (default ``cfg.model.weights``), or a list of them: the paper's ensemble
            (``cfg.test``'s extras apply too).
        iou_types: ``bbox`` and/or ``segm`` (default: bbox, plus segm when the model predicts masks).
        engine: the COCOeval implementation (see :func:`restransfer.evaluation.coco.evaluate_coco`).
        metrics_path: where ``metrics.json`` goes (default ``cfg.output_dir/metrics.json``).
        results_path: where the COCO results json goes (default ``coco_instances_results.json`` beside the
            metrics).
        model, dataset: an already built model (e.g. the one being trained) and test dataset to use instead
            of building them from the config.
        progress: show a progress bar.

    Returns:
        the metrics of :func:`restransfer.evaluation.coco.evaluate_coco` on the main process, None elsewhere.
    """
    metrics_path = Path(metrics_path) if metrics_path else Path(cfg.output_dir) / "metrics.json"
    results_path = Path(results_path) if results_path else metrics_path.with_name("coco_instances_results.json")
    dataset = dataset if dataset is not None else build_test_dataset(cfg)
    evaluator = COCOEvaluator(
        dataset, metrics_path=metrics_path, results_path=results_path, iou_types=iou_types, engine=engine
    )
    run = evaluate(cfg, weights, model=model, dataset=dataset, evaluator=evaluator, progress=progress)
    return run.metrics if run is not None else None


@dataclass
class DetModelEvaluation:
    """What :func:`run_imagenet_det_evaluation` computed and wrote: the devkit ``result``, the
    ``ground_truth`` it used, the COCO numbers (``coco``, percent; None when skipped) and the paths of the
    submission file and ``metrics.json``."""

    result: DetEvalResult
    ground_truth: DetGroundTruth
    coco: Optional[Dict[str, float]]
    submission_path: Path
    metrics_path: Path


def run_imagenet_det_evaluation(
    cfg: DictConfig,
    weights: Weights = None,
    *,
    blacklist: Optional[PathLike] = None,
    metrics_path: Optional[PathLike] = None,
    with_coco: bool = True,
) -> Optional[DetModelEvaluation]:
    """The ILSVRC devkit's DET protocol on the config's test set (a json of ``datasets/prepare_imagenet_det.py``).

    Writes ``imagenet_det_submission.txt`` into ``cfg.output_dir`` and the metrics
    (:func:`~restransfer.evaluation.imagenet_det.metrics_dict`) to ``metrics_path`` (default
    ``cfg.output_dir/metrics.json``). Returns None on processes other than the main one.
    """
    dataset = build_test_dataset(cfg)
    evaluator = ImageNetDetEvaluator(
        dataset, Path(resolve_path(cfg.output_dir)), metrics_path=metrics_path, blacklist=blacklist, with_coco=with_coco
    )
    if evaluate(cfg, weights, dataset=dataset, evaluator=evaluator) is None:
        return None
    return DetModelEvaluation(
        evaluator.result, evaluator.ground_truth, evaluator.coco, evaluator.submission_path, evaluator.metrics_path
    )


def run_imagenet_loc_evaluation(
    cfg: DictConfig,
    weights: Weights = None,
    *,
    mode: str = "classifier",
    classifier_scores: Optional[np.ndarray] = None,
    classifier: Optional[nn.Module] = None,
    classifier_synsets: Optional[PathLike] = None,
    blacklist: Optional[PathLike] = None,
    output_dir: Optional[PathLike] = None,
) -> Optional[Dict[str, float]]:
    """Run the detector on the config's test set, make guesses in ``mode``, write both submissions and evaluate
    (:class:`~restransfer.evaluation.imagenet_loc_evaluator.ImageNetLocEvaluator`).

    Args:
        cfg: a loaded config whose ``data.test`` is an ImageNet CLS-LOC json.
        weights: detector checkpoint (several: an ensemble).
        mode: ``detector`` or ``classifier`` (``gt_class`` gives only the GT-class numbers).
        classifier_scores: (N, C) scores, rows in the dataset's image order (``dataset.image_ids``).
        classifier: instead of ``classifier_scores``, a model with ``classify`` and ``pixel_convention``
            (:func:`restransfer.inference.classifier.load_classifier`), run over the test images with
            :func:`restransfer.inference.classifier.classifier_scores_from_model` (on the main process).
        classifier_synsets: class list whose label order is the classifier's column order (default sorted WNIDs).
        blacklist: the devkit's validation blacklist.
        output_dir: where ``loc_submission.txt``, ``loc_submission.csv`` and ``metrics.json`` go (default
            ``cfg.output_dir``).

    Returns:
        the metrics dict of :func:`~restransfer.evaluation.imagenet_loc.evaluate_localization` plus
        ``gt_class_loc_error`` (percent) on the main process, None on the others.
    """
    dataset = build_test_dataset(cfg)
    scores: Any = classifier_scores
    if mode == "classifier" and scores is None and classifier is not None:
        scores = _classifier_scoring(
            dataset, classifier, image_root=cfg.data.test.image_root, device=resolve_device(cfg.device)
        )
    evaluator = ImageNetLocEvaluator(
        dataset,
        Path(output_dir or cfg.output_dir),
        mode=mode,
        classifier_scores=scores,
        classifier_synsets=classifier_synsets,
        blacklist=blacklist,
    )
    run = evaluate(cfg, weights, dataset=dataset, evaluator=evaluator)
    return run.metrics if run is not None else None


def _classifier_scoring(
    dataset: Any, classifier: nn.Module, *, image_root: str, device: Any
) -> Callable[[], np.ndarray]:
    """The center-crop scores of ``classifier`` over the test images under ``image_root`` (rows in
    ``dataset.image_ids`` order), as a function: the evaluator calls it on the main process only, when it makes
    the guesses."""
    root = resolve_path(image_root)
    paths = [os.path.join(root, dataset.coco.imgs[k]["file_name"]) for k in dataset.image_ids]
    conv = classifier.pixel_convention
    return lambda: classifier_scores_from_model(
        classifier, paths, device=device, mean=conv.mean, std=conv.std, bgr=conv.channel_order == "BGR"
    )
