"""Evaluation: one :class:`~restransfer.evaluation.evaluator.Evaluator` per protocol (COCO, ImageNet-DET,
ImageNet localization, PASCAL VOC), the metric cores they compute over arrays, and each protocol's files (results,
submissions, ``metrics.json``). The built-in evaluators register themselves here, so that
``test.evaluator: auto`` knows them wherever the package is imported."""

from . import coco_evaluator, imagenet_det_evaluator, imagenet_loc_evaluator, voc  # noqa: F401 (registration)
from .evaluator import DatasetEvaluator, Evaluator, build_evaluator, evaluator_names, register_evaluator

__all__ = ["Evaluator", "DatasetEvaluator", "register_evaluator", "build_evaluator", "evaluator_names"]
