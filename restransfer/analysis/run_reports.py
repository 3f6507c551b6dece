"""The ``report.html`` of each evaluation, from the test dataset and the model's predictions, and of the tools'
file modes. The metrics are written before the report: a report that cannot be made (an unwritable folder,
unreadable images) is a warning naming the reason, never a lost evaluation.

:func:`evaluation_report` writes the report of an evaluator that has evaluated (the protocol run of
:mod:`restransfer.engine.evaluate` calls it); a protocol's report is registered by its evaluator's name
(:func:`register_report`), and an evaluator without one gets none."""

from __future__ import annotations

import functools
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from ..data.ilsvrc import read_synsets
from ..data.imagenet_loc import read_blacklist, read_devkit_annotations, read_kaggle_solution
from ..evaluation.coco import predictions_to_coco_results
from ..evaluation.imagenet_loc import first_correct_guess, pack_ground_truth
from ..evaluation.imagenet_loc_io import MAX_GUESSES, read_submission
from .coco_errors import read_ground_truth, read_results
from .report import PathLike, localization_error_split, write_coco_report, write_det_report, write_loc_report

__all__ = [
    "coco_run_report",
    "coco_files_report",
    "det_run_report",
    "loc_run_report",
    "loc_files_report",
    "voc_run_report",
    "register_report",
    "evaluation_report",
]

logger = logging.getLogger(__name__)


def _warns(report: Callable[..., Optional[Path]]) -> Callable[..., Optional[Path]]:
    """``report`` (whose first argument is ``metrics_path``) with any failure inside it logged as a warning that
    names the ``report.html`` not written, and None returned: the metrics are already written, and a report
    that cannot be made must not fail the evaluation. A call that does not fit the signature still raises."""
    signature = inspect.signature(report)

    @functools.wraps(report)
    def wrapper(*args: Any, **kwargs: Any) -> Optional[Path]:
        call = signature.bind(*args, **kwargs)
        try:
            return report(*call.args, **call.kwargs)
        except Exception as e:  # noqa: BLE001 - the evaluation itself succeeded and is written
            report_path = Path(call.arguments["metrics_path"]).with_name("report.html")
            logger.warning("%s not written: %s: %s", report_path, type(e).__name__, e)
            return None

    return wrapper


def _data(dataset: Any, predictions: Sequence[Mapping[str, Any]]):
    results = predictions_to_coco_results(predictions, dataset.label_to_cat_id)
    return dataset.coco.dataset, results, getattr(dataset, "image_root", None), list(dataset.image_ids)


@_warns
def coco_run_report(
    metrics_path: PathLike, metrics: Optional[Mapping[str, Any]], dataset: Any, predictions: Sequence[Mapping[str, Any]]
) -> Optional[Path]:
    """``report.html`` beside ``metrics_path`` for a COCO evaluation of ``predictions`` on ``dataset``
    (a :class:`~restransfer.data.coco.CocoDataset`); None when it could not be written."""
    if metrics is None:
        return None
    gt_data, results, root, ids = _data(dataset, predictions)
    return write_coco_report(metrics_path, metrics, gt_data, results, image_root=root, image_ids=ids)


@_warns
def coco_files_report(
    metrics_path: PathLike, metrics: Mapping[str, Any], gt_path: PathLike, results_path: PathLike
) -> Optional[Path]:
    """``report.html`` beside ``metrics_path`` for a results file evaluated against an annotation file
    (``tools/eval_coco.py --gt --results``); no gallery, the images are not known."""
    return write_coco_report(metrics_path, metrics, read_ground_truth(gt_path), read_results(results_path))


@_warns
def det_run_report(
    metrics_path: PathLike,
    dataset: Optional[Any],
    predictions: Sequence[Mapping[str, Any]],
    result: Any,
    wnids: Sequence[str],
    names: Sequence[str] = (),
) -> Optional[Path]:
    """``report.html`` for an ImageNet-DET evaluation: ``result`` is the devkit's
    :class:`~restransfer.evaluation.imagenet_det.DetEvalResult` over the classes ``wnids`` (named ``names``);
    the metrics are read back from ``metrics_path``. Without a ``dataset`` (devkit files evaluated) the
    confusion matrix and the gallery are left out."""
    metrics = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    class_names = dict(zip(wnids, names))
    gt_data, results, root, ids = _data(dataset, predictions) if dataset is not None else (None, [], None, None)
    if gt_data is not None:
        class_names.update({c.get("wnid", c["name"]): str(c["name"]) for c in gt_data["categories"]})
    curves = [
        (w, np.asarray(r), np.asarray(p))
        for w, r, p, n in zip(wnids, result.recall, result.precision, result.num_pos)
        if n > 0
    ]
    num_pos = {w: int(n) for w, n in zip(wnids, result.num_pos)}
    return write_det_report(
        metrics_path, metrics, class_names, curves, num_pos, gt_data, results, image_root=root, image_ids=ids
    )


