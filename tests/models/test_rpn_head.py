"""The RPN head's sparse backward pass: same outputs and gradients as torchvision's head."""

import pytest
import torch
from torchvision.models.detection.rpn import RPNHead as TorchvisionRPNHead

from restransfer.models import rpn_head
from restransfer.models.rpn_head import RPNHead


def _heads(seed: int = 0, channels: int = 16, anchors: int = 3):
    torch.manual_seed(seed)
    ref = TorchvisionRPNHead(channels, anchors)
    for p in ref.parameters():  # non-trivial biases and scales
        p.data.normal_(0, 0.2)
    # 4 sampled anchors per image: levels of more than 36 positions take the sparse backward pass
    ours = RPNHead(channels, anchors, sampled_per_image=4)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.fixture(autouse=True)
def sparse_calls(monkeypatch):
    """The maps each sparse backward pass ran on."""
    calls = []
    sparse = rpn_head._sparse_grads

    def counted(x, *args):
        calls.append(tuple(x.shape[-2:]))
        return sparse(x, *args)

    monkeypatch.setattr(rpn_head, "_sparse_grads", counted)
    return calls


def _features(g, channels=16, sizes=((24, 30), (12, 15), (6, 8), (4, 5)), n=2):
    return [torch.randn(n, channels, h, w, generator=g) for h, w in sizes]


def _sparse_grads(outputs, g, fraction):
    """Gradients that are zero except at a random ``fraction`` of the positions (as the RPN's sampled
    anchors give), some positions on the map borders."""
    grads = []
    for o in outputs:
        keep = torch.rand(o.shape[0], 1, *o.shape[2:], generator=g) < fraction
        keep[0, 0, 0, 0] = keep[-1, 0, -1, -1] = True
        grads.append(torch.randn(o.shape, generator=g) * keep)
    return grads


@pytest.mark.parametrize("fraction,dense", [(0.03, False), (0.03, True), (1.0, False)])
def test_gradients_equal_torchvision(monkeypatch, sparse_calls, fraction, dense):
    if dense:  # the recomputing fallback for gradients that are not sparse
        monkeypatch.setattr(rpn_head, "_MAX_GATHERED", 0)
    g = torch.Generator().manual_seed(1)
    ours, ref = _heads()
    feats = _features(g)
    x = [f.clone().requires_grad_() for f in feats]
    x_ref = [f.clone().requires_grad_() for f in feats]
    out, out_ref = ours(x), ref(x_ref)
    for a, b in zip(out[0] + out[1], out_ref[0] + out_ref[1]):
        assert torch.equal(a, b)
    grads = _sparse_grads(out_ref[0] + out_ref[1], g, fraction)
    torch.autograd.backward(out[0] + out[1], grads)
    torch.autograd.backward(out_ref[0] + out_ref[1], grads)
    for a, b in zip(x, x_ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        scale = p_ref.grad.abs().max().item()  # float32 sums of thousands of terms: rounding relative to the largest
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
    # the 4 x 5 map (20 positions) keeps the plain pass; the dense recompute replaces the sparse one
    assert sorted(sparse_calls) == ([] if dense else [(6, 8), (12, 15), (24, 30)])


def test_only_objectness_used_and_frozen_input():
    g = torch.Generator().manual_seed(2)
    ours, ref = _heads(seed=2)
    feats = _features(g)  # inputs without gradient, as from a frozen backbone
    out, out_ref = ours(feats), ref(feats)
    grads = _sparse_grads(out_ref[0], g, 0.05)
    torch.autograd.backward(out[0], grads)  # box deltas unused: their gradient is None
    torch.autograd.backward(out_ref[0], grads)
    assert ours.bbox_pred.weight.grad is None and ref.bbox_pred.weight.grad is None
    for p, p_ref in zip(ours.parameters(), ref.parameters()):
        if p_ref.grad is not None:
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5)


def test_saves_the_input_not_the_relu_output():
    g = torch.Generator().manual_seed(3)
    ours, _ = _heads(seed=3)
    x = _features(g, sizes=((20, 20),), n=1)[0].requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ours([x])
    maps = [s for s in saved if len(s) == 4 and s[2:] == x.shape[2:]]
    assert maps == [x.shape]  # one map-sized tensor: the input


