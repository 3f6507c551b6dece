"""Moved: the loop over a dataset is :mod:`restransfer.inference.loop`, the evaluation model builders are in
:mod:`restransfer.models`, and a protocol run (training's evaluation) is :mod:`restransfer.engine.evaluate`.
This name keeps old imports working."""

from ..devices import autocast_context, precision_dtype, resolve_device, resolve_precision  # noqa: F401
from ..inference.loop import inference_on_dataset
from ..models.build import build_eval_model
from .evaluate import evaluate_model, predict_dataset

__all__ = ["autocast_context", "inference_on_dataset", "predict_dataset", "evaluate_model", "build_eval_model"]
