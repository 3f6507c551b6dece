"""The ResNet paper's C4 heads: RoI features come from res4 (stride 16) and res5 runs per region.

Box branch: RoIAlign 14x14 on res4 -> res5 (first block stride 2, so 7x7) -> global average pool ->
sibling classification and class-specific box regression (torchvision's ``FastRCNNPredictor``).

Mask branch (Mask R-CNN C4): the *same* res5 module on the positive RoIs -> 2x deconvolution to 256
channels -> 1x1 per-class mask predictor (14x14 masks; torchvision's ``MaskRCNNPredictor``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Res5Head", "C4BoxHead"]


class Res5Head(nn.Module):
    """The conv5_x stage applied to pooled RoI features ``(R, C4, S, S)`` -> ``(R, C5, S/2, S/2)``.

    It takes the ``layer4`` stage of a :class:`~restransfer.backbone.ResNet` (see
    :meth:`ResNet.pop_stage`), so the stage keeps its ImageNet weights and freezing.
    """

    def __init__(self, layer4: nn.Sequential, out_channels: int) -> None:
        super().__init__()
        self.layer4 = layer4
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(x)

    @torch.no_grad()
    def fuse_frozen_bn(self) -> None:
        for blk in self.layer4:
            blk.fuse_frozen_bn()


class C4BoxHead(nn.Module):
    """res5 + global average pooling: ``(R, C4, 14, 14)`` -> ``(R, C5)`` box features."""

    def __init__(self, res5: Res5Head) -> None:
        super().__init__()
        self.res5 = res5
        self.out_channels = res5.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))
