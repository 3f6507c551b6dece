"""ResNet backbones (He et al. 2015), their ImageNet weights, and wrappers for torchvision's detectors."""

from .norms import FrozenBatchNorm2d, get_norm
from .resnet import DEPTHS, STAGE_NAMES, BasicBlock, Bottleneck, ResNet
from .weights import MSRA_BGR, TORCHVISION_RGB, LoadReport, PixelConvention, WeightsError, load_pretrained
from .wrappers import BackboneC4, BackboneWithFPN, build_resnet, resnet_c4, resnet_fpn

__all__ = [
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "DEPTHS",
    "STAGE_NAMES",
    "FrozenBatchNorm2d",
    "get_norm",
    "load_pretrained",
    "PixelConvention",
    "TORCHVISION_RGB",
    "MSRA_BGR",
    "LoadReport",
    "WeightsError",
    "build_resnet",
    "resnet_fpn",
    "resnet_c4",
    "BackboneWithFPN",
    "BackboneC4",
]
