"""The ResNet-FPN backbone in torchvision's one-stage detectors: ``resnet_fpn(..., extra_blocks="p6p7")`` gives
P3..P7 as RetinaNet and FCOS expect, and a training step of each runs and moves the weights."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import FCOS, RetinaNet

from restransfer.backbone import resnet_fpn

pytestmark = pytest.mark.usefixtures("single_thread")


def _batch():
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[30.0, 30.0, 90.0, 80.0]]), "labels": torch.tensor([3])},
    ]
    return images, targets


def test_p6p7_gives_p3_to_p7_from_res3():
    backbone = resnet_fpn(18, extra_blocks="p6p7", out_channels=32, norm="frozen_bn")
    assert backbone.body.out_features == ("res3", "res4", "res5")
    assert backbone.strides == [8, 16, 32, 64, 128]
    feats = backbone(torch.rand(1, 3, 128, 256))
    assert list(feats) == ["0", "1", "2", "p6", "p7"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 32), (8, 16), (4, 8), (2, 4), (1, 2)]
    assert all(f.shape[1] == 32 for f in feats.values())
    # the Faster R-CNN layout is unchanged: P2..P5 and the max-pooled P6
    default = resnet_fpn(18, out_channels=32)
    assert list(default(torch.rand(1, 3, 64, 64))) == ["0", "1", "2", "3", "pool"]
    assert default.strides == [4, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="extra_blocks='p6p8'"):
        resnet_fpn(18, extra_blocks="p6p8")


@pytest.mark.parametrize("detector", [RetinaNet, FCOS], ids=["retinanet", "fcos"])
def test_one_training_step_of_a_one_stage_detector(detector):
    backbone = resnet_fpn(18, extra_blocks="p6p7", out_channels=32, norm="frozen_bn", freeze_at=0)
    model = detector(backbone, num_classes=4, min_size=128, max_size=128)
    model.train()
    images, targets = _batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    before = backbone.body.layer2[0].conv1.weight.detach().clone()
    losses = model(images, targets)
    assert set(losses) == ({"classification", "bbox_regression"} | ({"bbox_ctrness"} if detector is FCOS else set()))
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert backbone.body.layer2[0].conv1.weight.grad.abs().sum() > 0  # gradients reach the ResNet (res3)
    assert backbone.fpn.extra_blocks.p7.weight.grad is not None  # and the P6/P7 convolutions
    optimizer.step()
    assert not torch.equal(before, backbone.body.layer2[0].conv1.weight)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
