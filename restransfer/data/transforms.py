"""Box- and mask-aware augmentation through albumentations.

Training: resize so that the short side is one of ``min_size_train`` (chosen at random per image)
unless that makes the long side exceed ``max_size_train``, horizontal flip, optional colour jitter.
Test: nothing; the model resizes at test time and maps its boxes back to the stored image.

Every call takes a ``seed`` so that a sample's augmentation is a pure function of (sample, seed):
the training sampler derives the seed from (run seed, iteration, slot), which makes a resumed run
see exactly the augmented batches of an uninterrupted one, whatever the worker count.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Optional, Sequence

import albumentations as A
import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["ResizeShortestEdge", "TrainAugmentation", "build_transforms", "nonempty_boxes"]

# A box narrower or lower than this many pixels is degenerate (torchvision's detection heads require
# x2 > x1 and y2 > y1; the tolerance absorbs float noise from albumentations' normalisation).
MIN_BOX_SIDE = 1e-5


def nonempty_boxes(boxes: np.ndarray, min_side: float = MIN_BOX_SIDE) -> np.ndarray:
    """Boolean mask (N,) of the xyxy boxes (N, 4) whose width and height both exceed ``min_side``."""
    return ((boxes[:, 2] - boxes[:, 0]) > min_side) & ((boxes[:, 3] - boxes[:, 1]) > min_side)


class ResizeShortestEdge(A.SmallestMaxSize):
    """Resize keeping the aspect ratio: short side -> random choice of ``short_sizes``, long side <= ``max_size``.

    The scale is ``min(short / min(h, w), max_size / max(h, w))``, as in detectron2's
    ``ResizeShortestEdge`` and torchvision's ``GeneralizedRCNNTransform``. Masks use nearest-neighbour
    interpolation, so they stay binary.
    """

    def __init__(self, short_sizes: Sequence[int], max_size: int, p: float = 1.0):
        super().__init__(max_size=[int(s) for s in short_sizes], p=p)
        self.long_max = int(max_size)

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        h, w = params["shape"][:2]
        short = self.py_random.choice(self.max_size)
        return {"scale": min(short / min(h, w), self.long_max / max(h, w))}

    def get_transform_init_args_names(self) -> tuple:
        return ("max_size", "long_max")


class TrainAugmentation:
    """An albumentations pipeline applied to an image with its boxes, labels and masks (training-time
    augmentation in the data loader; not the model's own :class:`restransfer.models.transform.DetectionTransform`).

    Called as ``t(image, boxes, labels, masks=None, seed=None)`` with

    * ``image``: uint8 (H, W, 3) RGB;
    * ``boxes``: float (N, 4) internal xyxy in pixels of ``image``;
    * ``labels``: int64 (N,);
    * ``masks``: uint8 (N, H, W) or ``None``;
    * ``seed``: int that fixes every random choice; ``None`` draws one from torch's generator
      (which the DataLoader seeds differently in each worker).

    Returns a dict with ``image`` uint8 (H', W', 3), ``boxes`` float32 (M, 4), ``labels`` int64 (M,),
    ``masks`` uint8 (M, H', W') or ``None``, and ``num_dropped``: how many boxes became degenerate
    (M = N - num_dropped). An empty pipeline returns its inputs unchanged (no copy).
    """

    def __init__(self, transforms: Sequence[A.BasicTransform]):
        self.transforms = list(transforms)
        self.pipeline: Optional[A.Compose] = None
        if self.transforms:
            # "index" travels with each box so that labels and masks of dropped boxes can be dropped too.
            self.pipeline = A.Compose(
                self.transforms,
                bbox_params=A.BboxParams(
                    format="pascal_voc", label_fields=["index"], clip=True, filter_invalid_bboxes=True
                ),
            )

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.transforms) or "identity"
        return f"TrainAugmentation({names})"

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        masks: Optional[np.ndarray] = None,
        seed: Optional[int] = None,
    ) -> Dict[str, Any]:
        if self.pipeline is None:
            return {
                "image": image,
                "boxes": boxes.astype(np.float32, copy=False),
                "labels": labels,
                "masks": masks,
                "num_dropped": 0,
            }
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        # One shared generator for all transforms: seeding each transform with the same seed
        # (Compose.set_random_seed) would correlate their decisions.
        self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
        n = len(boxes)
        data: Dict[str, Any] = {
            "image": image,
            "bboxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            "index": np.arange(n),
        }
        has_masks = masks is not None and n > 0
        if has_masks:
            data["masks"] = masks
        out = self.pipeline(**data)
        image_out = out["image"]
        kept = np.asarray(out["index"], dtype=np.int64)
        boxes_out = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        valid = nonempty_boxes(boxes_out)
        kept, boxes_out = kept[valid], boxes_out[valid]
        masks_out = None
        if masks is not None:
            h, w = image_out.shape[:2]
            masks_out = np.asarray(out["masks"])[kept] if has_masks else np.zeros((0, h, w), dtype=np.uint8)
        return {
            "image": image_out,
            "boxes": boxes_out,
            "labels": np.asarray(labels)[kept],
            "masks": masks_out,
            "num_dropped": n - len(kept),
        }


def build_transforms(
    min_size_train: Sequence[int],
    max_size_train: int,
    hflip_prob: float = 0.5,
    color_jitter: float = 0.0,
    is_train: bool = True,
) -> TrainAugmentation:
    """The training or test pipeline.

    Args:
        min_size_train: candidate short sides in pixels; one is drawn per image.
        max_size_train: cap on the long side after resizing.
        hflip_prob: probability of a horizontal flip.
        color_jitter: brightness, contrast and saturation jitter strength (0 disables).
        is_train: ``False`` gives the identity (no resizing: the model resizes test images itself).
    """
    if not is_train:
        return TrainAugmentation([])
    if not min_size_train:
        raise ConfigError("input.min_size_train is empty: give at least one short-side size, e.g. [800]")
    transforms: list = [ResizeShortestEdge(min_size_train, max_size_train)]
    if hflip_prob > 0:
        transforms.append(A.HorizontalFlip(p=hflip_prob))
    if color_jitter > 0:
        transforms.append(
            A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0.0, p=1.0)
        )
    return TrainAugmentation(transforms)
