"""restransfer: ImageNet-pretrained ResNet backbones for Faster R-CNN and Mask R-CNN transfer learning."""

__version__ = "0.1.0"
