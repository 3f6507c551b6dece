"""The detector module: torchvision's GeneralizedRCNN with input checks and inference speed-ups.

Interface (torchvision's): ``model(images, targets)`` in train mode returns a dict of losses;
``model(images)`` in eval mode returns one dict per image with ``boxes`` (float xyxy, pixels of the
input image), ``labels`` (1..num_classes), ``scores`` and, for Mask R-CNN, ``masks`` (N x 1 x H x W
probabilities at input resolution). Images are float RGB ``(3, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ..backbone.norms import freeze_batchnorm
from ..backbone.weights import PixelConvention
from ..devices import precision_dtype
from .fused import fuse_modules
from .postprocess import use_fast_postprocess
from .precision_hooks import prepare_roi_features, set_inference_precision

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
                raise ValueError(
                    f"targets[{i}]: box {j} {boxes[j].tolist()} has zero or negative width or height "
                    "(boxes are x1, y1, x2, y2 with x2 > x1 and y2 > y1); drop or fix it"
                )
            if not torch.isfinite(boxes).all():
                raise ValueError(f"targets[{i}]: boxes contain NaN or infinite values")
            out = (labels < 1) | (labels > num_classes)
            if out.any():
                j = int(out.nonzero()[0])
                raise ValueError(
                    f"targets[{i}]: label {int(labels[j])} of box {j} is outside 1..{num_classes} "
                    f"(0 is background; model.num_classes = {num_classes})"
                )
        if with_masks:
            if "masks" not in t:
                raise ValueError(f"targets[{i}]: Mask R-CNN training needs 'masks' (N, H, W)")
            if t["masks"].shape[0] != boxes.shape[0]:
                raise ValueError(f"targets[{i}]: {t['masks'].shape[0]} masks for {boxes.shape[0]} boxes")


class Detector(GeneralizedRCNN):
    """Faster/Mask R-CNN (C4 or FPN). Build it with :func:`restransfer.models.build_model`.

    Extra attributes: ``num_classes`` (foreground classes), ``arch``, ``head``, ``class_names`` and
    ``pixel_convention`` (the :class:`~restransfer.backbone.PixelConvention` ``transform`` applies, which
    training checkpoints record).
    """

    def __init__(
        self,
        backbone: nn.Module,
        rpn: nn.Module,
        roi_heads: nn.Module,
        transform: nn.Module,
        *,
        num_classes: int,
        arch: str,
        head: str,
        class_names: Optional[List[str]] = None,
        pixel_convention: Optional[PixelConvention] = None,
    ) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.pixel_convention = pixel_convention
        self.num_classes = num_classes
        self.arch = arch
        self.head = head
        self.class_names = list(class_names) if class_names else [str(i) for i in range(1, num_classes + 1)]
        self._optimized = False

    @property
    def with_masks(self) -> bool:
        return self.roi_heads.has_mask()

    def forward(
        self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None
    ) -> Union[Dict[str, Tensor], List[Dict[str, Tensor]]]:
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets; call model.eval() for inference")
            if len(targets) != len(images):
                raise ValueError(f"got {len(images)} images but {len(targets)} targets")
            validate_targets(targets, self.num_classes, self.with_masks)
        return super().forward(images, targets)

    @torch.no_grad()
    def optimize_for_inference(
        self, *, fold_bn: bool = True, fuse: bool = True, channels_last: bool = True, precision: str = "fp32"
    ) -> "Detector":
        """Make this model a faster inference-only model, in place.

        Irreversible: the model goes to eval mode with frozen parameters; use it on a model that will only
        run inference (the Predictor and evaluation do this by default, ``test.optimize``). With
        ``precision="fp32"`` the detections equal the unoptimized model's up to float noise.

        Args:
            fold_bn: fold BatchNorms (frozen ones, and trainable ones with their running statistics) into
                the convolutions before them.
            fuse: fused oneDNN convolution + residual + ReLU kernels on CPU (needs ``fold_bn`` for the
                ResNet blocks; :mod:`restransfer.models.fused`), parallel RoIAlign and single-allocation
                mask pasting (:mod:`restransfer.models.postprocess`).
            channels_last: NHWC activations for the convolutions; RoIAlign gets NCHW maps, made contiguous
                once per image batch.
            precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the feature layers; scores, box
                regression and box arithmetic stay fp32 (see :mod:`restransfer.models.precision_hooks`).
        """
        options = dict(fold_bn=fold_bn, fuse=fuse, channels_last=channels_last, precision=precision)
        precision_dtype(precision)  # validate before changing anything
        if self._optimized:
            if self._optimized != options:
                raise RuntimeError(
                    f"this model was already optimized with {self._optimized}; build a new model "
                    f"to optimize it with {options}"
                )
            return self
        self.eval().requires_grad_(False)
        if fold_bn:
            freeze_batchnorm(self)  # eval-mode BatchNorm = its running statistics, foldable like FrozenBN
            for m in self.modules():
                if m is not self and hasattr(m, "fuse_frozen_bn"):
                    m.fuse_frozen_bn()
        if fuse:
            fuse_modules(self)
            use_fast_postprocess(self)
        if channels_last:
            self.to(memory_format=torch.channels_last)
            prepare_roi_features(self)
        set_inference_precision(self, precision)
        self._optimized = options
        return self
