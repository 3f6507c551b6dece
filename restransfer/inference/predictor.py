"""Images in, detections out: :class:`Predictor` wraps a config, its weights and the inference fast paths.

::

    from restransfer import Predictor
    predictor = Predictor("configs/coco_mask_rcnn_r101_fpn.yaml", weights="output/model_final.pth")
    result = predictor("street.jpg")                 # or an (H, W, 3) RGB array, or a list of them
    result["boxes"], result["scores"], result["class_names"], result["masks"]

Inputs may be image files (decoded with OpenCV; grayscale and palette images become RGB, an alpha
channel is dropped), numpy arrays ``(H, W, 3)`` (RGB unless ``channel_order="BGR"``), ``(H, W)``
grayscale, ``(H, W, 4)`` with alpha, or float tensors ``(3, H, W)`` in [0, 1] (RGB). Integer arrays
hold 0..255 (uint8) or 0..65535 (uint16); float arrays 0..1.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from ..config import load_config
from ..data.image_io import read_image
from ..devices import resolve_device
from ..errors import ConfigError
from ..models.checkpoint import checkpoint_class_names
from ..models.postprocess import check_mask_format, deferred_mask_paste, detection_masks
from ..models.system import build_test_model, weights_list

__all__ = ["Predictor", "ImageInput", "to_rgb_uint8", "checkpoint_class_names"]

ImageInput = Union[str, os.PathLike, np.ndarray, Tensor]


def to_rgb_uint8(image: np.ndarray, channel_order: str = "RGB", where: str = "image") -> np.ndarray:
    """Bring a numpy image to ``(H, W, 3)`` uint8 RGB.

    Accepts ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` and ``(H, W, 4)`` (alpha dropped); uint8, uint16
    (scaled to 0..255), bool, or float in [0, 1]. ``channel_order`` says whether the 3 or 4 colour
    channels are RGB(A) or BGR(A). ``where`` names the input in error messages.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{where}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where}: the image is empty (shape {image.shape})")
    image = image[:, :, :3]
    if channel_order == "BGR":
        image = image[:, :, ::-1]
    elif channel_order != "RGB":
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    if image.dtype == np.uint8:
        out = image
    elif image.dtype == np.uint16:
        out = (image.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif image.dtype == np.bool_:
        out = image.astype(np.uint8) * 255
    elif np.issubdtype(image.dtype, np.floating):
        lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{where}: float images must hold values in [0, 1], found {lo:g}..{hi:g}; divide "
                "0..255 data by 255 or pass it as uint8"
            )
        out = (image * 255.0 + 0.5).astype(np.uint8)
    else:
        raise TypeError(f"{where}: unsupported dtype {image.dtype}; use uint8, uint16, bool or float in [0, 1]")
    return np.ascontiguousarray(out)


class Predictor:
    """A detector ready for inference: build, load weights, optimize, then call it on images.

    Args:
        config_or_path: a YAML config path or a loaded config (:func:`restransfer.config.load_config`).
        weights: detector checkpoint (default: the config's ``model.weights``), or a list of checkpoints of
            the same classes: the paper's ensemble (:class:`restransfer.models.system.DetectionSystem`, as
            are the test-time extras of ``cfg.test``: box refinement, ``test.aug``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        threshold: keep detections whose score exceeds this (the model's own ``score_thresh`` rule).
        channel_order: channel order of numpy inputs, ``"RGB"`` or ``"BGR"`` (OpenCV's ``imread``).
        batch_size: images per forward pass (default: ``test.ims_per_batch``).
        class_names: names of classes 1..K (default: the checkpoint's ``class_names``, else "1".."K").
        precision: ``fp32``/``bf16``/``fp16`` (default: ``test.precision``).
        optimize: inference fast paths (default: ``test.optimize``); see
            :meth:`restransfer.models.Detector.optimize_for_inference`.
        mask_threshold: a mask pixel is on when its probability exceeds this.
        mask_format: ``"bool"``: ``masks`` is a bool (N, H, W) array; ``"rle"``: a list of N COCO RLE
            dicts ``{"size": [H, W], "counts": str}`` (decode with ``pycocotools.mask.decode``), encoded
            box by box, so memory does not grow with H x W x N. Either way masks are pasted one detection
            at a time, without full-image float probabilities.
        overrides: ``key=value`` config overrides when ``config_or_path`` is a path.

    Calling it on one input returns one dict, on a list a list of dicts::

        {"boxes": float32 (N, 4) x1 y1 x2 y2 in input pixels, "scores": float32 (N,),
         "labels": int64 (N,) in 1..K, "class_names": list of N str,
         "masks": bool (N, H, W) or N RLE dicts (mask models only, see mask_format), "image_size": (H, W)}

    sorted by decreasing score.
    """

    def __init__(
        self,
        config_or_path: Union[str, os.PathLike, DictConfig],
        weights: Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]] = None,
        device: str = "cpu",
        threshold: float = 0.5,
        channel_order: str = "RGB",
        batch_size: Optional[int] = None,
        class_names: Optional[Sequence[str]] = None,
        precision: Optional[str] = None,
        optimize: Optional[bool] = None,
        mask_threshold: float = 0.5,
        mask_format: str = "bool",
        overrides: Iterable[str] = (),
    ) -> None:
        if isinstance(config_or_path, DictConfig):
            cfg = copy.deepcopy(config_or_path)
            if overrides:
                raise ValueError("overrides apply to a config path; change the loaded config directly instead")
        else:
            cfg = load_config(config_or_path, list(overrides))
        members = weights_list(weights)  # several checkpoints: an ensemble
        first = members[0] if members else cfg.model.weights  # the config stays as given
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.mask_format = check_mask_format(mask_format)
        self.cfg = cfg
        self.device = resolve_device(device)
        self.threshold = float(threshold)
        self.mask_threshold = float(mask_threshold)
        self.channel_order = channel_order
        self.batch_size = int(batch_size or cfg.test.ims_per_batch or 1)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if class_names is None and first:
            class_names = checkpoint_class_names(first)
        if class_names is not None and len(class_names) != cfg.model.num_classes:
            raise ConfigError(
                f"{len(class_names)} class names for model.num_classes = {cfg.model.num_classes}; "
                "model.num_classes must match the weights' classes"
            )
        model = build_test_model(cfg, members, class_names, self.device, optimize=optimize, precision=precision)
        # scores at or below the threshold are dropped anyway; dropping them before NMS and the mask head
        # saves work without changing what is kept (NMS only lets a box suppress lower-scoring ones)
        model.roi_heads.score_thresh = max(float(model.roi_heads.score_thresh), self.threshold)
        self.model = model
        self.class_names = list(model.class_names)

    # ------------------------------------------------------------------------------------ inputs

    def _load(self, item: ImageInput, index: int) -> Tensor:
        """One input -> float RGB tensor (3, H, W) in [0, 1] on the model's device."""
        where = f"input {index}"
        if isinstance(item, (str, os.PathLike)):
            rgb = read_image(item)  # raises CorruptImageError naming the file
            return torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).float().div_(255.0)
        if isinstance(item, Tensor):
            if item.dim() != 3 or item.shape[0] != 3 or not item.is_floating_point():
                raise ValueError(
                    f"{where}: tensors must be float RGB (3, H, W) in [0, 1], got {item.dtype} {tuple(item.shape)}"
                )
            return item.to(self.device, torch.float32)
        if isinstance(item, np.ndarray):
            rgb = to_rgb_uint8(item, self.channel_order, where)
            return torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).float().div_(255.0)
        raise TypeError(f"{where}: expected an image path, a numpy array or a tensor, got {type(item).__name__}")

    # ----------------------------------------------------------------------------------- outputs

    def _result(self, out: Dict[str, Tensor], image_size: tuple) -> Dict[str, Any]:
        keep = out["scores"] > self.threshold
        labels = out["labels"][keep].cpu().numpy().astype(np.int64)
        result: Dict[str, Any] = {
            "boxes": out["boxes"][keep].float().cpu().numpy(),
            "scores": out["scores"][keep].float().cpu().numpy(),
            "labels": labels,
            "class_names": [self.class_names[int(k) - 1] for k in labels],
            "image_size": tuple(int(s) for s in image_size),
        }
        if "masks" in out or "mask_probs" in out:
            result["masks"] = detection_masks(out, result["image_size"], self.mask_threshold, self.mask_format, keep)
        return result

    @torch.inference_mode()
    def predict(self, inputs: Sequence[ImageInput]) -> List[Dict[str, Any]]:
        """Detections for each of ``inputs``, run ``batch_size`` images at a time (files are decoded one
        batch at a time, so a long list does not sit in memory)."""
        results: List[Dict[str, Any]] = []
        for start in range(0, len(inputs), self.batch_size):
            images = [self._load(x, start + i) for i, x in enumerate(inputs[start : start + self.batch_size])]
            with deferred_mask_paste(self.model):
                outputs = self.model(images)
            results.extend(self._result(o, im.shape[-2:]) for o, im in zip(outputs, images))
        return results

    def __call__(self, inputs: Union[ImageInput, Sequence[ImageInput]]):
        """One input -> one result dict; a list or tuple of inputs -> a list of them."""
        if isinstance(inputs, (list, tuple)):
            return self.predict(list(inputs))
        return self.predict([inputs])[0]
