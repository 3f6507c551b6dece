"""The detector module: torchvision's GeneralizedRCNN with input checks and inference speed-ups.

Interface (torchvision's): ``model(images, targets)`` in train mode returns a dict of losses;
``model(images)`` in eval mode returns one dict per image with ``boxes`` (float xyxy, pixels of the
input image), ``labels`` (1..num_classes), ``scores`` and, for Mask R-CNN, ``masks`` (N x 1 x H x W
probabilities at input resolution). Images are float RGB ``(3, H, W)`` in ``[0, 1]``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

__all__ = ["Detector", "validate_targets"]


def validate_targets(targets: Sequence[Dict[str, Tensor]], num_classes: int, with_masks: bool) -> None:
    """Raise ``ValueError`` naming the image index for malformed training targets.

    Each target needs ``boxes`` (N, 4) float xyxy with positive width and height and ``labels`` (N,) in
    ``1..num_classes``; with masks, ``masks`` (N, H, W). An image without objects has N = 0.
    """
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}]: needs 'boxes' and 'labels' (got keys {sorted(t)})")
        boxes, labels = t["boxes"], t["labels"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"targets[{i}]: boxes must have shape (N, 4), got {tuple(boxes.shape)}")
        if labels.shape[0] != boxes.shape[0]:
            raise ValueError(f"targets[{i}]: {labels.shape[0]} labels for {boxes.shape[0]} boxes")
        if boxes.numel():
            bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bad.any():
                j = int(bad.nonzero()[0])
                raise ValueError(f"targets[{i}]: box {j} {boxes[j].tolist()} has zero or negative width or height "
                                 "(boxes are x1, y1, x2, y2 with x2 > x1 and y2 > y1); drop or fix it")
            if not torch.isfinite(boxes).all():
                raise ValueError(f"targets[{i}]: boxes contain NaN or infinite values")
            out = (labels < 1) | (labels > num_classes)
            if out.any():
                j = int(out.nonzero()[0])
                raise ValueError(f"targets[{i}]: label {int(labels[j])} of box {j} is outside 1..{num_classes} "
                                 f"(0 is background; model.num_classes = {num_classes})")
        if with_masks:
            if "masks" not in t:
                raise ValueError(f"targets[{i}]: Mask R-CNN training needs 'masks' (N, H, W)")
            if t["masks"].shape[0] != boxes.shape[0]:
                raise ValueError(f"targets[{i}]: {t['masks'].shape[0]} masks for {boxes.shape[0]} boxes")


class Detector(GeneralizedRCNN):
    """Faster/Mask R-CNN (C4 or FPN). Build it with :func:`restransfer.models.build_model`.

    Extra attributes: ``num_classes`` (foreground classes), ``arch``, ``head``, ``class_names``.
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module, transform: nn.Module, *,
                 num_classes: int, arch: str, head: str, class_names: Optional[List[str]] = None) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.num_classes = num_classes
        self.arch = arch
        self.head = head
        self.class_names = list(class_names) if class_names else [str(i) for i in range(1, num_classes + 1)]
        self._optimized = False

    @property
    def with_masks(self) -> bool:
        return self.roi_heads.has_mask()

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets; call model.eval() for inference")
            if len(targets) != len(images):
                raise ValueError(f"got {len(images)} images but {len(targets)} targets")
            validate_targets(targets, self.num_classes, self.with_masks)
        return super().forward(images, targets)

    @torch.no_grad()
    def optimize_for_inference(self) -> "Detector":
        """Fold frozen BatchNorms into convolutions (same outputs up to float noise). Irreversible: use on a
        model that will only run inference (the Predictor and evaluation do this by default)."""
        if self._optimized:
            return self
        for m in self.modules():
            if m is not self and hasattr(m, "fuse_frozen_bn"):
                m.fuse_frozen_bn()
        self._optimized = True
        return self
