"""``build_model(cfg)``: Faster/Mask R-CNN with a ResNet backbone, C4 or FPN, from torchvision components.

This is the one place that reads ``cfg.model`` (and the input sizes and ``cfg.test``'s inference options).
:func:`detector_kwargs` turns the config into the keyword arguments of torchvision's
``FasterRCNN``/``MaskRCNN``; :func:`build_model` builds the RPN and the RoI heads from them directly, as
``FasterRCNN.__init__`` does, around our backbone, heads (the C4 ones come from
:mod:`restransfer.models.c4`) and transform.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from ..backbone import MSRA_BGR, TORCHVISION_RGB, PixelConvention, build_resnet
from ..backbone.wrappers import BackboneC4, BackboneWithFPN
from ..devices import precision_dtype
from ..errors import ConfigError
from .c4 import C4BoxHead, Res5Head
from .checkpoint import apply_detector_state, read_detector_checkpoint
from .compile import apply_compile_setting
from .context import ContextBoxHead, GlobalContextPool
from .detector import Detector
from .roi_align import ParallelMultiScaleRoIAlign
from .rpn_head import RPNHead
from .transform import DetectionTransform

logger = logging.getLogger(__name__)

__all__ = [
    "build_model",
    "build_eval_model",
    "ClassAgnosticPredictor",
    "pixel_convention",
    "detector_kwargs",
    "inference_kwargs",
    "system_kwargs",
]


class ClassAgnosticPredictor(nn.Module):
    """Classification scores plus one box regression shared by all classes (repeated per class so that
    torchvision's RoIHeads losses and post-processing apply unchanged)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x).repeat(1, self.num_classes)


def pixel_convention(cfg_model: DictConfig, backbone_convention: Optional[PixelConvention]) -> PixelConvention:
    """Config values win; otherwise the backbone weights' convention; otherwise the style's usual one."""
    base = backbone_convention or (MSRA_BGR if cfg_model.backbone.style == "caffe" else TORCHVISION_RGB)
    return PixelConvention(
        channel_order=cfg_model.channel_order or base.channel_order,
        mean=tuple(cfg_model.pixel_mean) if cfg_model.pixel_mean is not None else base.mean,
        std=tuple(cfg_model.pixel_std) if cfg_model.pixel_std is not None else base.std,
        style=base.style,
    )


def _backbone(
    head: str, depth: int, *, weights: Optional[str], fpn_out_channels: int, fpn_extra_block: bool, **resnet_kwargs: Any
) -> Tuple[nn.Module, Optional[Res5Head]]:
    """The ``head``'s backbone (``fpn``: ResNet + FPN; ``c4``: the trunk to res4, and res5 for the RoI head)
    with ImageNet ``weights``; ``resnet_kwargs``: the ResNet's style, norm, freeze_at and residual."""
    if head == "fpn":
        body = build_resnet(depth, weights=weights, **resnet_kwargs)
        return BackboneWithFPN(body, out_channels=fpn_out_channels, extra_block=fpn_extra_block), None
    # C4: the trunk ends at res4; res5 moves into the RoI head with its ImageNet weights
    body = build_resnet(depth, weights=weights, out_features=("res2", "res3", "res4", "res5"), **resnet_kwargs)
    layer4, channels = body.pop_stage("res5")
    body.out_features = ("res4",)
    return BackboneC4(body), Res5Head(layer4, channels)


def _anchors(head: str, sizes: Sequence[int], aspect_ratios: Sequence[float], num_levels: int) -> AnchorGenerator:
    sizes, ratios = tuple(int(s) for s in sizes), tuple(float(r) for r in aspect_ratios)
    if head == "c4":
        return AnchorGenerator((sizes,), (ratios,))
    if len(sizes) != num_levels:
        raise ConfigError(
            f"model.anchor.sizes: FPN uses one anchor size per level; got {len(sizes)} sizes for "
            f"{num_levels} levels (P2..P{num_levels + 1})"
        )
    return AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * num_levels)


