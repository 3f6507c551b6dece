"""Wrappers that make a :class:`ResNet` a drop-in backbone for torchvision's detectors.

Both expose an ``int`` attribute ``out_channels`` and return an ordered dict of feature maps, which is
what ``torchvision.models.detection.FasterRCNN`` / ``MaskRCNN`` expect::

    from torchvision.models.detection import FasterRCNN
    from restransfer.backbone import resnet_fpn
    backbone = resnet_fpn(101, weights="torchvision://resnet101")
    model = FasterRCNN(backbone, num_classes=91)

RetinaNet and FCOS take P3..P7, with P6 and P7 made by strided convolutions::

    from torchvision.models.detection import RetinaNet
    backbone = resnet_fpn(50, weights="torchvision://resnet50", extra_blocks="p6p7")  # res3..res5 + P6, P7
    model = RetinaNet(backbone, num_classes=91)

Attribute names (``body``, ``fpn``) match torchvision's ``BackboneWithFPN`` so that torchvision detector
checkpoints load unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .fpn import LeanFeaturePyramidNetwork
from .resnet import STAGE_NAMES, ResNet
from .weights import PixelConvention, load_pretrained_state, read_pretrained

__all__ = ["build_resnet", "resnet_fpn", "resnet_c4", "BackboneWithFPN", "BackboneC4"]


def build_resnet(depth: int, *, weights: Optional[str] = None, **resnet_kwargs) -> ResNet:
    """``ResNet(depth, **resnet_kwargs)`` with ImageNet weights from ``weights`` (see
    :func:`~restransfer.backbone.load_pretrained`), built with their pixel convention."""
    pretrained = read_pretrained(weights) if weights else None
    model = ResNet(depth, pixel_convention=pretrained.convention if pretrained else None, **resnet_kwargs)
    if pretrained is not None:
        load_pretrained_state(model, pretrained)
    return model


EXTRA_BLOCKS = ("maxpool", "p6p7", "none")


class BackboneWithFPN(nn.Module):
    """ResNet + Feature Pyramid Network: outputs ``"0".."3"`` (P2..P5, strides 4..32) and ``"pool"`` (P6,
    stride 64, by max-pooling P5) with ``out_channels`` channels each.

    ``extra_blocks="p6p7"`` adds ``"p6"`` and ``"p7"`` (strides x2 and x4 of the last level) by 3x3 stride-2
    convolutions on the last FPN level instead, as RetinaNet and FCOS use them (with ``res3..res5``: P3..P7);
    ``"none"`` adds nothing. ``extra_block`` (bool) is the older switch for ``"maxpool"``/``"none"``.

    Input ``(B, 3, H, W)``; output ordered dict of ``(B, out_channels, H/s, W/s)``.
    """

    def __init__(
        self,
        body: ResNet,
        out_channels: int = 256,
        extra_block: bool = True,
        norm_layer: Optional[type] = None,
        extra_blocks: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.body = body
        extra_blocks = extra_blocks or ("maxpool" if extra_block else "none")
        if extra_blocks not in EXTRA_BLOCKS:
            raise ValueError(f"extra_blocks={extra_blocks!r}: choose one of {', '.join(EXTRA_BLOCKS)}")
        in_channels = [body.out_channels[n] for n in body.out_features]
        extra = {
            "maxpool": LastLevelMaxPool,
            "p6p7": lambda: LastLevelP6P7(out_channels, out_channels),
            "none": lambda: None,
        }[extra_blocks]()
        self.fpn = LeanFeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra, norm_layer=norm_layer)
        self.out_channels = out_channels
        last = body.strides[body.out_features[-1]]
        self.strides = [body.strides[n] for n in body.out_features] + {
            "maxpool": [last * 2],
            "p6p7": [last * 2, last * 4],
            "none": [],
        }[extra_blocks]

    @property
    def pixel_convention(self) -> PixelConvention:
        return self.body.pixel_convention

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        # no reference to the body's maps is kept here, so that the FPN can free each one once it is read
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x).values())))


class BackboneC4(nn.Module):
    """The shared trunk of the paper's C4 detector: conv1..conv4_x (res4, stride 16), output ``{"0": res4}``."""

    def __init__(self, body: ResNet) -> None:
        super().__init__()
        if body.out_features != ("res4",):
            raise ValueError(f"BackboneC4 needs a ResNet with out_features=('res4',), got {body.out_features}")
        self.body = body
        self.out_channels = body.out_channels["res4"]
        self.strides = [16]

    @property
    def pixel_convention(self) -> PixelConvention:
        return self.body.pixel_convention

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return OrderedDict([("0", self.body(x)["res4"])])


def resnet_fpn(
    depth: int,
    *,
    weights: Optional[str] = None,
    out_channels: int = 256,
    extra_block: bool = True,
    out_features: Optional[Sequence[str]] = None,
    extra_blocks: Optional[str] = None,
    **resnet_kwargs,
) -> BackboneWithFPN:
    """A ResNet-FPN backbone for torchvision's ``FasterRCNN``/``MaskRCNN`` (and, with ``extra_blocks="p6p7"``,
    ``RetinaNet``/``FCOS``).

    Args:
        depth: 18, 34, 50, 101 or 152.
        weights: ImageNet weights (file, ``torchvision://resnet101``, ``timm://...``), or None.
        out_channels: FPN width.
        extra_block: add P6 by max pooling (used by the RPN).
        out_features: which stages feed the FPN (default ``res2..res5``; ``res3..res5`` with ``"p6p7"``).
        extra_blocks: ``"maxpool"``, ``"p6p7"`` (P6 and P7 by strided convolutions, for RetinaNet and FCOS) or
            ``"none"``; overrides ``extra_block``.
        **resnet_kwargs: :class:`ResNet` keyword arguments (``style``, ``norm``, ``freeze_at``, ``residual``).
    """
    if out_features is None:
        out_features = STAGE_NAMES[1:] if extra_blocks == "p6p7" else STAGE_NAMES
    body = build_resnet(depth, weights=weights, out_features=tuple(out_features), **resnet_kwargs)
    return BackboneWithFPN(body, out_channels=out_channels, extra_block=extra_block, extra_blocks=extra_blocks)


def resnet_c4(depth: int, *, weights: Optional[str] = None, **resnet_kwargs) -> BackboneC4:
    """The C4 trunk (conv1..conv4_x, stride 16) as a backbone for torchvision's detectors.

    With torchvision's ``FasterRCNN`` pass ``rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),),
    ((0.5, 1.0, 2.0),))`` since there is one feature map. :func:`restransfer.models.build_model` builds the
    paper's complete C4 detector (res5 as the per-region head).
    """
    resnet_kwargs.pop("out_features", None)
    return BackboneC4(build_resnet(depth, weights=weights, out_features=("res4",), **resnet_kwargs))