def test_inference_and_state_dict_are_torchvision_s():
    ours, ref = _heads(seed=4)
    assert list(ours.state_dict()) == list(ref.state_dict())
    feats = _features(torch.Generator().manual_seed(4))
    with torch.no_grad():
        for a, b in zip(sum(ours(feats), []), sum(ref(feats), [])):
            assert torch.equal(a, b)


def test_bf16_autocast_gradients_match_in_dtype_and_value():
    g = torch.Generator().manual_seed(5)
    ours, ref = _heads(seed=5)
    feats = _features(g, sizes=((12, 14), (6, 7)), n=1)
    x = [f.clone().requires_grad_() for f in feats]
    x_ref = [f.clone().requires_grad_() for f in feats]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, out_ref = ours(x), ref(x_ref)
    for a, b in zip(out[0] + out[1], out_ref[0] + out_ref[1]):
        assert a.dtype == b.dtype == torch.bfloat16
        assert torch.equal(a, b)
    grads = _sparse_grads(out_ref[0] + out_ref[1], g, 0.1)
    torch.autograd.backward(out[0] + out[1], [t.bfloat16() for t in grads])
    torch.autograd.backward(out_ref[0] + out_ref[1], [t.bfloat16() for t in grads])
    for a, b in zip(x, x_ref):  # ours is computed in float32, torchvision's in bf16
        assert a.grad.dtype == b.grad.dtype == torch.float32
        torch.testing.assert_close(a.grad, b.grad, rtol=0.05, atol=0.05 * b.grad.abs().max().item())
    for p, p_ref in zip(ours.parameters(), ref.parameters()):
        assert p.grad.dtype == p_ref.grad.dtype
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=0.05, atol=0.05 * p_ref.grad.abs().max().item())


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_detector_training_gradients_equal_torchvision_head(head, sparse_calls):
    """A whole training step (same seed, so the same sampled anchors and RoIs): the losses and every
    parameter's gradient equal those of the same detector with torchvision's RPN head."""
    from helpers.tiny_detectors import C4, tiny_config

    from restransfer.benchmark import randomize_weights, synthetic_batch
    from restransfer.models import build_model

    # few sampled anchors per image, so that one map takes the sparse pass: P2 (24 x 32 > 9 x 32 positions)
    # of the FPN, the C4 head's single stride-16 map (6 x 8 > 9 x 4)
    sampled, sparse_map = (4, (6, 8)) if head == "c4" else (32, (24, 32))
    # and few sampled RoIs on small windows: the RPN head is under test, not the per-region res5
    cfg = tiny_config(
        *(C4 if head == "c4" else ()),
        f"model.rpn.batch_size_per_image={sampled}",
        "model.roi_heads.batch_size_per_image=32",
        "model.roi_heads.c4_pooler_resolution=6",
        arch="faster_rcnn",
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    images, targets = synthetic_batch((96, 128), 2, seed=0, num_classes=cfg.model.num_classes)
    randomize_weights(model, images[:1])
    assert type(model.rpn.head) is RPNHead
    results = []
    for swap in (False, True):
        if swap:
            plain = TorchvisionRPNHead(model.rpn.head.conv[0][0].in_channels, model.rpn.head.cls_logits.out_channels)
            plain.load_state_dict(model.rpn.head.state_dict())
            model.rpn.head = plain
        model.train().zero_grad(set_to_none=True)
        torch.manual_seed(1)
        losses = model(images, targets)
        sum(losses.values()).backward()
        results.append(
            (
                {k: v.detach() for k, v in losses.items()},
                {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
            )
        )
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert sparse_calls == [sparse_map]
    assert loss_a.keys() == loss_b.keys() and grad_a.keys() == grad_b.keys()
    assert any(k.startswith("rpn.head.conv") for k in grad_a) and any(k.startswith("backbone") for k in grad_a)
    for k in loss_a:
        torch.testing.assert_close(loss_a[k], loss_b[k], rtol=1e-5, atol=1e-6, msg=k)
    for k in grad_a:
        scale = grad_b[k].abs().max().item()
        torch.testing.assert_close(grad_a[k], grad_b[k], rtol=1e-4, atol=1e-4 * scale + 1e-12, msg=k)
