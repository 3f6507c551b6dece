"""The loop over a dataset: a detector (or the paper's test-time system) run over every image a loader yields
(on every process its share), the predictions handed to an evaluator as they come.

It sees no config: the model, the loader, the device and the precision are its arguments. The one dispatch
between the plain model and the test-time system is :func:`restransfer.models.system.build_test_model`;
everything that runs a config's model over its test set (evaluation, training's periodic and final
evaluations, the tools) builds both there and here through :func:`restransfer.engine.evaluate.run_on_test_set`,
so ``test.aug``, ``test.box_refinement`` and ensembles apply everywhere.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..devices import autocast_context
from ..distributed import is_main_process
from ..evaluation.evaluator import Evaluator
from ..models.postprocess import deferred_mask_paste, detection_masks

logger = logging.getLogger(__name__)

__all__ = ["to_prediction", "inference_on_dataset"]


def to_prediction(
    output: Dict[str, torch.Tensor], image_id: int, image_size: Tuple[int, int], mask_threshold: float = 0.5
) -> Dict[str, Any]:
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


def inference_on_dataset(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device,
    precision: str = "fp32",
    progress: bool = True,
    evaluator: Optional[Evaluator] = None,
) -> List[Dict[str, Any]]:
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
            batch = [
                to_prediction(out, tgt["image_id"], img.shape[-2:]) for out, img, tgt in zip(outputs, images, targets)
            ]
            if evaluator is not None:
                evaluator.process(targets, batch)
            predictions.extend(batch)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start
    logger.info(
        "inference on %d images: %.2f s (%.3f s/image)", len(predictions), elapsed, elapsed / max(1, len(predictions))
    )
    return predictions
