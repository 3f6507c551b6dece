"""One entry per evaluation protocol that runs a config's model over its test set (``cfg.data.test``) and
evaluates the predictions, writing what the protocol's tool writes:

* :func:`run_coco_evaluation`: pycocotools' numbers; ``metrics.json`` and the COCO results json;
* :func:`run_imagenet_det_evaluation`: the ILSVRC devkit's ``eval_detection.m`` (plus COCO mAP@.5:.95);
  the devkit submission file and ``metrics.json``;
* :func:`run_imagenet_loc_evaluation`: the devkit's ``eval_clsloc.m`` on guesses made from the detections
  (:mod:`restransfer.localization`); both submission files and ``metrics.json``.

Tools parse arguments and call these; training's ``--eval-only`` is
:func:`restransfer.engine.trainer.evaluate_only`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ..analysis.run_reports import coco_run_report, det_run_report, loc_run_report
from ..config import resolve_path
from ..data.ilsvrc import read_synsets
from ..data.imagenet_loc import ground_truth_from_coco, read_blacklist
from ..devices import resolve_device
from ..distributed import is_main_process
from ..engine.inference import predict_dataset
from ..fileio import atomic_write_text
from ..models.system import predict_test_set, uses_test_system, weights_list
from ..localization import (
    MODES, classifier_guesses, classifier_scores_from_model, detector_guesses, gt_class_guesses, label_wnids,
)
from .coco import evaluate_predictions as evaluate_coco_predictions
from .coco import write_metrics
from .imagenet_det import DetEvalResult, evaluate_predictions as evaluate_det_predictions
from .imagenet_det import metrics_dict
from .imagenet_det_io import DetGroundTruth
from .imagenet_loc import evaluate_localization, pack_ground_truth
from .imagenet_loc_io import write_devkit_submission, write_kaggle_submission

__all__ = ["run_coco_evaluation", "DetModelEvaluation", "run_imagenet_det_evaluation", "run_imagenet_loc_evaluation"]


def _predict(cfg, weights, **kwargs):
    """``predict_dataset``, or with several ``weights`` (an ensemble) or ``cfg.test``'s extras the paper's
    test-time system (:func:`restransfer.models.system.predict_test_set`)."""
    if kwargs.get("model") is None and uses_test_system(cfg, weights):
        return predict_test_set(cfg, weights, **kwargs)
    paths = weights_list(weights)
    return predict_dataset(cfg, paths[0] if paths else None, **kwargs)


def run_coco_evaluation(cfg, weights: Optional[Union[str, Sequence[str]]] = None, *,
                        iou_types: Optional[Sequence[str]] = None,
                        engine: str = "auto", metrics_path: Optional[os.PathLike | str] = None,
                        results_path: Optional[os.PathLike | str] = None, model: Optional[Any] = None,
                        dataset: Optional[Any] = None, progress: bool = True) -> Optional[Dict[str, Any]]:
    """The COCO protocol on the config's test set.

    Args:
        cfg: a loaded config.
        weights: detector checkpoint (default ``cfg.model.weights``), or a list of them: the paper's ensemble
            (:func:`restransfer.models.system.predict_test_set`; ``cfg.test``'s extras apply too).
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
    dataset, predictions = _predict(cfg, weights, dataset=dataset, model=model, progress=progress)
    if not is_main_process():
        return None
    metrics = evaluate_coco_predictions(dataset, predictions, iou_types=iou_types, engine=engine,
                                        metrics_path=metrics_path, results_path=results_path)
    coco_run_report(metrics_path, metrics, dataset, predictions)
    return metrics


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


def run_imagenet_det_evaluation(cfg, weights: Optional[Union[str, Sequence[str]]] = None, *,
                                blacklist: Optional[os.PathLike | str] = None,
                                metrics_path: Optional[os.PathLike | str] = None,
                                with_coco: bool = True) -> DetModelEvaluation:
    """The ILSVRC devkit's DET protocol on the config's test set (a json of ``datasets/prepare_imagenet_det.py``).

    Writes ``imagenet_det_submission.txt`` into ``cfg.output_dir`` and the metrics
    (:func:`~restransfer.evaluation.imagenet_det.metrics_dict`) to ``metrics_path`` (default
    ``cfg.output_dir/metrics.json``).
    """
    dataset, predictions = _predict(cfg, weights)
    out_dir = Path(resolve_path(cfg.output_dir))
    submission = out_dir / "imagenet_det_submission.txt"
    result, gt, coco = evaluate_det_predictions(predictions, dataset.coco.dataset, dataset.label_to_cat_id,
                                                blacklist=blacklist, submission_path=submission,
                                                with_coco=with_coco)
    metrics_path = Path(metrics_path) if metrics_path else out_dir / "metrics.json"
    write_metrics(metrics_dict(result, gt.wnids, coco), metrics_path)
    det_run_report(metrics_path, dataset, predictions, result, gt.wnids)
    return DetModelEvaluation(result, gt, coco, submission, metrics_path)


def run_imagenet_loc_evaluation(cfg, weights: Optional[Union[str, Sequence[str]]] = None, *, mode: str = "classifier",
                                classifier_scores: Optional[np.ndarray] = None, classifier=None,
                                classifier_synsets: Optional[os.PathLike | str] = None,
                                blacklist: Optional[os.PathLike | str] = None,
                                output_dir: Optional[os.PathLike | str] = None) -> Dict[str, float]:
    """Run the detector on the config's test set, make guesses in ``mode``, write both submissions and evaluate.

    The ground truth is the test json itself (written by ``datasets/prepare_imagenet_loc.py``, whose
    ``devkit_bbox`` fields keep the devkit's boxes exactly). The ``gt_class`` mode always runs too, for
    ``gt_class_loc_error``.

    Args:
        cfg: a loaded config whose ``data.test`` is an ImageNet CLS-LOC json.
        weights: detector checkpoint.
        mode: ``detector`` or ``classifier`` (``gt_class`` gives only the GT-class numbers).
        classifier_scores: (N, C) scores, rows in the dataset's image order (``dataset.image_ids``).
        classifier: instead of ``classifier_scores``, a model with ``classify`` and ``pixel_convention``
            (:func:`restransfer.localization.load_classifier`), run over the test images with
            :func:`restransfer.localization.classifier_scores_from_model`.
        classifier_synsets: class list whose label order is the classifier's column order (default sorted WNIDs).
        blacklist: the devkit's validation blacklist.
        output_dir: where ``loc_submission.txt``, ``loc_submission.csv`` and ``metrics.json`` go (default
            ``cfg.output_dir``).

    Returns:
        the metrics dict of :func:`~restransfer.evaluation.imagenet_loc.evaluate_localization` plus
        ``gt_class_loc_error`` (percent).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "classifier" and classifier_scores is None and classifier is None:
        raise ValueError("mode 'classifier' needs classifier scores (a saved .npy / text file) or a classifier")
    dataset, predictions = _predict(cfg, weights)
    images, synsets = ground_truth_from_coco(dataset.coco.dataset)
    gt_ids = sorted(int(i) for i in dataset.coco.getImgIds())
    by_id = {int(p["image_id"]): p for p in predictions}
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)}
    preds = [by_id.get(int(k), {**empty, "image_id": int(k)}) for k in dataset.image_ids]
    sizes = {int(k): (im["width"], im["height"]) for k, im in dataset.coco.imgs.items()}
    lut = label_wnids(dataset)
    gt = pack_ground_truth(images, synsets)
    black = read_blacklist(blacklist, len(images)) if blacklist is not None else None
    out_dir = Path(output_dir or cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    gt_guesses = gt_class_guesses(preds, {k: im.labels for k, im in zip(gt_ids, images)}, lut, sizes).reorder(gt_ids)
    gt_metrics = evaluate_localization(gt, gt_guesses.to_submission(synsets), blacklist=black)
    if mode == "gt_class":
        metrics = {"gt_class_loc_error": gt_metrics["top5_loc_error"]}
        guesses = gt_guesses
    else:
        if mode == "detector":
            guesses = detector_guesses(preds, lut)
        else:
            if classifier_scores is None:
                root = resolve_path(cfg.data.test.image_root)
                pixel_convention = classifier.pixel_convention
                classifier_scores = classifier_scores_from_model(
                    classifier, [os.path.join(root, dataset.coco.imgs[k]["file_name"]) for k in dataset.image_ids],
                    device=resolve_device(cfg.device), mean=pixel_convention.mean, std=pixel_convention.std,
                    bgr=pixel_convention.channel_order == "BGR")
            columns = read_synsets(classifier_synsets).wnids if classifier_synsets is not None else None
            guesses = classifier_guesses(preds, classifier_scores, lut, sizes, classifier_wnids=columns)
        guesses = guesses.reorder(gt_ids)
        metrics = evaluate_localization(gt, guesses.to_submission(synsets), blacklist=black)
        metrics["gt_class_loc_error"] = gt_metrics["top5_loc_error"]
    write_devkit_submission(out_dir / "loc_submission.txt", guesses, synsets)
    write_kaggle_submission(out_dir / "loc_submission.csv", guesses, gt.names)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    loc_run_report(out_dir / "metrics.json", metrics, dataset, preds, gt, guesses.to_submission(synsets), black)
    return metrics