def detector_kwargs(cfg_model: DictConfig, num_levels: int) -> Dict[str, Any]:
    """The keyword arguments of torchvision's ``FasterRCNN``/``MaskRCNN`` that ``cfg.model`` sets: the anchor
    generator for ``num_levels`` feature maps, and the RPN's and RoI heads' sampling, thresholds and
    proposal/detection counts."""
    r, h = cfg_model.rpn, cfg_model.roi_heads
    return dict(
        rpn_anchor_generator=_anchors(
            cfg_model.head, cfg_model.anchor.sizes, cfg_model.anchor.aspect_ratios, num_levels
        ),
        rpn_pre_nms_top_n_train=r.pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=r.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=r.post_nms_top_n_train,
        rpn_post_nms_top_n_test=r.post_nms_top_n_test,
        rpn_nms_thresh=r.nms_thresh,
        rpn_fg_iou_thresh=r.fg_iou_thresh,
        rpn_bg_iou_thresh=r.bg_iou_thresh,
        rpn_batch_size_per_image=r.batch_size_per_image,
        rpn_positive_fraction=r.positive_fraction,
        rpn_score_thresh=r.score_thresh,
        box_score_thresh=h.score_thresh,
        box_nms_thresh=h.nms_thresh,
        box_detections_per_img=h.detections_per_img,
        box_fg_iou_thresh=h.fg_iou_thresh,
        box_bg_iou_thresh=h.bg_iou_thresh,
        box_batch_size_per_image=h.batch_size_per_image,
        box_positive_fraction=h.positive_fraction,
    )


def _rpn(kw: Dict[str, Any], in_channels: int) -> RegionProposalNetwork:
    """The RPN that ``FasterRCNN.__init__`` builds from :func:`detector_kwargs` ``kw``."""
    anchors = kw["rpn_anchor_generator"]
    return RegionProposalNetwork(
        anchors,
        RPNHead(in_channels, anchors.num_anchors_per_location()[0], sampled_per_image=kw["rpn_batch_size_per_image"]),
        kw["rpn_fg_iou_thresh"],
        kw["rpn_bg_iou_thresh"],
        kw["rpn_batch_size_per_image"],
        kw["rpn_positive_fraction"],
        dict(training=kw["rpn_pre_nms_top_n_train"], testing=kw["rpn_pre_nms_top_n_test"]),
        dict(training=kw["rpn_post_nms_top_n_train"], testing=kw["rpn_post_nms_top_n_test"]),
        kw["rpn_nms_thresh"],
        score_thresh=kw["rpn_score_thresh"],
    )


def _roi_heads(kw: Dict[str, Any], modules: Dict[str, nn.Module]) -> RoIHeads:
    """The RoI heads that ``FasterRCNN``/``MaskRCNN.__init__`` build from :func:`detector_kwargs` ``kw`` and the
    pooler, head and predictor ``modules`` (``box_roi_pool``, ``box_head``, ``box_predictor`` [, ``mask_*``])."""
    return RoIHeads(
        modules["box_roi_pool"],
        modules["box_head"],
        modules["box_predictor"],
        kw["box_fg_iou_thresh"],
        kw["box_bg_iou_thresh"],
        kw["box_batch_size_per_image"],
        kw["box_positive_fraction"],
        None,
        kw["box_score_thresh"],
        kw["box_nms_thresh"],
        kw["box_detections_per_img"],
        mask_roi_pool=modules.get("mask_roi_pool"),
        mask_head=modules.get("mask_head"),
        mask_predictor=modules.get("mask_predictor"),
    )