@_warns
def loc_run_report(
    metrics_path: PathLike,
    metrics: Mapping[str, Any],
    dataset: Any,
    predictions: Sequence[Mapping[str, Any]],
    gt: Any,
    submission: Any,
    blacklist: Optional[np.ndarray] = None,
) -> Optional[Path]:
    """``report.html`` for a localization evaluation: ``gt`` and ``submission`` are what
    :func:`~restransfer.evaluation.imagenet_loc.evaluate_localization` scored, ``blacklist`` its left-out images."""
    split = _loc_split(gt, submission, blacklist, MAX_GUESSES)
    gt_data, results, root, ids = _data(dataset, predictions)
    return write_loc_report(metrics_path, metrics, split, gt_data, results, image_root=root, image_ids=ids)


def _loc_split(gt: Any, submission: Any, blacklist: Optional[np.ndarray], max_guesses: int):
    cls_rank, loc_rank = first_correct_guess(gt, submission, max_guesses)
    counted = np.ones(len(gt.labels), dtype=bool)
    if blacklist is not None and len(blacklist):
        counted[np.asarray(blacklist, dtype=np.int64)] = False
    return localization_error_split(cls_rank, loc_rank, gt.labels, counted, max_guesses)


@_warns
def loc_files_report(
    metrics_path: PathLike,
    metrics: Mapping[str, Any],
    submission: PathLike,
    *,
    synsets: PathLike,
    annotations: Optional[PathLike] = None,
    ground_truth: Optional[PathLike] = None,
    solution: Optional[PathLike] = None,
    blacklist: Optional[PathLike] = None,
    max_guesses: int = MAX_GUESSES,
) -> Optional[Path]:
    """``report.html`` for submission files evaluated with
    :func:`restransfer.evaluation.imagenet_loc.evaluate_files` (same arguments): metrics and the error split,
    no gallery (the files hold no images)."""
    classes = read_synsets(synsets)
    images = (
        read_devkit_annotations(annotations, classes, ground_truth=ground_truth)
        if annotations is not None
        else read_kaggle_solution(solution, classes, split="val")
    )
    gt = pack_ground_truth(images, classes)
    black = read_blacklist(blacklist, len(images)) if blacklist is not None else None
    split = _loc_split(gt, read_submission(submission, classes, gt.names, max_guesses), black, max_guesses)
    return write_loc_report(metrics_path, metrics, split, {}, [])


@_warns
def voc_run_report(
    metrics_path: PathLike,
    dataset: Optional[Any],
    predictions: Sequence[Mapping[str, Any]],
    result: Any,
    class_names: Sequence[str],
) -> Optional[Path]:
    """``report.html`` for a PASCAL VOC evaluation: ``result`` is the devkit's
    :class:`~restransfer.evaluation.voc.VocEvalResult` over ``class_names``; the metrics are read back from
    ``metrics_path``. Per-class AP bars, the devkit's precision-recall curves and, with a ``dataset`` (not
    when results files were evaluated), the confusion matrix and the gallery."""
    metrics = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    gt_data, results, root, ids = _data(dataset, predictions) if dataset is not None else (None, [], None, None)
    curves = [
        (c, np.asarray(r), np.asarray(p))
        for c, r, p, n in zip(class_names, result.recall, result.precision, result.num_pos)
        if n > 0
    ]
    summary = {f"mAP@.5 ({metrics.get('metric')})": metrics.get("mAP"), "mAP@.5:.95": metrics.get("mAP_50_95")}
    return write_det_report(
        metrics_path,
        metrics,
        {c: c for c in class_names},
        curves,
        dict(zip(class_names, result.num_pos.tolist())),
        gt_data,
        results,
        image_root=root,
        image_ids=ids,
        title="PASCAL VOC evaluation",
        summary=summary,
        key_header=None,
    )


# evaluator name -> report(evaluator, dataset); the evaluator has evaluated (main process)
ReportFn = Callable[[Any, Any], Optional[Path]]
_REPORTS: Dict[str, ReportFn] = {}


def register_report(name: str, report: ReportFn) -> None:
    """Make :func:`evaluation_report` write ``report(evaluator, dataset)`` for evaluators named ``name``."""
    _REPORTS[name] = report


def evaluation_report(evaluator: Any, dataset: Any) -> Optional[Path]:
    """``report.html`` beside the ``metrics.json`` that ``evaluator`` (which has evaluated, on the main process)
    wrote for ``dataset``; None when its protocol has no report or it wrote no metrics file."""
    report = _REPORTS.get(evaluator.name)
    if report is None or getattr(evaluator, "metrics_path", None) is None:
        return None
    return report(evaluator, dataset)


register_report("coco", lambda ev, ds: coco_run_report(ev.metrics_path, ev.metrics, ds, ev.predictions))
register_report(
    "imagenet_det", lambda ev, ds: det_run_report(ev.metrics_path, ds, ev.predictions, ev.result, ev.ground_truth.wnids)
)
register_report(
    "voc", lambda ev, ds: voc_run_report(ev.metrics_path, ds, ev.predictions, ev.result, ev.ground_truth.class_names)
)
register_report(
    "imagenet_loc",
    lambda ev, ds: loc_run_report(
        ev.metrics_path, ev.metrics, ds, ev.predictions, ev.ground_truth, ev.submission, ev.blacklisted
    ),
)
