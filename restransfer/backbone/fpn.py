"""torchvision's Feature Pyramid Network, computed with a lower memory peak.

:class:`LeanFeaturePyramidNetwork` has torchvision's ``FeaturePyramidNetwork`` modules and state dict and
returns the same maps (bit for bit: the same convolutions and the same additions), but its top-down pass
holds fewer full-resolution maps at once. torchvision's loop keeps, at the finest level, the input map, the
lateral map, an upsampled copy of the coarser map, their sum and the output alive together (five maps of
P2's size, 56 MB each for 256 channels at 200x272). Here:

* the coarser map is added into the lateral map in place; where the finer map is exactly twice as large
  (sizes divisible by the coarsest stride, as the detectors pad them), the nearest-neighbour upsampling is a
  broadcast over 2x2 blocks and no upsampled copy is made;
* each input map is released as soon as its lateral map exists (the caller hands them over, see
  :meth:`LeanFeaturePyramidNetwork.forward`), except the last, which ``LastLevelP6P7`` reads; with
  another kind of extra block, which may read any of them, all are kept.

Under autograd the backward pass keeps what it needs either way (the saved inputs of the convolutions), so the
sum is torchvision's out-of-place one there and the saving is in inference, whose peak (R101-FPN at 800x1067)
is the FPN's in torchvision's form.
Under TorchScript, tracing or ``torch.compile`` the module runs torchvision's own loop.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

__all__ = ["LeanFeaturePyramidNetwork", "add_upsampled_"]


def add_upsampled_(fine: Tensor, coarse: Tensor) -> Tensor:
    """``fine += interpolate(coarse, size=fine.shape[-2:], mode="nearest")``, in place; returns ``fine``.

    When ``fine`` is exactly twice ``coarse`` in both sides, each coarse pixel is added to its 2x2 block
    through a broadcast view (no upsampled copy); otherwise the upsampled map is made and added."""
    h, w = coarse.shape[-2:]
    if fine.shape[-2:] == (2 * h, 2 * w) and fine.shape[:-2] == coarse.shape[:-2]:
        # splitting a dimension is a view in any memory layout (channels_last included)
        blocks = fine.unflatten(-1, (w, 2)).unflatten(-3, (h, 2))  # (..., h, 2, w, 2)
        blocks.add_(coarse.unsqueeze(-1).unsqueeze(-3))
        return fine
    return fine.add_(F.interpolate(coarse, size=fine.shape[-2:], mode="nearest"))


class LeanFeaturePyramidNetwork(FeaturePyramidNetwork):
    """``torchvision.ops.FeaturePyramidNetwork`` (same arguments, modules and outputs) with a lower memory peak;
    see the module docstring."""

    def forward(self, x: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The FPN maps of ``x`` (ordered from the finest level), as torchvision's ``forward``.

        ``x`` is consumed: its entries are removed as they are read, so that each input map can be freed as
        soon as its lateral map exists (a caller that keeps its own references keeps the maps)."""
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return super().forward(x)
        names = list(x.keys())
        feats: List[Tensor] = [x.pop(k) for k in names]
        # torchvision's own extra blocks read at most the last input map (P6 from C5)
        release = self.extra_blocks is None or type(self.extra_blocks) in (LastLevelMaxPool, LastLevelP6P7)
        last_inner = self.get_result_from_inner_blocks(feats[-1], -1)
        results = [self.get_result_from_layer_blocks(last_inner, -1)]
        for idx in range(len(feats) - 2, -1, -1):
            inner = self.get_result_from_inner_blocks(feats[idx], idx)
            if release:
                del feats[idx]
            if torch.is_grad_enabled() and (inner.requires_grad or last_inner.requires_grad):
                # under autograd torchvision's out-of-place sum: the backward keeps its inputs either way, and
                # an in-place add on a view would make it copy whole gradient maps
                last_inner = inner + F.interpolate(last_inner, size=inner.shape[-2:], mode="nearest")
            else:
                last_inner = add_upsampled_(inner, last_inner)
            del inner
            results.insert(0, self.get_result_from_layer_blocks(last_inner, idx))
        del last_inner
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))
