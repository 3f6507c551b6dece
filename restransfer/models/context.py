"""Global context (He et al. 2015, appendix B): the whole image as one more region of the box branch.

The image's feature map is pooled as one RoI covering the image (single-level global spatial pyramid
pooling), passed through the same post-RoI layers as the regions (C4: res5 + average pooling; FPN: the
two FCs), and that global feature is concatenated with every region's feature before the sibling
classification and box-regression layers, whose input is therefore twice as wide. Trained end to end.

:class:`GlobalContextPool` wraps the box branch's RoI pooler and :class:`ContextBoxHead` its box head;
torchvision's ``RoIHeads`` passes the pooler's output to the head unchanged, so the pair needs no other
change (the mask branch keeps its own pooler and sees only the regions).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, NamedTuple, Tuple

import torch
from torch import Tensor, nn

__all__ = ["GlobalContextPool", "ContextBoxHead", "RegionsWithContext", "CONTEXT_HEAD_PREFIX", "has_global_context"]

# state-dict prefix of the post-RoI layers inside a ContextBoxHead: how a checkpoint shows it was trained with
# global context (a plain model's box head layers sit directly under roi_heads.box_head.)
CONTEXT_HEAD_PREFIX = "roi_heads.box_head.regions."


def has_global_context(state_dict_keys: Iterable[str]) -> bool:
    """Whether a detector state dict (its keys) comes from a model with global context."""
    return any(k.startswith(CONTEXT_HEAD_PREFIX) for k in state_dict_keys)


class RegionsWithContext(NamedTuple):
    """Pooled regions ``(R, C, S, S)`` of all images, the pooled whole images ``(B, C, S, S)`` and the number
    of regions of each image (they are in image order)."""

    regions: Tensor
    context: Tensor
    counts: List[int]

    def is_floating_point(self) -> bool:
        # the low-precision input hooks cast only float tensors; ContextBoxHead casts to its own dtype itself
        return False


class GlobalContextPool(nn.Module):
    """A box-branch RoI pooler that also pools each whole image ``(0, 0, W, H)`` with the same pooler (on
    FPN the level the pooler's rule gives a box of the image's size, the coarsest)."""

    def __init__(self, pooler: nn.Module) -> None:
        super().__init__()
        self.pooler = pooler

    def forward(
        self, features: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]
    ) -> RegionsWithContext:
        whole = [b.new_tensor([[0.0, 0.0, float(w), float(h)]]) for b, (h, w) in zip(boxes, image_shapes)]
        return RegionsWithContext(
            self.pooler(features, boxes, image_shapes),
            self.pooler(features, whole, image_shapes),
            [len(b) for b in boxes],
        )


class ContextBoxHead(nn.Module):
    """Post-RoI layers ``regions`` (``(N, C, S, S)`` -> ``(N, D)``) run on the regions and the whole images in
    one batch; returns ``(R, 2 D)``: each region's feature, then its image's global feature."""

    def __init__(self, regions: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.regions = regions
        self.out_channels = 2 * out_channels

    def forward(self, x: RegionsWithContext) -> Tensor:
        if not isinstance(x, RegionsWithContext):
            raise TypeError(
                f"ContextBoxHead takes the RegionsWithContext of a GlobalContextPool; got {type(x).__name__}"
            )
        dtype = next(self.regions.parameters()).dtype
        num = x.regions.shape[0]
        both = torch.cat([x.regions, x.context.to(x.regions.dtype)]).to(dtype)
        feats = self.regions(both)
        counts = torch.as_tensor(x.counts, device=feats.device)
        context = feats[num:].repeat_interleave(counts, dim=0)
        return torch.cat([feats[:num], context], dim=1)
