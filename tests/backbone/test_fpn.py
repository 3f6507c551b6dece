"""The lean FPN computes torchvision's FPN exactly, and frees the input maps it is handed."""

import gc
import weakref
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from restransfer.backbone import resnet_fpn
from restransfer.backbone.fpn import LeanFeaturePyramidNetwork, add_upsampled_

IN_CHANNELS = [8, 16, 32, 64]


def _pair(extra=None):
    torch.manual_seed(0)
    lean = LeanFeaturePyramidNetwork(IN_CHANNELS, 16, extra_blocks=extra() if extra else None)
    ref = FeaturePyramidNetwork(IN_CHANNELS, 16, extra_blocks=extra() if extra else None)
    ref.load_state_dict(lean.state_dict())
    return lean, ref


def _maps(sizes, channels_last=False, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    maps = OrderedDict()
    for i, ((h, w), c) in enumerate(zip(sizes, IN_CHANNELS)):
        t = torch.randn(2, c, h, w, generator=g)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        maps[str(i)] = t.requires_grad_(requires_grad)
    return maps


EXTRA = [None, LastLevelMaxPool, lambda: LastLevelP6P7(64, 16)]
EXTRA_IDS = ["none", "maxpool", "p6p7"]
EXACT = [(32, 48), (16, 24), (8, 12), (4, 6)]  # each level half the previous: the broadcast path
ODD = [(25, 37), (13, 19), (7, 10), (4, 5)]  # strided convolutions of odd sizes: torchvision's upsampling


@pytest.mark.parametrize("sizes", [EXACT, ODD], ids=["exact-2x", "odd-sizes"])
@pytest.mark.parametrize("extra", EXTRA, ids=EXTRA_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_same_maps_as_torchvision_bit_for_bit(sizes, extra, channels_last):
    lean, ref = _pair(extra)
    with torch.no_grad():
        want = ref(_maps(sizes, channels_last))
        got = lean(_maps(sizes, channels_last))
    assert list(got) == list(want)
    for k in want:
        assert got[k].shape == want[k].shape
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("sizes", [EXACT, ODD], ids=["exact-2x", "odd-sizes"])
def test_same_gradients_as_torchvision(sizes):
    lean, ref = _pair(LastLevelMaxPool)
    grads = []
    for m in (ref, lean):
        x = _maps(sizes, requires_grad=True)
        inputs = list(x.values())
        out = m(x)
        sum((v * (i + 1)).sum() for i, v in enumerate(out.values())).backward()
        grads.append([t.grad for t in inputs] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)  # under autograd the sum is torchvision's own


def test_add_upsampled_matches_nearest_interpolation():
    g = torch.Generator().manual_seed(2)
    for fine_hw, coarse_hw in (((6, 8), (3, 4)), ((7, 9), (4, 5)), ((6, 8), (3, 3)), ((1, 2), (1, 1))):
        fine = torch.randn(2, 3, *fine_hw, generator=g)
        coarse = torch.randn(2, 3, *coarse_hw, generator=g)
        want = fine + F.interpolate(coarse, size=fine_hw, mode="nearest")
        got = add_upsampled_(fine.clone(), coarse)
        assert torch.equal(got, want), (fine_hw, coarse_hw)
    fine = torch.randn(1, 2, 4, 4, generator=g)
    out = add_upsampled_(fine, torch.randn(1, 2, 2, 2, generator=g))
    assert out.data_ptr() == fine.data_ptr()  # in place


@pytest.mark.parametrize("extra", EXTRA, ids=EXTRA_IDS)
def test_input_maps_are_freed_once_read(extra):
    lean, _ = _pair(extra)
    x = _maps(EXACT)
    refs = [weakref.ref(t) for t in x.values()]
    with torch.no_grad():
        out = lean(x)
    gc.collect()
    assert len(x) == 0  # consumed
    alive = [r() is not None for r in refs]
    # the last (coarsest) map is kept until the extra blocks have run, then released with the rest
    assert alive == [False, False, False, False]
    assert len(out) == 4 + EXTRA.index(extra)


def test_unknown_extra_blocks_get_every_input_map():
    class FirstInput(LastLevelMaxPool):  # an extra block of one's own, reading the finest input map
        def forward(self, p, c, names):
            p.append(c[0].mean(1, keepdim=True).expand_as(p[0]).contiguous())
            names.append("c0")
            return p, names

    torch.manual_seed(0)
    lean = LeanFeaturePyramidNetwork(IN_CHANNELS, 16, extra_blocks=FirstInput())
    x = _maps(EXACT)
    c0 = x["0"].clone()
    with torch.no_grad():
        out = lean(x)
    assert torch.equal(out["c0"], c0.mean(1, keepdim=True).expand(-1, 16, -1, -1))


def test_backbone_with_fpn_outputs_unchanged():
    """The ResNet-FPN backbone's maps equal those of torchvision's FPN on the same ResNet maps."""
    torch.manual_seed(0)
    bb = resnet_fpn(18).eval()
    ref = FeaturePyramidNetwork([64, 128, 256, 512], 256, extra_blocks=LastLevelMaxPool())
    ref.load_state_dict(bb.fpn.state_dict())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        got = bb(x)
        want = ref(OrderedDict((str(i), f) for i, f in enumerate(bb.body(x).values())))
    assert list(got) == ["0", "1", "2", "3", "pool"]
    for k in want:
        assert torch.equal(got[k], want[k]), k
