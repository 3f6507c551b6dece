"""Moved to :mod:`restransfer.inference.predictor`; this name keeps ``from restransfer.predictor import ...``
working. Nothing in the package imports it (the import contract puts it above every layer)."""

from .inference.predictor import ImageInput, Predictor, checkpoint_class_names, to_rgb_uint8

__all__ = ["Predictor", "ImageInput", "to_rgb_uint8", "checkpoint_class_names"]
