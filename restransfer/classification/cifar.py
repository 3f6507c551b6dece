"""The CIFAR-10 networks of section 4.2 of He et al. (2015), residual and plain.

6n+2 weighted layers: a 3x3 convolution with 16 filters, then three stages of 2n 3x3 convolutions with
16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps (the first convolution of the second and third stage
has stride 2), global average pooling and a 10-way fully connected layer. BatchNorm follows every
convolution. Residual nets add an identity shortcut around every pair of 3x3 convolutions; where the
width doubles the shortcut subsamples by 2 and pads the new channels with zeros (option A: no extra
parameters). n = 3, 5, 7, 9, 18 gives the 20, 32, 44, 56 and 110-layer nets (0.27M, 0.46M, 0.66M,
0.85M and 1.7M parameters).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbone import PixelConvention

__all__ = ["CifarResNet", "CifarBlock", "cifar_blocks_per_stage"]


def cifar_blocks_per_stage(depth: int) -> int:
    """n of a 6n+2-layer network (``ValueError`` for other depths)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR network depth {depth} is not 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...)")
    return (depth - 2) // 6


class CifarBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm; with ``residual`` an option-A identity shortcut around them."""

    def __init__(self, cin: int, cout: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual, self.stride, self.extra = residual, stride, cout - cin

    def shortcut(self, x: Tensor) -> Tensor:
        """Identity, subsampled by ``stride`` with the added channels zero (option A)."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """``CifarResNet(depth, residual=True, num_classes=10)``; input (B, 3, 32, 32) normalized images,
    ``forward``/``classify`` return (B, num_classes) logits. ``pixel_convention`` and ``class_names``: how
    images are normalized for the weights it will hold and the names of its columns, when known."""

    def __init__(
        self,
        depth: int = 20,
        *,
        residual: bool = True,
        num_classes: int = 10,
        pixel_convention: Optional[PixelConvention] = None,
        class_names: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        n = cifar_blocks_per_stage(depth)
        self.depth, self.residual, self.num_classes = depth, residual, num_classes
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(CifarBlock(cin, width, 2 if (i > 0 and j == 0) else 1, residual))
                cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.pixel_convention = pixel_convention  # how images are normalized for it (the builder's)
        self.class_names = list(class_names) if class_names is not None else None

    def classify(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(x)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, residual={self.residual}"
