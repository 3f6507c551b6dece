"""Inference: the loop over a dataset (the plain detector or the paper's test-time system, one dispatch),
the :class:`Predictor` (images in, detections out), the demo, export to TorchScript/ONNX, and image-classifier
scores (classification testing, the localization task's classifier mode)."""

from .classifier import classifier_scores, classifier_scores_from_model, load_classifier
from .demo import find_images, run_demo
from .export import export_onnx, export_outputs, export_torchscript, prepare_for_export, verify_export
from .loop import inference_on_dataset
from .predictor import Predictor

__all__ = [
    "inference_on_dataset",
    "Predictor",
    "find_images",
    "run_demo",
    "export_torchscript",
    "export_onnx",
    "export_outputs",
    "prepare_for_export",
    "verify_export",
    "classifier_scores",
    "classifier_scores_from_model",
    "load_classifier",
]
