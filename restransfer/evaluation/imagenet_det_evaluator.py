"""The ILSVRC DET protocol as an :class:`~restransfer.evaluation.evaluator.Evaluator`: the devkit's
``eval_detection.m`` (:mod:`restransfer.evaluation.imagenet_det`, plus COCO's mAP@.5:.95 on the same boxes)
over the gathered predictions on a json of ``datasets/prepare_imagenet_det.py``; writes the devkit
submission file and ``metrics.json``.

Registered as ``imagenet_det`` for test sets of format ``imagenet_det``."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from .evaluator import DatasetEvaluator, PathLike, register_evaluator
from .imagenet_det import DetEvalResult, evaluate_predictions, format_table, metrics_dict
from .imagenet_det_io import DetGroundTruth
from .metrics_file import write_metrics

__all__ = ["ImageNetDetEvaluator", "SUBMISSION_NAME"]

SUBMISSION_NAME = "imagenet_det_submission.txt"


class ImageNetDetEvaluator(DatasetEvaluator):
    """Devkit mAP@.5 of a converted ILSVRC DET val json's predictions.

    Args:
        dataset: the test dataset (``coco.dataset`` the converted json, ``image_ids``, ``label_to_cat_id``).
        output_dir: where ``imagenet_det_submission.txt`` and ``metrics.json`` go (None: no files).
        metrics_path: ``metrics.json``'s path instead.
        blacklist: the devkit's blacklist file (detections of a blacklisted class on an image are ignored).
        with_coco: also compute COCO's AP and AP50 of the same boxes.
        options: other protocols' options, ignored.

    After :meth:`evaluate` (main process): ``result`` (:class:`~restransfer.evaluation.imagenet_det.DetEvalResult`),
    ``ground_truth``, ``coco`` (percent, or None), ``metrics`` and ``submission_path``. ``log.jsonl`` gets
    ``imagenet_det/mAP``, the best model's metric.
    """

    name = "imagenet_det"
    main_metric = "imagenet_det/mAP"

    def configure(self, *, blacklist: Optional[PathLike] = None, with_coco: bool = True, **options: Any) -> None:
        self.submission_path = self.output_dir / SUBMISSION_NAME if self.output_dir else None
        self.blacklist, self.with_coco = blacklist, with_coco
        self.result: Optional[DetEvalResult] = None
        self.ground_truth: Optional[DetGroundTruth] = None
        self.coco: Optional[Dict[str, float]] = None

    def compute(self, predictions: List[Dict[str, Any]]) -> Dict[str, Any]:
        self.result, self.ground_truth, self.coco = evaluate_predictions(
            predictions,
            self.dataset.coco.dataset,
            self.dataset.label_to_cat_id,
            blacklist=self.blacklist,
            submission_path=self.submission_path,
            with_coco=self.with_coco,
        )
        self.metrics = metrics_dict(self.result, self.ground_truth.wnids, self.coco)
        if self.metrics_path is not None:
            write_metrics(self.metrics, self.metrics_path)
        return self.metrics

    def format(self, metrics: Mapping[str, Any]) -> str:
        return format_table(self.result, self.ground_truth, self.coco)


register_evaluator("imagenet_det", ImageNetDetEvaluator, formats=("imagenet_det",))
