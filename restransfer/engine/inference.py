"""Running a detector over a dataset (also across processes) and evaluating the result."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from ..devices import autocast_context, precision_dtype, resolve_device, resolve_precision  # noqa: F401 (re-exported)
from ..models.postprocess import deferred_mask_paste, detection_masks
from ..distributed import all_gather_object, get_rank, get_world_size, is_main_process

logger = logging.getLogger(__name__)

__all__ = ["autocast_context", "inference_on_dataset", "predict_dataset", "evaluate_model", "build_eval_model"]


def _to_numpy_prediction(output: Dict[str, torch.Tensor], image_id: int, image_size: Tuple[int, int],
                         mask_threshold: float = 0.5) -> Dict[str, Any]:
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
                         progress: bool = True) -> List[Dict[str, Any]]:
    """Predictions (the per-image dicts used across the toolkit) for every image ``loader`` yields.

    Masks are binarized at 0.5 and stored as COCO RLE, so memory stays small on large sets; a
    :class:`~restransfer.models.Detector` hands over its low-resolution mask probabilities and each mask
    is encoded from its box alone (:func:`~restransfer.models.postprocess.deferred_mask_paste`), so no
    full-image float or binary mask stack is ever built.
    """
    model.eval()
    predictions: List[Dict[str, Any]] = []
    show = progress and sys.stderr.isatty() and is_main_process()
    bar = None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=len(loader), desc="inference", unit="batch")
    start = time.perf_counter()
    with torch.inference_mode(), autocast_context(device, precision), deferred_mask_paste(model):
        for images, targets in loader:
            images = [img.to(device, non_blocking=True) for img in images]
            outputs = model(images)
            for out, img, tgt in zip(outputs, images, targets):
                predictions.append(_to_numpy_prediction(out, tgt["image_id"], img.shape[-2:]))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start
    logger.info("inference on %d images: %.2f s (%.3f s/image)", len(predictions), elapsed,
                elapsed / max(1, len(predictions)))
    return predictions


def build_eval_model(cfg, weights: Optional[str], class_names: Optional[List[str]], device: torch.device, *,
                     optimize: Optional[bool] = None, precision: Optional[str] = None) -> nn.Module:
    """The model of ``cfg`` with ``weights`` (a checkpoint; default ``model.weights``) loaded and prepared for
    inference: the fast paths when ``optimize`` (default ``cfg.test.optimize``), and ``precision`` (default
    ``cfg.test.precision``) for the feature layers (scores and box arithmetic stay fp32; see
    :meth:`~restransfer.models.Detector.optimize_for_inference`)."""
    from ..models import build_model, inference_kwargs

    kwargs = inference_kwargs(cfg)
    if optimize is not None:
        kwargs.update(fold_bn=optimize, fuse=optimize, channels_last=optimize)
    if precision is not None:
        precision_dtype(precision)  # before the model is built
        kwargs["precision"] = precision
    if weights:
        cfg = cfg.copy()
        OmegaConf.update(cfg, "model.weights", str(weights), merge=False)
    if not cfg.model.weights:
        logger.warning("no detector weights given (weights, --weights or model.weights): the detector is untrained")
    model = build_model(cfg, class_names=class_names).to(device)
    return model.optimize_for_inference(**kwargs)


def _gather(predictions: List[Dict[str, Any]], dataset) -> List[Dict[str, Any]]:
    """All processes' predictions on every rank, in the dataset's image order."""
    gathered = all_gather_object(predictions)
    merged = {p["image_id"]: p for part in gathered for p in part}
    return [merged[i] for i in dataset.image_ids if i in merged]


def predict_dataset(cfg, weights: Optional[str] = None, dataset=None, model: Optional[nn.Module] = None,
                    progress: bool = True) -> Tuple[Any, List[Dict[str, Any]]]:
    """Run the config's model over its test set (``cfg.data.test``).

    Args:
        cfg: the config.
        weights: detector checkpoint; default ``cfg.model.weights``.
        dataset: a test dataset to use instead of ``cfg.data.test``.
        model: an already built model to use instead of building one.

    Returns:
        ``(dataset, predictions)``: predictions are per-image dicts ``{"image_id", "boxes" (N, 4) xyxy in
        original pixels, "scores", "labels" (1..K), "masks" (RLE list, Mask R-CNN)}`` in dataset order, the
        same on every process.
    """
    from ..data.build import build_test_dataset, build_test_loader

    device = resolve_device(cfg.device)
    if dataset is None:
        dataset = build_test_dataset(cfg)
    if len(dataset.class_names) != cfg.model.num_classes:
        raise ValueError(f"the test set {getattr(dataset, 'name', '')} has {len(dataset.class_names)} classes but "
                         f"model.num_classes is {cfg.model.num_classes}; set model.num_classes="
                         f"{len(dataset.class_names)}")
    precision = cfg.test.precision  # autocast for a model given as is (e.g. the one in training)
    if model is None:
        model = build_eval_model(cfg, weights, dataset.class_names, device)
        precision = "fp32"  # the built model applies test.precision itself, layer by layer
    loader = build_test_loader(cfg, dataset, get_rank(), get_world_size())
    predictions = inference_on_dataset(model, loader, device, precision, progress=progress)
    return dataset, _gather(predictions, dataset)


def evaluate_model(cfg, model: Optional[nn.Module] = None, weights: Optional[str] = None, dataset=None,
                   output_dir: Optional[str] = None, metrics_path: Optional[str] = None,
                   progress: bool = True) -> Optional[Dict[str, Any]]:
    """Training's COCO evaluation: :func:`restransfer.evaluation.run.run_coco_evaluation` writing
    ``coco_results.json`` (original category ids) and ``metrics.json`` into ``output_dir`` (or
    ``metrics_path``), then the printed table. Returns the metrics on the main process, None elsewhere.
    """
    from ..evaluation.coco import format_metrics_table
    from ..evaluation.run import run_coco_evaluation

    out = Path(output_dir or cfg.output_dir)
    metrics = run_coco_evaluation(cfg, weights, model=model, dataset=dataset, progress=progress,
                                  metrics_path=metrics_path or out / "metrics.json",
                                  results_path=out / "coco_results.json")
    if metrics is not None:
        print(format_metrics_table(metrics), flush=True)
    return metrics
