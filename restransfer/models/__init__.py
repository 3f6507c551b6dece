"""Faster R-CNN and Mask R-CNN with ResNet backbones, C4 and FPN, built from a config; the paper's test-time
system around trained detectors; the models evaluation and the Predictor run."""

from .build import build_eval_model, build_model, inference_kwargs, pixel_convention
from .checkpoint import CLASS_DEPENDENT, checkpoint_class_names, load_detector_weights
from .detector import Detector, validate_targets
from .system import DetectionSystem, build_test_model

__all__ = [
    "build_model",
    "build_eval_model",
    "build_test_model",
    "Detector",
    "DetectionSystem",
    "load_detector_weights",
    "checkpoint_class_names",
    "validate_targets",
    "CLASS_DEPENDENT",
    "pixel_convention",
    "inference_kwargs",
]
