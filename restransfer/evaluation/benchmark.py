"""Moved to :mod:`restransfer.benchmark.coco_eval`; these names stay importable from here."""
from ..benchmark.coco_eval import compare_engines, max_metric_difference, synthetic_eval_set

__all__ = ["synthetic_eval_set", "compare_engines", "max_metric_difference"]
