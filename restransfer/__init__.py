"""restransfer: ImageNet-pretrained ResNet backbones for Faster R-CNN and Mask R-CNN transfer learning."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``restransfer.Predictor`` without importing torch and torchvision on ``import restransfer``
    if name == "Predictor":
        from .inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'restransfer' has no attribute {name!r}")
