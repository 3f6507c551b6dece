"""torchvision's network identical to a config's detector, and random weights that behave like trained ones.

:func:`torchvision_reference` builds torchvision's ``FasterRCNN``/``MaskRCNN`` on
``resnet_fpn_backbone(...)`` with the config's sizes and thresholds (:func:`reference_incompatibility`
says when there is none: C4 head, caffe style, BGR input...); the config model's state dict loads into
it unchanged.

Without trained weights, :func:`randomize_weights` calibrates random ones: every frozen BatchNorm gets
the statistics of its input on the benchmark image (so activations neither vanish nor explode through
101 layers) and a few classes get a score bias so that detections exist. Agreement in bf16 on such
weights means little: random RPN scores are near-ties, so tiny rounding differences reorder
proposals. Judge bf16 by the AP of a trained model (``tools/eval_coco.py CONFIG --weights W
test.precision=bf16``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from ..backbone.resnet import BasicBlock, Bottleneck
from ..errors import ConfigError
from ..models.build import detector_kwargs, pixel_convention

__all__ = ["reference_incompatibility", "torchvision_reference", "randomize_weights"]


def reference_incompatibility(cfg: DictConfig) -> Optional[str]:
    """Why torchvision has no identical network for ``cfg`` (``None`` when it has one)."""
    m = cfg.model
    conv = pixel_convention(m, None)
    checks = [
        (m.head == "fpn", "the C4 head has no torchvision counterpart"),
        (m.backbone.style == "pytorch", "torchvision's ResNet is the pytorch style (stride in the 3x3 conv)"),
        (m.backbone.norm == "frozen_bn", "torchvision's detection backbones use frozen BatchNorm"),
        (m.backbone.residual, "torchvision has no plain (non-residual) ResNet"),
        (conv.channel_order == "RGB", "torchvision's transform has no BGR input"),
        (not m.roi_heads.class_agnostic_box_reg, "torchvision's box predictor is class-specific"),
        (
            m.fpn_extra_block and m.fpn_out_channels == 256,
            "resnet_fpn_backbone has 256 FPN channels and the P6 max-pool level",
        ),
    ]
    for ok, reason in checks:
        if not ok:
            return reason
    return None


def torchvision_reference(cfg: DictConfig) -> nn.Module:
    """torchvision's ``FasterRCNN``/``MaskRCNN`` with ``resnet_fpn_backbone`` and the config's sizes and
    thresholds; load the config model's state dict into it (the keys are the same)."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    reason = reference_incompatibility(cfg)
    if reason:
        raise ConfigError(f"no torchvision reference for this config: {reason}")
    m, h = cfg.model, cfg.model.roi_heads
    backbone = resnet_fpn_backbone(
        backbone_name=f"resnet{m.backbone.depth}", weights=None, trainable_layers=5 - m.backbone.freeze_at
    )
    kwargs = detector_kwargs(m, 5)
    names = ["0", "1", "2", "3"]
    kwargs["box_roi_pool"] = MultiScaleRoIAlign(names, h.pooler_resolution, h.sampling_ratio)
    kwargs["box_head"] = TwoMLPHead(256 * h.pooler_resolution**2, h.fpn_representation_size)
    ctor = FasterRCNN
    if m.arch == "mask_rcnn":
        ctor = MaskRCNN
        kwargs["mask_roi_pool"] = MultiScaleRoIAlign(names, h.mask_pooler_resolution, h.sampling_ratio)
        kwargs["mask_head"] = MaskRCNNHeads(256, (h.mask_conv_dim,) * 4, 1)
        kwargs["mask_predictor"] = MaskRCNNPredictor(h.mask_conv_dim, h.mask_conv_dim, m.num_classes + 1)
    kwargs["box_predictor"] = FastRCNNPredictor(h.fpn_representation_size, m.num_classes + 1)
    conv = pixel_convention(m, None)
    return ctor(
        backbone,
        num_classes=None,
        min_size=cfg.input.min_size_test,
        max_size=cfg.input.max_size_test,
        image_mean=[v / 255.0 for v in conv.mean],
        image_std=[v / 255.0 for v in conv.std],
        **kwargs,
    )


@torch.no_grad()
def randomize_weights(
    model: nn.Module,
    images: Sequence[Tensor],
    num_biased_classes: int = 3,
    class_bias: float = 4.0,
    residual_gain: float = 0.2,
) -> None:
    """Make random weights behave like trained ones for timing and agreement checks (in place).

    Every FrozenBatchNorm2d takes the per-channel mean and variance of its input on ``images`` (one
    forward pass; the statistics are set just before each layer runs), so each normalized activation
    has unit scale. The BatchNorm that closes each residual branch is then scaled by
    ``residual_gain``, as trained ResNets have small scales there: with a gain of 1 a random 101-layer
    network is chaotic (a 1e-7 perturbation grows to 1e-4 in fp32, bf16 rounding to 35% at res5),
    which is a property of the random network, not of the arithmetic. Classes ``1..num_biased_classes``
    get ``class_bias`` on their score logit so that detections exist.
    """
    was_training = model.training
    model.eval()

    def set_stats(bn: FrozenBatchNorm2d, args: Tuple[Tensor, ...]) -> None:
        x = args[0].float()
        bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        batch = model.transform(list(images))[0]
        model.backbone(batch.tensors)
    finally:
        for hk in hooks:
            hk.remove()
    for block in model.modules():
        if isinstance(block, (BasicBlock, Bottleneck)) and block.residual:
            last_bn = getattr(block, block.conv_bn_pairs[-1][1])
            if isinstance(last_bn, FrozenBatchNorm2d):
                last_bn.weight.mul_(residual_gain)
                last_bn.bias.mul_(residual_gain)
    bias = model.roi_heads.box_predictor.cls_score.bias
    bias[1 : 1 + num_biased_classes] += class_bias
    model.train(was_training)
