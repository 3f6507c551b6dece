"""ResNet-18/34/50/101/152 exactly as in He et al., "Deep Residual Learning for Image Recognition" (2015).

Table 1 of the paper: a 7x7/64 stride-2 stem with 3x3 max pool (``stem``, stride 4), then four stages
``res2..res5`` (conv2_x..conv5_x) whose spatial size halves and width doubles from stage to stage.
Depths 18/34 use basic blocks (two 3x3 convs), 50/101/152 bottleneck blocks (1x1, 3x3, 1x1 with 4x
expansion). Shortcuts are identity where the shape is unchanged and projections (1x1 conv + norm,
option B of the paper) where it changes.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1..layer4``, ``fc``) so torchvision and
timm state dicts load as they are; the feature names follow the paper (``res2..res5``).

``style="caffe"`` puts a bottleneck stage's stride 2 in its first 1x1 convolution, as the original MSRA
models do; ``style="pytorch"`` puts it in the 3x3 convolution, as torchvision does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .folded import conv_norm
from .norms import NORMS, FrozenBatchNorm2d, fold_frozen_bn, freeze_batchnorm, get_norm
from .weights import PixelConvention

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "DEPTHS", "STAGE_NAMES"]

# depth -> (block type, blocks per stage), Table 1 of the paper
DEPTHS: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")
STYLES = ("pytorch", "caffe")


def _conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation, bias=False)


class _Block(nn.Module):
    """Shared plumbing of both block types: the constructor, the shortcut and BN folding. A block type defines
    ``_layers(cin, width, cout, stride, norm, style, dilation)``, which creates its convolutions and norms in
    parameter order (torchvision's state dict names), and its ``forward``."""

    expansion = 1
    conv_bn_pairs: Tuple[Tuple[str, str], ...] = ()
    downsample: Optional[nn.Sequential]

    def __init__(
        self,
        cin: int,
        width: int,
        stride: int = 1,
        *,
        norm: str = "frozen_bn",
        style: str = "pytorch",
        residual: bool = True,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        cout = width * self.expansion
        self._layers(cin, width, cout, stride, norm, style, dilation)
        if residual and (stride != 1 or cin != cout):
            self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), get_norm(norm, cout))
        else:
            self.downsample = None
        self.residual = residual

    def _add_shortcut(self, out: Tensor, x: Tensor) -> Tensor:
        if self.residual:
            # in place: no layer keeps its output for backward
            out += x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x, self.training)
        return F.relu_(out)

    @torch.no_grad()
    def fuse_frozen_bn(self) -> None:
        """Fold every FrozenBatchNorm2d into the convolution before it (inference only)."""
        for conv_name, bn_name in self.conv_bn_pairs:
            bn = getattr(self, bn_name)
            if isinstance(bn, FrozenBatchNorm2d):
                setattr(self, conv_name, fold_frozen_bn(getattr(self, conv_name), bn))
                setattr(self, bn_name, nn.Identity())
        if self.downsample is not None and isinstance(self.downsample[1], FrozenBatchNorm2d):
            self.downsample[0] = fold_frozen_bn(self.downsample[0], self.downsample[1])
            self.downsample[1] = nn.Identity()


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34). The stride sits in the first 3x3 in both styles."""

    expansion = 1
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def _layers(self, cin: int, width: int, cout: int, stride: int, norm: str, style: str, dilation: int) -> None:
        self.conv1 = _conv(cin, width, 3, stride, dilation)
        self.bn1 = get_norm(norm, width)
        self.conv2 = _conv(width, cout, 3, 1, dilation)
        self.bn2 = get_norm(norm, cout)

    def forward(self, x: Tensor) -> Tensor:
        # in training, frozen BatchNorms ride on the convolutions (see backbone.folded)
        out = F.relu_(conv_norm(self.conv1, self.bn1, x, self.training))
        return self._add_shortcut(conv_norm(self.conv2, self.bn2, out, self.training), x)


class Bottleneck(_Block):
    """1x1 (reduce) -> 3x3 -> 1x1 (expand x4) (ResNet-50/101/152)."""

    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def _layers(self, cin: int, width: int, cout: int, stride: int, norm: str, style: str, dilation: int) -> None:
        s1, s3 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = _conv(cin, width, 1, s1)
        self.bn1 = get_norm(norm, width)
        self.conv2 = _conv(width, width, 3, s3, dilation)
        self.bn2 = get_norm(norm, width)
        self.conv3 = _conv(width, cout, 1)
        self.bn3 = get_norm(norm, cout)

    def forward(self, x: Tensor) -> Tensor:
        # in training, frozen BatchNorms ride on the convolutions (see backbone.folded)
        out = F.relu_(conv_norm(self.conv1, self.bn1, x, self.training))
        out = F.relu_(conv_norm(self.conv2, self.bn2, out, self.training))
        return self._add_shortcut(conv_norm(self.conv3, self.bn3, out, self.training), x)


BLOCKS: Dict[str, Type[_Block]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_stage(
    block: Type[_Block], cin: int, width: int, num_blocks: int, stride: int, **block_kwargs
) -> nn.Sequential:
    """A stage of ``num_blocks`` blocks; the first one changes stride/width (projection shortcut)."""
    blocks = [block(cin, width, stride, **block_kwargs)]
    cout = width * block.expansion
    blocks += [block(cout, width, 1, **block_kwargs) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """ResNet backbone (and classifier when ``num_classes`` is set).

    Args:
        depth: 18, 34, 50, 101 or 152.
        style: ``"pytorch"`` or ``"caffe"`` (where a bottleneck stage puts its stride 2).
        norm: ``"frozen_bn"``, ``"bn"``, ``"syncbn"`` or ``"gn"``.
        freeze_at: 0 freezes nothing, 1 the stem, k >= 2 the stem and res2..res<k>. Frozen parts have
            ``requires_grad=False`` and their BatchNorms become FrozenBatchNorm2d (they stay frozen after
            ``.train()``).
        out_features: which of ``stem, res2, res3, res4, res5`` ``forward`` returns (in this order).
        num_classes: when set, adds global average pooling and the ``fc`` layer used by :meth:`classify`.
        residual: ``False`` builds the plain network of the same depth (no shortcuts), as in the paper's
            plain-versus-residual comparison.
        pixel_convention: how images must be presented to the weights this network will hold
            (:class:`~restransfer.backbone.PixelConvention`; None: not known yet).
        class_names: names of the classifier's columns, when known (a classifier checkpoint's).

    Input: ``(B, 3, H, W)`` normalized images. ``forward`` returns an ordered dict of feature maps;
    ``out_channels[name]`` and ``strides[name]`` describe each.
    """

    def __init__(
        self,
        depth: int,
        *,
        style: str = "pytorch",
        norm: str = "frozen_bn",
        freeze_at: int = 2,
        out_features: Sequence[str] = STAGE_NAMES,
        num_classes: Optional[int] = None,
        residual: bool = True,
        pixel_convention: Optional[PixelConvention] = None,
        class_names: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth {depth!r} is not supported; valid depths: {', '.join(map(str, DEPTHS))}")
        if style not in STYLES:
            raise ValueError(f"style={style!r} is not supported; use one of {', '.join(STYLES)}")
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} is not supported; use one of {', '.join(NORMS)}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at={freeze_at} must be between 0 (nothing frozen) and 5 (everything)")
        valid = ("stem",) + STAGE_NAMES
        for name in out_features:
            if name not in valid:
                raise ValueError(f"out_features: {name!r} is not one of {', '.join(valid)}")
        self.depth, self.style, self.norm, self.residual = depth, style, norm, residual
        self.freeze_at = freeze_at
        self.out_features = tuple(n for n in valid if n in out_features)
        block_name, layers = DEPTHS[depth]
        block = BLOCKS[block_name]
        self.block_type = block

        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = get_norm(norm, 64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.out_channels: Dict[str, int] = {"stem": 64}
        self.strides: Dict[str, int] = {"stem": 4}
        cin = 64
        kw = dict(norm=norm, style=style, residual=residual)
        for i, (name, n) in enumerate(zip(STAGE_NAMES, layers)):
            width = 64 * 2**i
            stage = make_stage(block, cin, width, n, stride=1 if i == 0 else 2, **kw)
            self.add_module(f"layer{i + 1}", stage)
            cin = width * block.expansion
            self.out_channels[name] = cin
            self.strides[name] = 4 * 2**i

        # only build what forward needs: stages after the last requested feature are dropped
        last = valid.index(self.out_features[-1]) if self.out_features else len(valid) - 1
        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(cin, num_classes)
        else:
            for i in range(last, 4):
                delattr(self, f"layer{i + 1}")
                del self.out_channels[STAGE_NAMES[i]], self.strides[STAGE_NAMES[i]]

        self._init_weights()
        self.pixel_convention = pixel_convention
        self.class_names = list(class_names) if class_names is not None else None
        self.freeze(freeze_at)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> List[Tuple[str, nn.Module]]:
        """The stages that exist in this module, as ``(feature name, module)`` pairs."""
        return [
            (n, getattr(self, f"layer{i + 1}")) for i, n in enumerate(STAGE_NAMES) if hasattr(self, f"layer{i + 1}")
        ]

    def pop_stage(self, name: str = "res5") -> Tuple[nn.Sequential, int]:
        """Remove the last stage from the trunk and return it with its output channels.

        The C4 detector runs res5 per region on pooled res4 features; the stage keeps the weights and the
        freezing it had here.
        """
        stages = self.stages()
        if not stages or stages[-1][0] != name:
            raise ValueError(f"pop_stage: {name!r} is not the last stage of this ResNet ({[n for n, _ in stages]})")
        idx = STAGE_NAMES.index(name)
        stage = getattr(self, f"layer{idx + 1}")
        delattr(self, f"layer{idx + 1}")
        channels = self.out_channels.pop(name)
        self.strides.pop(name)
        self.out_features = tuple(n for n in self.out_features if n != name)
        return stage, channels

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and res2..res<freeze_at> (``freeze_at >= 2``)."""
        self.freeze_at = freeze_at
        parts: List[nn.Module] = []
        if freeze_at >= 1:
            self.bn1 = freeze_batchnorm(self.bn1)
            parts += [self.conv1, self.bn1]
        for i, (name, stage) in enumerate(self.stages()):
            if freeze_at >= i + 2:
                freeze_batchnorm(stage)
                parts.append(stage)
        for p in parts:
            for param in p.parameters():
                param.requires_grad_(False)

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(F.relu_(conv_norm(self.conv1, self.bn1, x, self.training)))

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        """``x``: (B, 3, H, W) -> ordered dict ``{name: (B, out_channels[name], H/stride, W/stride)}``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        outputs: "OrderedDict[str, Tensor]" = OrderedDict()
        x = self.stem(x)
        if "stem" in self.out_features:
            outputs["stem"] = x
        for name, stage in self.stages():
            if len(outputs) == len(self.out_features):
                break
            x = stage(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits ``(B, num_classes)`` for normalized images ``(B, 3, H, W)``."""
        if self.num_classes is None:
            raise RuntimeError("classify() needs a ResNet built with num_classes (e.g. ResNet(101, num_classes=1000))")
        x = self.stem(x)
        for _, stage in self.stages():
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    @torch.no_grad()
    def fuse_frozen_bn(self) -> "ResNet":
        """Fold frozen BatchNorms into their convolutions (inference speed-up; same outputs up to float noise)."""
        if isinstance(self.bn1, FrozenBatchNorm2d):
            self.conv1 = fold_frozen_bn(self.conv1, self.bn1)
            self.bn1 = nn.Identity()
        for _, stage in self.stages():
            for blk in stage:
                blk.fuse_frozen_bn()
        return self

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, style={self.style}, norm={self.norm}, freeze_at={self.freeze_at}, "
            f"residual={self.residual}, out_features={self.out_features}"
        )