def build_model(
    cfg: DictConfig, class_names: Optional[List[str]] = None, load_weights: bool = True, weights: Optional[str] = None
) -> Detector:
    """Build the detector described by ``cfg.model`` (and ``cfg.input`` for the image sizes).

    Args:
        cfg: the config from :func:`restransfer.config.load_config`.
        class_names: names of classes 1..K for reports (default: the numbers).
        load_weights: load the detector checkpoint (``weights``, else ``cfg.model.weights``; ours or
            torchvision's) when there is one.
        weights: a detector checkpoint to load instead of ``cfg.model.weights`` (the config is not changed).

    Returns:
        A :class:`Detector` following torchvision's detection interface, constructed with its pixel convention
        (the config's, else the checkpoint's, else the backbone weights') and ``class_names``.
    """
    m = cfg.model
    if m.arch not in ("faster_rcnn", "mask_rcnn"):
        raise ConfigError(f"model.arch: {m.arch!r} is not one of faster_rcnn, mask_rcnn")
    if m.head not in ("c4", "fpn"):
        raise ConfigError(f"model.head: {m.head!r} is not one of c4, fpn")
    detector_weights = (str(weights) if weights else m.weights) if load_weights else None
    # a full detector checkpoint replaces the ImageNet backbone weights, so they are not read at all
    backbone_weights = None if detector_weights else m.backbone.weights
    if detector_weights and m.backbone.weights:
        logger.info("model.weights is set: skipping model.backbone.weights (%s)", m.backbone.weights)
    bb, h = m.backbone, m.roi_heads
    backbone, res5 = _backbone(
        m.head,
        bb.depth,
        weights=backbone_weights,
        style=bb.style,
        norm=bb.norm,
        freeze_at=bb.freeze_at,
        residual=bb.residual,
        fpn_out_channels=m.fpn_out_channels,
        fpn_extra_block=m.fpn_extra_block,
    )
    conv = pixel_convention(m, backbone.pixel_convention)
    checkpoint = read_detector_checkpoint(detector_weights) if detector_weights else None
    saved = checkpoint[1].get("pixel_convention") if checkpoint is not None else None
    if saved and m.pixel_mean is None and m.pixel_std is None and m.channel_order is None:
        # the checkpoint was trained with this convention (e.g. from MSRA BGR ImageNet weights)
        conv = PixelConvention.from_dict(saved, style=conv.style)
    kwargs = detector_kwargs(m, len(backbone.strides))
    heads = _roi_head_modules(  # created before the RPN head, in FasterRCNN's order
        backbone,
        res5,
        arch=m.arch,
        head=m.head,
        num_classes=m.num_classes,
        pooler_resolution=h.pooler_resolution,
        c4_pooler_resolution=h.c4_pooler_resolution,
        sampling_ratio=h.sampling_ratio,
        fpn_representation_size=h.fpn_representation_size,
        mask_pooler_resolution=h.mask_pooler_resolution,
        mask_conv_dim=h.mask_conv_dim,
        global_context=h.global_context,
        class_agnostic_box_reg=h.class_agnostic_box_reg,
    )
    transform = DetectionTransform(
        cfg.input.min_size_test,
        cfg.input.max_size_test,
        conv.mean,
        conv.std,
        channel_order=conv.channel_order,
        size_divisible=cfg.input.size_divisibility,
    )
    model = Detector(
        backbone,
        _rpn(kwargs, backbone.out_channels),
        _roi_heads(kwargs, heads),
        transform,
        num_classes=m.num_classes,
        arch=m.arch,
        head=m.head,
        class_names=class_names,
        pixel_convention=conv,
    )
    if checkpoint is not None:
        apply_detector_state(model, checkpoint[0], detector_weights, checkpoint[1])
    return model


