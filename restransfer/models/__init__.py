"""Faster R-CNN and Mask R-CNN with ResNet backbones, C4 and FPN, built from a config."""
from .build import build_model, inference_kwargs, pixel_convention
from .checkpoint import CLASS_DEPENDENT, load_detector_weights
from .detector import Detector, validate_targets

__all__ = ["build_model", "Detector", "load_detector_weights", "validate_targets", "CLASS_DEPENDENT",
           "pixel_convention", "inference_kwargs"]
