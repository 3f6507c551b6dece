import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from restransfer.backbone import FrozenBatchNorm2d, ResNet, resnet_c4, resnet_fpn

# multiply-adds at 224x224 from Table 1 of the ResNet paper (billions)
PAPER_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.parametrize(
    "depth", [18, 34, 50, pytest.param(101, marks=pytest.mark.slow), pytest.param(152, marks=pytest.mark.slow)]
)
def test_caffe_style_multiply_adds_match_paper(depth):
    model = ResNet(depth, style="caffe", num_classes=1000).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.classify(torch.zeros(1, 3, 224, 224))
    gmacs = counter.get_total_flops() / 2e9  # the counter reports 2 FLOPs per multiply-add
    assert abs(gmacs - PAPER_GMACS[depth]) / PAPER_GMACS[depth] < 0.025, gmacs


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_parameter_count_equals_torchvision(depth):
    ours = ResNet(depth, style="pytorch", norm="bn", freeze_at=0, num_classes=1000)
    ref = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_architecture_follows_table_1():
    m = ResNet(50, out_features=("stem", "res2", "res3", "res4", "res5"))
    feats = m(torch.zeros(1, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [
        (64, 56, 56),
        (256, 56, 56),
        (512, 28, 28),
        (1024, 14, 14),
        (2048, 7, 7),
    ]
    assert m.strides == {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert [len(getattr(ResNet(152), f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]
    # projection shortcut only where the shape changes
    assert m.layer1[0].downsample is not None and m.layer1[1].downsample is None
    r18 = ResNet(18)
    assert r18.layer1[0].downsample is None and r18.layer2[0].downsample is not None


def test_style_places_the_stride():
    caffe, torch_style = ResNet(50, style="caffe"), ResNet(50, style="pytorch")
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert torch_style.layer2[0].conv1.stride == (1, 1) and torch_style.layer2[0].conv2.stride == (2, 2)


def test_plain_network_has_no_shortcuts():
    plain = ResNet(34, residual=False, freeze_at=0, norm="bn")
    assert all(b.downsample is None for _, s in plain.stages() for b in s)
    res = ResNet(34, freeze_at=0, norm="bn")
    # plain = residual minus the projection convs and norms
    n_plain = sum(p.numel() for p in plain.parameters())
    n_res = sum(p.numel() for p in res.parameters())
    assert n_plain < n_res
    x = torch.randn(1, 3, 64, 64)
    plain.load_state_dict(res.state_dict(), strict=False)
    plain.eval(), res.eval()
    assert not torch.allclose(plain(x)["res5"], res(x)["res5"])


@pytest.mark.parametrize("norm", ["bn", "gn", "frozen_bn"])
def test_freeze_at_and_frozen_bn(norm):
    m = ResNet(18, norm=norm, freeze_at=3)
    m.train()
    frozen = [m.conv1, m.bn1, m.layer1, m.layer2]
    for part in frozen:
        assert all(not p.requires_grad for p in part.parameters())
    if norm != "gn":
        assert all(isinstance(x, FrozenBatchNorm2d) for x in m.layer2.modules() if "Norm" in type(x).__name__)
    stats_before = {k: v.clone() for k, v in m.state_dict().items()}
    out = m(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in out.values()).backward()
    for part in frozen:
        assert all(p.grad is None for p in part.parameters())
    assert all(p.grad is not None for p in m.layer3.parameters())
    after = m.state_dict()
    for k in stats_before:
        if k.startswith(("bn1", "layer1", "layer2")) or (norm == "frozen_bn" and "running" in k):
            assert torch.equal(stats_before[k], after[k]), k
    if norm == "bn":  # trainable BN in res3+ does update its statistics
        assert not torch.equal(stats_before["layer3.0.bn1.running_mean"], after["layer3.0.bn1.running_mean"])


def test_freeze_at_zero_trains_everything():
    m = ResNet(18, norm="bn", freeze_at=0)
    assert all(p.requires_grad for p in m.parameters())


def test_unknown_depth_lists_valid_ones():
    with pytest.raises(ValueError, match="18, 34, 50, 101, 152"):
        ResNet(42)
    with pytest.raises(ValueError, match="style"):
        ResNet(50, style="tf")
    with pytest.raises(ValueError, match="norm"):
        ResNet(50, norm="ln")


def test_out_features_limits_computation():
    m = ResNet(18, out_features=("res3",))
    assert not hasattr(m, "layer3") and list(m(torch.zeros(1, 3, 64, 64))) == ["res3"]


def test_bn_folding_keeps_outputs():
    m = ResNet(50, freeze_at=5).eval()
    for mod in m.modules():  # non-trivial statistics
        if isinstance(mod, FrozenBatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1), mod.running_var.uniform_(0.5, 2.0), mod.weight.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = m(x)["res5"]
        fused = m.fuse_frozen_bn()(x)["res5"]
    assert not any(isinstance(mod, FrozenBatchNorm2d) for mod in m.modules())
    torch.testing.assert_close(fused, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


def test_resnet_fpn_in_torchvision_faster_rcnn_trains_and_infers():
    from torchvision.models.detection import FasterRCNN

    backbone = resnet_fpn(18, norm="bn", freeze_at=0)
    assert isinstance(backbone.out_channels, int)
    model = FasterRCNN(backbone, num_classes=3, min_size=128, max_size=128)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    images = [torch.rand(3, 128, 128), torch.rand(3, 100, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[5.0, 20.0, 90.0, 80.0]]), "labels": torch.tensor([2])},
    ]
    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    opt.zero_grad()
    total.backward()
    assert backbone.body.conv1.weight.grad is not None and backbone.fpn.inner_blocks[0][0].weight.grad is not None
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}


def test_resnet_c4_in_torchvision_faster_rcnn():
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    backbone = resnet_c4(18)
    assert backbone.out_channels == 256
    model = FasterRCNN(
        backbone,
        num_classes=2,
        min_size=96,
        max_size=96,
        rpn_anchor_generator=AnchorGenerator(((32, 64),), ((0.5, 1.0, 2.0),)),
    )
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 96, 96)])
    assert out[0]["boxes"].shape[1] == 4