def _roi_head_modules(
    backbone: nn.Module,
    res5: Optional[Res5Head],
    *,
    arch: str,
    head: str,
    num_classes: int,
    pooler_resolution: int,
    c4_pooler_resolution: int,
    sampling_ratio: int,
    fpn_representation_size: int,
    mask_pooler_resolution: int,
    mask_conv_dim: int,
    global_context: bool,
    class_agnostic_box_reg: bool,
) -> Dict[str, nn.Module]:
    """RoI poolers, box head and predictor (and mask ones for Mask R-CNN) for ``num_classes`` foreground
    classes on ``backbone`` (``res5``: the C4 head's stage); the sizes are ``model.roi_heads``'."""
    num_classes = num_classes + 1  # + background
    heads: Dict[str, nn.Module] = {}
    if head == "fpn":
        names = [str(i) for i in range(len(backbone.body.out_features))]
        heads["box_roi_pool"] = ParallelMultiScaleRoIAlign(names, pooler_resolution, sampling_ratio)
        heads["box_head"] = TwoMLPHead(backbone.out_channels * pooler_resolution**2, fpn_representation_size)
        box_dim = fpn_representation_size
        if arch == "mask_rcnn":
            heads["mask_roi_pool"] = ParallelMultiScaleRoIAlign(names, mask_pooler_resolution, sampling_ratio)
            heads["mask_head"] = MaskRCNNHeads(backbone.out_channels, (mask_conv_dim,) * 4, 1)
            heads["mask_predictor"] = MaskRCNNPredictor(mask_conv_dim, mask_conv_dim, num_classes)
    else:
        heads["box_roi_pool"] = ParallelMultiScaleRoIAlign(["0"], c4_pooler_resolution, sampling_ratio)
        heads["box_head"] = C4BoxHead(res5)
        box_dim = res5.out_channels
        if arch == "mask_rcnn":
            # the same res5 module (shared weights) on the positive RoIs, then deconv 2x + 1x1 predictor
            heads["mask_roi_pool"] = ParallelMultiScaleRoIAlign(["0"], c4_pooler_resolution, sampling_ratio)
            heads["mask_head"] = res5
            heads["mask_predictor"] = MaskRCNNPredictor(res5.out_channels, mask_conv_dim, num_classes)
    if global_context:  # the whole image as one more region, its feature beside each region's
        heads["box_roi_pool"] = GlobalContextPool(heads["box_roi_pool"])
        heads["box_head"] = ContextBoxHead(heads["box_head"], box_dim)
        box_dim = heads["box_head"].out_channels
    heads["box_predictor"] = (
        ClassAgnosticPredictor(box_dim, num_classes)
        if class_agnostic_box_reg
        else FastRCNNPredictor(box_dim, num_classes)
    )
    return heads


def inference_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """Keyword arguments of :meth:`Detector.optimize_for_inference` from ``cfg.test``.

    ``test.optimize: false`` turns off BN folding, fusion and channels_last (the model then runs the
    same code as torchvision's); ``test.precision`` applies either way.
    """
    t = cfg.test
    opt = bool(t.optimize)
    return dict(fold_bn=opt, fuse=opt, channels_last=opt, precision=str(t.precision))


def system_kwargs(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """Keyword arguments of :class:`restransfer.models.system.DetectionSystem` from ``cfg.test`` (box
    refinement, box voting, test scales, flip, merge), or ``None`` when every test-time extra is off (the
    plain detector then runs unchanged)."""
    t, aug = cfg.test, cfg.test.aug
    plain_sizes = list(aug.min_sizes) in ([], [cfg.input.min_size_test]) and aug.max_size in (
        None,
        cfg.input.max_size_test,
    )
    if not t.box_refinement and plain_sizes and not aug.flip and aug.merge == "union":
        return None
    return dict(
        box_refinement=bool(t.box_refinement),
        refinement_nms=float(t.refinement_nms),
        box_voting_iou=float(t.box_voting_iou),
        min_sizes=[int(s) for s in aug.min_sizes],
        max_size=int(aug.max_size or cfg.input.max_size_test),
        flip=bool(aug.flip),
        merge=str(aug.merge),
    )


def build_eval_model(
    cfg: DictConfig,
    weights: Optional[str],
    class_names: Optional[List[str]],
    device: torch.device,
    *,
    optimize: Optional[bool] = None,
    precision: Optional[str] = None,
) -> Detector:
    """The model of ``cfg`` with ``weights`` (a checkpoint; default ``model.weights``) loaded and prepared for
    inference: the fast paths when ``optimize`` (default ``cfg.test.optimize``), and ``precision`` (default
    ``cfg.test.precision``) for the feature layers (scores and box arithmetic stay fp32; see
    :meth:`~restransfer.models.Detector.optimize_for_inference`), and the backbone compiled when
    ``test.compile`` says so (:mod:`restransfer.models.compile`)."""
    kwargs = inference_kwargs(cfg)
    if optimize is not None:
        kwargs.update(fold_bn=optimize, fuse=optimize, channels_last=optimize)
    if precision is not None:
        precision_dtype(precision)  # before the model is built
        kwargs["precision"] = precision
    if not (weights or cfg.model.weights):
        logger.warning("no detector weights given (weights, --weights or model.weights): the detector is untrained")
    model = build_model(cfg, class_names=class_names, weights=weights).to(device)
    model.optimize_for_inference(**kwargs)
    apply_compile_setting(model, cfg.test.compile, device, key="test.compile")
    return model
