"""Frozen BatchNorm applied through the convolution in training: same outputs and gradients as the plain
``bn(conv(x))``, activations left in the convolution's dtype."""

import gc

import pytest
import torch
from torch import nn

from restransfer.backbone import FrozenBatchNorm2d, ResNet
from restransfer.backbone.folded import conv_norm


def _frozen_bn(channels: int, g: torch.Generator) -> FrozenBatchNorm2d:
    bn = FrozenBatchNorm2d(channels)
    bn.weight.uniform_(0.5, 1.5, generator=g)
    bn.bias.uniform_(-0.5, 0.5, generator=g)
    bn.running_mean.uniform_(-0.3, 0.3, generator=g)
    bn.running_var.uniform_(0.2, 3.0, generator=g)
    return bn


def _randomize_frozen_bns(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.load_state_dict(_frozen_bn(m.weight.numel(), g).state_dict())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=1, stride=2),
        dict(kernel_size=3, padding=2, dilation=2, bias=True),
        dict(kernel_size=3, padding=1, groups=2),
    ],
)
def test_folded_conv_equals_plain_in_value_and_gradients(kwargs):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(6, 8, **{"bias": False, **kwargs})
    bn = _frozen_bn(8, g)
    x = torch.randn(2, 6, 11, 13, generator=g)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    folded = conv_norm(conv, bn, x1)
    plain = bn(conv(x2))
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)
    dy = torch.randn(plain.shape, generator=g)
    grads_folded = torch.autograd.grad(folded, [x1] + list(conv.parameters()), dy)
    grads_plain = torch.autograd.grad(plain, [x2] + list(conv.parameters()), dy)
    assert len(grads_folded) == (3 if conv.bias is not None else 2)
    for a, b in zip(grads_folded, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_other_norms_and_fold_false_run_unchanged():
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 9, 9, generator=g)
    bn = nn.BatchNorm2d(8).train()
    before = bn.running_mean.clone()
    conv_norm(conv, bn, x)
    assert not torch.equal(bn.running_mean, before)  # batch statistics are used and updated, as bn(conv(x))
    frozen = _frozen_bn(8, g)
    calls = []
    frozen.register_forward_hook(lambda *args: calls.append(1))
    torch.testing.assert_close(conv_norm(conv, frozen, x, fold=False), frozen(conv(x)))
    conv_norm(conv, frozen, x)
    assert len(calls) == 2  # once for fold=False, once for the reference; the folded call skips the module


def test_folded_output_stays_in_the_autocast_dtype():
    g = torch.Generator().manual_seed(2)
    conv, bn = nn.Conv2d(4, 8, 3, padding=1, bias=False), _frozen_bn(8, g)
    x = torch.randn(1, 4, 8, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        folded, plain = conv_norm(conv, bn, x), bn(conv(x))
    # the plain BatchNorm multiplies by float32 statistics: its output is promoted to float32
    assert folded.dtype == torch.bfloat16 and plain.dtype == torch.float32
    torch.testing.assert_close(folded.float(), plain, rtol=2e-2, atol=2e-2 * plain.abs().max().item())


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_trains_with_the_gradients_of_the_plain_network(depth):
    """Train mode folds the frozen BatchNorms, eval mode does not; both see the same function."""
    torch.manual_seed(0)
    model = ResNet(depth, freeze_at=2)
    _randomize_frozen_bns(model, seed=depth)
    x = torch.randn(1, 3, 96, 128)
    grads = []
    for train in (True, False):
        model.train(train)
        model.zero_grad(set_to_none=True)
        out = model(x)
        sum((v * torch.linspace(-1, 1, v.numel()).view_as(v)).sum() for v in out.values()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        if train:
            train_out = {k: v.detach() for k, v in out.items()}
        else:
            for k, v in out.items():
                torch.testing.assert_close(train_out[k], v, rtol=1e-4, atol=1e-4 * v.abs().max().item())
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    assert not any(k.startswith(("conv1", "layer1")) for k in grads[0])  # frozen stem and res2
    for k in grads[0]:
        scale = grads[1][k].abs().max().item()
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-4 * scale, msg=k)


def test_backward_refolds_the_weight_instead_of_keeping_a_copy():
    g = torch.Generator().manual_seed(3)
    conv, bn = nn.Conv2d(4, 8, 3, padding=1, bias=False), _frozen_bn(8, g)
    x = torch.randn(1, 4, 8, 8, generator=g, requires_grad=True)
    y = conv_norm(conv, bn, x)
    # the saved weight is made again from the parameter, so a change in between cannot go unnoticed
    with torch.no_grad():
        conv.weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place between the forward and the backward"):
        y.sum().backward()
    # and no Python object holds the folded copy (autograd keeps the saved-tensor hooks until backward)
    y = conv_norm(conv, bn, x)
    gc.collect()
    copies = [
        t for t in gc.get_objects() if type(t) is torch.Tensor and t.shape == conv.weight.shape and t is not conv.weight
    ]
    assert copies == []
    y.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
