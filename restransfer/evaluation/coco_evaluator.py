"""The COCO protocol as an :class:`~restransfer.evaluation.evaluator.Evaluator`: pycocotools' numbers
(:mod:`restransfer.evaluation.coco`) over the gathered predictions, the COCO results json and ``metrics.json``.

Registered as ``coco`` for test sets of format ``coco`` (and of the ImageNet formats too when named:
``test.evaluator=coco`` scores an ImageNet-DET json with COCO's AP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .coco import evaluate_predictions, format_metrics_table
from .evaluator import DatasetEvaluator, PathLike, register_evaluator

__all__ = ["COCOEvaluator", "RESULTS_NAME"]

RESULTS_NAME = "coco_results.json"  # beside metrics.json unless a results path is given


class COCOEvaluator(DatasetEvaluator):
    """COCO box (and mask) AP of a :class:`~restransfer.data.coco.CocoDataset`'s predictions.

    Args:
        dataset: the test dataset (``coco``, ``image_ids``, ``label_to_cat_id``).
        output_dir: where ``metrics.json`` and ``coco_results.json`` go (None: no files, unless the paths below
            are given).
        metrics_path, results_path: those two files' paths instead.
        iou_types: ``bbox`` and/or ``segm`` (default: bbox, plus segm when the predictions carry masks).
        engine: the COCOeval implementation (:func:`restransfer.evaluation.coco.evaluate_coco`).
        options: other protocols' options, ignored.

    ``log.jsonl`` gets ``bbox/AP`` and ``bbox/AP50``; the best model is the one of highest ``bbox/AP``.
    """

    name = "coco"
    main_metric = "bbox/AP"

    def configure(
        self,
        *,
        iou_types: Optional[Sequence[str]] = None,
        results_path: Optional[PathLike] = None,
        engine: str = "auto",
        **options: Any,
    ) -> None:
        self.results_path = (
            Path(results_path)
            if results_path
            else self.metrics_path.with_name(RESULTS_NAME)
            if self.metrics_path
            else None
        )
        self.iou_types = list(iou_types) if iou_types else None
        self.engine = engine

    def compute(self, predictions: List[Dict[str, Any]]) -> Dict[str, Any]:
        self.metrics = evaluate_predictions(
            self.dataset,
            predictions,
            iou_types=self.iou_types,
            engine=self.engine,
            metrics_path=self.metrics_path,
            results_path=self.results_path,
        )
        return self.metrics

    def scalars(self, metrics: Mapping[str, Any]) -> Dict[str, float]:
        bbox = metrics.get("bbox")
        return {"bbox/AP": float(bbox["AP"]), "bbox/AP50": float(bbox["AP50"])} if bbox else {}

    def format(self, metrics: Mapping[str, Any]) -> str:
        return format_metrics_table(metrics)


register_evaluator("coco", COCOEvaluator, formats=("coco",))
