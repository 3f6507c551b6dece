"""Moved: the top-5 localization guesses (detector, classifier, ground-truth class) and the scores-file reader
are :mod:`restransfer.evaluation.imagenet_loc_guesses`, the guess container and submission writers
:mod:`restransfer.evaluation.imagenet_loc_io`, classifier scoring and loading :mod:`restransfer.inference.classifier`,
and the config-mode evaluation :func:`restransfer.engine.evaluate.run_imagenet_loc_evaluation`. This name keeps
old imports working; nothing in the package imports it (the import contract puts it above every layer)."""

from __future__ import annotations

from typing import Dict, Optional

from omegaconf import DictConfig

from .engine.evaluate import run_imagenet_loc_evaluation
from .evaluation.imagenet_loc_guesses import (
    MODES,
    classifier_guesses,
    detector_guesses,
    gt_class_guesses,
    label_wnids,
    load_classifier_scores,
)
from .evaluation.imagenet_loc_io import LocGuesses, write_devkit_submission, write_kaggle_submission
from .inference.classifier import classifier_scores_from_model, load_classifier

__all__ = [
    "LocGuesses",
    "MODES",
    "label_wnids",
    "detector_guesses",
    "classifier_guesses",
    "gt_class_guesses",
    "write_devkit_submission",
    "write_kaggle_submission",
    "load_classifier_scores",
    "classifier_scores_from_model",
    "load_classifier",
    "localize_and_evaluate",
]


def localize_and_evaluate(cfg: DictConfig, weights: Optional[str] = None, **kwargs) -> Optional[Dict[str, float]]:
    """Deprecated name of :func:`restransfer.engine.evaluate.run_imagenet_loc_evaluation` (same arguments)."""
    return run_imagenet_loc_evaluation(cfg, weights, **kwargs)
