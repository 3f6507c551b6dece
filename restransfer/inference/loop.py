"""The loop over a dataset: a detector (or the paper's test-time system) run over every image, on every process
its share, the predictions handed to an evaluator as they come.

The one dispatch between the plain model and the test-time system is
:func:`restransfer.models.system.build_test_model`; everything that runs a config's model over its test set
(evaluation, training's periodic and final evaluations, the tools) goes through :func:`run_on_test_set`, so
``test.aug``, ``test.box_refinement`` and ensembles apply everywhere.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.build import build_test_dataset, build_test_loader
from ..devices import autocast_context, resolve_device
from ..distributed import get_rank, get_world_size, is_main_process
from ..errors import ConfigError
from ..evaluation.evaluator import Evaluator, gather_predictions
from ..models.postprocess import deferred_mask_paste, detection_masks
from ..models.system import build_test_model

logger = logging.getLogger(__name__)

__all__ = ["to_prediction", "inference_on_dataset", "model_for_test_set", "run_on_test_set", "predict_dataset"]

Weights = Union[None, str, Sequence[str]]


def to_prediction(output: Dict[str, torch.Tensor], image_id: int, image_size: Tuple[int, int],
                  mask_threshold: float = 0.5) -> Dict[str, Any]:
    """One image's model output -> the toolkit's prediction dict of numpy arrays (masks as COCO RLE)."""
    pred: Dict[str, Any] = {
        "image_id": int(image_id),
        "boxes": output["boxes"].float().cpu().numpy().astype(np.float32),
        "scores": output["scores"].float().cpu().numpy().astype(np.float32),
        "labels": output["labels"].cpu().numpy().astype(np.int64),
    }
    if "masks" in output or "mask_probs" in output:
        pred["masks"] = detection_masks(output, image_size, mask_threshold, format="rle")
    return pred


def inference_on_dataset(model: nn.Module, loader, device: torch.device, precision: str = "fp32",
                         progress: bool = True, evaluator: Optional[Evaluator] = None) -> List[Dict[str, Any]]:
    """Predictions (the per-image dicts used across the toolkit) for every image ``loader`` yields (this
    process's share); with an ``evaluator``, each batch also goes to ``evaluator.process`` as it comes.

    Masks are binarized at 0.5 and stored as COCO RLE, so memory stays small on large sets; a
    :class:`~restransfer.models.Detector` hands over its low-resolution mask probabilities and each mask
    is encoded from its box alone (:func:`~restransfer.models.postprocess.deferred_mask_paste`), so no
    full-image float or binary mask stack is ever built.
    """
    model.eval()
    predictions: List[Dict[str, Any]] = []
    show = progress and sys.stderr.isatty() and is_main_process()
    bar = tqdm(total=len(loader), desc="inference", unit="batch") if show else None
    start = time.perf_counter()
    with torch.inference_mode(), autocast_context(device, precision), deferred_mask_paste(model):
        for images, targets in loader:
            images = [img.to(device, non_blocking=True) for img in images]
            outputs = model(images)
            batch = [to_prediction(out, tgt["image_id"], img.shape[-2:])
                     for out, img, tgt in zip(outputs, images, targets)]
            if evaluator is not None:
                evaluator.process(targets, batch)
            predictions.extend(batch)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start
    logger.info("inference on %d images: %.2f s (%.3f s/image)", len(predictions), elapsed,
                elapsed / max(1, len(predictions)))
    return predictions


def model_for_test_set(cfg, weights: Weights, dataset, device: torch.device,
               model: Optional[nn.Module] = None) -> Tuple[nn.Module, str]:
    """``(model, autocast precision)`` that runs over ``dataset``: a given ``model`` (e.g. the one being
    trained) as it is, under ``test.precision`` autocast; else :func:`~restransfer.models.system.build_test_model`
    (the plain detector, or the test-time system for several ``weights`` or ``cfg.test``'s extras), which
    applies ``test.precision`` layer by layer itself (no autocast around it)."""
    if len(dataset.class_names) != cfg.model.num_classes:
        raise ConfigError(f"the test set {getattr(dataset, 'name', '')} has {len(dataset.class_names)} classes but "
                          f"model.num_classes is {cfg.model.num_classes}; set model.num_classes="
                          f"{len(dataset.class_names)}")
    if model is not None:
        return model, cfg.test.precision
    return build_test_model(cfg, weights, dataset.class_names, device), "fp32"


def run_on_test_set(cfg, weights: Weights = None, *, dataset=None, model: Optional[nn.Module] = None,
                    evaluator: Optional[Evaluator] = None, progress: bool = True) -> Tuple[Any, List[Dict[str, Any]]]:
    """Run the config's model over its test set (``cfg.data.test``) on this process's share of the images.

    Args:
        cfg: the config.
        weights: detector checkpoint (default ``cfg.model.weights``), or several: the paper's ensemble.
        dataset: a test dataset to use instead of ``cfg.data.test``.
        model: an already built model (e.g. the one being trained) to run as it is.
        evaluator: gets every batch (:meth:`~restransfer.evaluation.evaluator.Evaluator.process`).

    Returns:
        ``(dataset, predictions of this process)``.
    """
    device = resolve_device(cfg.device)
    dataset = dataset if dataset is not None else build_test_dataset(cfg)
    model, precision = model_for_test_set(cfg, weights, dataset, device, model)
    loader = build_test_loader(cfg, dataset, get_rank(), get_world_size())
    return dataset, inference_on_dataset(model, loader, device, precision, progress=progress, evaluator=evaluator)


def predict_dataset(cfg, weights: Weights = None, dataset=None, model: Optional[nn.Module] = None,
                    progress: bool = True) -> Tuple[Any, Optional[List[Dict[str, Any]]]]:
    """:func:`run_on_test_set`, every process's predictions gathered to the main process.

    Returns:
        ``(dataset, predictions)``: predictions are per-image dicts ``{"image_id", "boxes" (N, 4) xyxy in
        original pixels, "scores", "labels" (1..K), "masks" (RLE list, Mask R-CNN)}`` in dataset order on
        the main process, None on the others.
    """
    dataset, predictions = run_on_test_set(cfg, weights, dataset=dataset, model=model, progress=progress)
    return dataset, gather_predictions(predictions, dataset.image_ids)
