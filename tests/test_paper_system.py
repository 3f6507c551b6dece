"""The ResNet paper's full detection system (appendix B): global context, box refinement and voting,
multi-scale / flipped testing (union and maxout), ensembles."""
import pytest
import torch

from restransfer.backbone import WeightsError
from restransfer.config import ConfigError, load_config
from restransfer.models import build_model
from restransfer.models.checkpoint import apply_detector_state
from restransfer.models.context import RegionsWithContext

from conftest import tiny_overrides
from tiny_detectors import tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _train_cfg(head, *extra):
    return load_config(None, tiny_overrides(
        "training", "model.arch=mask_rcnn", f"model.head={head}", "model.rpn.post_nms_top_n_train=16",
        "model.rpn.post_nms_top_n_test=8", "model.roi_heads.batch_size_per_image=8",
        "model.roi_heads.detections_per_img=5", *extra))


def _targets():
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 44.0]])
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    for j, b in enumerate(boxes.int().tolist()):
        masks[j, b[1]:b[3], b[0]:b[2]] = 1
    return [{"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": masks}] * 2


# ------------------------------------------------------------------------------------------ global context


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_global_context_trains_saves_loads(head):
    cfg = _train_cfg(head, "model.roi_heads.global_context=true")
    model = build_model(cfg)
    plain_width = build_model(_train_cfg(head)).roi_heads.box_predictor.cls_score.in_features
    assert model.roi_heads.box_predictor.cls_score.in_features == 2 * plain_width
    model.train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    losses = model(images, _targets())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # the context half of the classifier's input gets a gradient: the global feature is trained end to end
    grad = model.roi_heads.box_predictor.cls_score.weight.grad
    assert grad[:, plain_width:].abs().sum() > 0
    opt.step()
    assert not torch.equal(before, model.roi_heads.box_predictor.cls_score.weight)

    model.eval()
    with torch.no_grad():
        out = model(images)
    restored = build_model(cfg).eval()
    apply_detector_state(restored, model.state_dict(), "ckpt.pth")
    with torch.no_grad():
        again = restored(images)
    assert torch.equal(out[0]["boxes"], again[0]["boxes"]) and torch.equal(out[0]["scores"], again[0]["scores"])


def test_global_context_feature_is_the_whole_image_through_the_same_layers():
    model = build_model(_train_cfg("fpn", "model.roi_heads.global_context=true")).eval()
    head = model.roi_heads.box_head
    regions, context = torch.randn(5, 32, 7, 7), torch.randn(2, 32, 7, 7)
    with torch.no_grad():
        out = head(RegionsWithContext(regions, context, [3, 2]))
        own, glob = head.regions(regions), head.regions(context)
        other = head(RegionsWithContext(regions, torch.randn(2, 32, 7, 7), [3, 2]))
    assert out.shape == (5, 2 * own.shape[1])
    torch.testing.assert_close(out[:, :own.shape[1]], own)
    torch.testing.assert_close(out[:3, own.shape[1]:], glob[0].expand(3, -1))
    torch.testing.assert_close(out[3:, own.shape[1]:], glob[1].expand(2, -1))
    # another image around the same regions gives other logits
    logits, _ = model.roi_heads.box_predictor(out)
    other_logits, _ = model.roi_heads.box_predictor(other)
    assert (logits - other_logits).abs().max() > 1e-4


def test_global_context_checkpoint_mismatch_names_the_key():
    plain = build_model(_train_cfg("fpn"))
    ctx = build_model(_train_cfg("fpn", "model.roi_heads.global_context=true"))
    with pytest.raises(WeightsError, match="model.roi_heads.global_context=false"):
        apply_detector_state(ctx, plain.state_dict(), "plain.pth")
    with pytest.raises(WeightsError, match="model.roi_heads.global_context=true"):
        apply_detector_state(plain, ctx.state_dict(), "context.pth")
