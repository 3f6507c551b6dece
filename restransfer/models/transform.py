"""Image normalization that follows the backbone weights' pixel convention.

Models take torchvision's input: a list of float RGB images ``(3, H, W)`` in ``[0, 1]``, or uint8 RGB
images in ``0..255`` (what the training loader hands over: a quarter of the bytes), which the transform
converts first with ``image.float() / 255``, the very arithmetic that made the float images, so both
give the same numbers. The transform then reorders channels (MSRA/Caffe weights expect BGR) and
normalizes with a mean/std given in 0..255 units
(torchvision's ImageNet statistics are 123.675/255 = 0.485, ...), then resizes and pads like
torchvision's :class:`GeneralizedRCNNTransform`.

In training the data pipeline already resized each image to one of the train sizes (albumentations,
box- and mask-aware), so the transform does not resize again unless ``train_resize=True``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

__all__ = ["DetectionTransform"]


class DetectionTransform(GeneralizedRCNNTransform):
    """:class:`GeneralizedRCNNTransform` with a channel order and 0..255 statistics.

    Args:
        min_size: short side at test time (and the train sizes when ``train_resize``).
        max_size: cap of the long side.
        pixel_mean, pixel_std: per-channel statistics in 0..255 units, in the *model's* channel order.
        channel_order: ``"RGB"`` or ``"BGR"``: the order the backbone weights expect.
        size_divisible: padding multiple of the batched tensor.
        train_resize: resize in training mode too (off when the data pipeline resizes).

    Inference post-processing is torchvision's (boxes back to input pixels, masks pasted into the image
    with :meth:`paste_masks`), except that with ``defer_mask_paste`` set (see
    :func:`restransfer.models.postprocess.deferred_mask_paste`) nothing is pasted: each output keeps its
    (N, 1, M, M) mask probabilities as ``"mask_probs"`` (and no ``"masks"``).
    """

    defer_mask_paste = False

    def __init__(
        self,
        min_size: int | Sequence[int],
        max_size: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        channel_order: str = "RGB",
        size_divisible: int = 32,
        train_resize: bool = False,
    ) -> None:
        # statistics in [0, 1] units, computed in float64 so that torchvision's 0.485/0.229/... come out
        # bit-identical for its own weights
        mean01 = [float(m) / 255.0 for m in pixel_mean]
        std01 = [float(s) / 255.0 for s in pixel_std]
        super().__init__(
            min_size if isinstance(min_size, int) else tuple(min_size),
            max_size,
            mean01,
            std01,
            size_divisible=size_divisible,
            _skip_resize=not train_resize,
        )
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        self.channel_order = channel_order
        self.pixel_mean, self.pixel_std = tuple(pixel_mean), tuple(pixel_std)
        self.train_resize = train_resize

    def options(self) -> Dict[str, Any]:
        """The keyword arguments that build an identical transform (of this class or a subclass)."""
        return dict(
            min_size=self.min_size,
            max_size=self.max_size,
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            channel_order=self.channel_order,
            size_divisible=self.size_divisible,
            train_resize=self.train_resize,
        )

    def normalize(self, image: Tensor) -> Tensor:
        if image.dtype == torch.uint8:
            # correctly rounded float32 division, as numpy's in the data loader was: bit-identical images.
            # In place on the new float copy: a second image-sized buffer costs more than the division
            image = image.float().div_(255)
        if not image.is_floating_point():
            raise TypeError(f"images must be float tensors in [0, 1] or uint8 in 0..255 (RGB), got dtype {image.dtype}")
        if image.shape[0] != 3:
            raise ValueError(f"images must have 3 channels (RGB), got shape {tuple(image.shape)}")
        if self.channel_order == "BGR":
            image = image.flip(0)
        return super().normalize(image)

    def paste_masks(self, masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int]) -> Tensor:
        """(N, 1, M, M) probabilities -> (N, 1, H, W) pasted into boxes (N, 4) of an ``image_shape`` image."""
        return paste_masks_in_image(masks, boxes, image_shape)

    def postprocess(
        self,
        result: List[Dict[str, Tensor]],
        image_shapes: List[Tuple[int, int]],
        original_image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Tensor]]:
        if self.training:
            return result
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            if "masks" in pred:
                if self.defer_mask_paste:
                    pred["mask_probs"] = pred.pop("masks")
                else:
                    pred["masks"] = self.paste_masks(pred["masks"], pred["boxes"], o_im_s)
        return result

    def extra_repr(self) -> str:
        return f"channel_order={self.channel_order}, mean={self.image_mean}, std={self.image_std}"
