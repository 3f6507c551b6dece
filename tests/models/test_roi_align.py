"""RoIAlign: same outputs and gradients as torchvision, through both backward paths and any chunking."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from restransfer.models import roi_align as ra
from restransfer.models.roi_align import ParallelMultiScaleRoIAlign, roi_align, roi_align_grad


def _rois(g, n, num_images, size):
    """(n, 5) RoIs over ``num_images`` images of ``size`` px, including ones partly or fully outside the
    map, sub-cell ones and degenerate ones."""
    b = torch.randint(0, num_images, (n,), generator=g).float()
    xy = torch.rand(n, 2, generator=g) * size * 1.2 - size * 0.1
    wh = torch.rand(n, 2, generator=g) * size * 0.6
    wh[: n // 8] *= 0.01
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[-1] = torch.tensor([size + 20.0, size + 30.0, size + 50.0, size + 60.0])  # entirely outside
    return torch.cat([b[:, None], boxes], 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("path", ["windowed", "windowed-small-chunks", "whole-map"])
def test_gradient_equals_torchvision(monkeypatch, aligned, sampling_ratio, path):
    g = torch.Generator().manual_seed(sampling_ratio + 2 * aligned)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # force the forward's thread split on any runner
    monkeypatch.setattr(ra, "_windowed_is_cheaper", lambda *args: path != "whole-map")
    if path == "windowed-small-chunks":  # one RoI per batch of products, window additions cut row by row
        monkeypatch.setattr(ra, "_CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(ra, "_SERIAL_ELEMENTS", 1)
    feat = torch.randn(3, 5, 20, 28, generator=g, dtype=torch.float64).float()
    rois = _rois(g, 60, num_images=2, size=100)  # image 2 of 3 has no RoI: its gradient is zero
    for output_size in [(7, 7), (14, 10)]:
        x = feat.clone().requires_grad_()
        x_ref = feat.clone().requires_grad_()
        out = roi_align(x, rois, output_size, 0.25, sampling_ratio, aligned)
        ref = tv_roi_align(x_ref, rois, output_size, 0.25, sampling_ratio, aligned)
        assert torch.equal(out, ref)
        grad = torch.randn(ref.shape, generator=g)
        out.backward(grad)
        ref.backward(grad)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
        assert x.grad.is_contiguous() and x.grad[2].abs().max() == 0


@pytest.mark.parametrize("windowed", [True, False])
def test_gradient_keeps_the_channels_last_layout(monkeypatch, windowed):
    monkeypatch.setattr(ra, "_windowed_is_cheaper", lambda *args: windowed)
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 6, 16, 24, generator=g)
    rois = _rois(g, 30, num_images=2, size=80)
    x = feat.contiguous(memory_format=torch.channels_last).requires_grad_()
    x_ref = feat.clone().requires_grad_()
    out = roi_align(x, rois, (7, 7), 0.25, 2)
    ref = tv_roi_align(x_ref, rois, (7, 7), 0.25, 2)
    assert torch.equal(out, ref)
    grad = torch.randn(ref.shape, generator=g)
    out.backward(grad)
    ref.backward(grad)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def test_gradient_with_no_rois_is_zero():
    grad = roi_align_grad(torch.zeros(0, 4, 7, 7), torch.zeros(0, 5), torch.Size([2, 4, 8, 8]), (7, 7), 0.5, 2)
    assert grad.shape == (2, 4, 8, 8) and not grad.any()


def test_path_choice_follows_window_and_map_size():
    def samples(box, size):
        _, _, rw, rh = ra._roi_geometry(torch.tensor([[0.0] + box]), 0.25, False)
        return ra._axis_samples(torch.zeros(1), rh, 7, size, 2), ra._axis_samples(torch.zeros(1), rw, 7, size, 2)

    small_on_large = samples([0.0, 0.0, 40.0, 40.0], 200)
    assert ra._windowed_is_cheaper(*small_on_large, 200, 200, (7, 7))
    whole_small_map = samples([0.0, 0.0, 64.0, 64.0], 16)
    assert not ra._windowed_is_cheaper(*whole_small_map, 16, 16, (7, 7))


def test_windows_hold_every_sampled_cell():
    g = torch.Generator().manual_seed(3)
    rois = _rois(g, 200, num_images=1, size=100)
    x1, y1, rw, rh = ra._roi_geometry(rois, 0.25, True)
    for start, extent, length in ((x1, rw, 28), (y1, rh, 20)):
        s = ra._axis_samples(start, extent, 7, length, 0)
        full = ra._axis_weights(s, torch.zeros_like(s.start), length)
        cells = torch.arange(length)
        inside = (cells >= s.start[:, None]) & (cells < (s.start + s.extent)[:, None])
        assert torch.all(full.abs().sum(1)[~inside] == 0)
        assert torch.all(s.start + s.extent <= length)
        assert torch.equal(s.extent == 0, full.abs().sum((1, 2)) == 0)


def test_low_precision_maps_pool_in_float32():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 4, 16, 16, generator=g).bfloat16().requires_grad_()
    rois = torch.tensor([[0.0, 2.0, 3.0, 40.0, 50.0]])
    out = roi_align(feat, rois, (7, 7), 0.25, 2)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, tv_roi_align(feat.detach().float(), rois, (7, 7), 0.25, 2).bfloat16())
    out.float().sum().backward()
    assert feat.grad.dtype == torch.bfloat16 and feat.grad.abs().sum() > 0


@pytest.mark.parametrize("threads", [1, 3])
def test_multiscale_module_matches_torchvision(monkeypatch, threads):
    g = torch.Generator().manual_seed(0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    shapes = [(256, 384), (200, 300)]
    feats = {str(i): torch.randn(2, 8, 64 // 2**i, 96 // 2**i, generator=g) for i in range(4)}
    boxes = []
    for h, w in shapes:
        xy = torch.rand(150, 2, generator=g) * torch.tensor([w, h])
        wh = torch.rand(150, 2, generator=g) * 180 + 2
        boxes.append(torch.cat([xy, xy + wh], 1))
    plain = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    ours = ParallelMultiScaleRoIAlign.from_module(plain)
    x = {k: v.clone().requires_grad_() for k, v in feats.items()}
    x_ref = {k: v.clone().requires_grad_() for k, v in feats.items()}
    out, ref = ours(x, boxes, shapes), plain(x_ref, boxes, shapes)
    assert torch.equal(out, ref)
    assert ours.scales == plain.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]  # inferred by each module itself
    assert (ours.map_levels.k_min, ours.map_levels.k_max) == (plain.map_levels.k_min, plain.map_levels.k_max)
    grad = torch.randn(ref.shape, generator=g)
    out.backward(grad)
    ref.backward(grad)
    for k in feats:  # a level without RoIs gets no gradient here, zeros from torchvision
        ours_grad = x[k].grad if x[k].grad is not None else torch.zeros_like(feats[k])
        torch.testing.assert_close(ours_grad, x_ref[k].grad, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        assert ours(feats, [torch.zeros((0, 4))] * 2, shapes).shape == (0, 8, 7, 7)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("chunk", [1 << 22, 8 * 49 * 5], ids=["one-chunk", "chunks-of-5-rois"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_multiscale_without_autograd_pools_into_the_result(monkeypatch, threads, chunk, mode):
    """Without a backward to record, each level's RoIs go straight into their rows of the result, chunk by
    chunk from the worker threads (under the caller's inference mode): the same values as torchvision."""
    g = torch.Generator().manual_seed(1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(ra, "_CHUNK_ELEMENTS", chunk)
    shapes = [(256, 384), (200, 300)]
    feats = {str(i): torch.randn(2, 8, 64 // 2**i, 96 // 2**i, generator=g) for i in range(4)}
    boxes = []
    for h, w in shapes:
        xy = torch.rand(60, 2, generator=g) * torch.tensor([w, h])
        boxes.append(torch.cat([xy, xy + torch.rand(60, 2, generator=g) * 180 + 2], 1))
    plain = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    ours = ParallelMultiScaleRoIAlign.from_module(plain)
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with context():
        ref = plain(feats, boxes, shapes)
        out = ours(feats, boxes, shapes)
        # low-precision maps: pooled in float32, stored in the maps' dtype, as torchvision's autocast rule does
        low = ours({k: v.bfloat16() for k, v in feats.items()}, boxes, shapes)
        low_ref = plain({k: v.bfloat16().float() for k, v in feats.items()}, boxes, shapes).bfloat16()
    assert torch.equal(out, ref)
    assert low.dtype == torch.bfloat16 and torch.equal(low, low_ref)


def test_forward_in_chunks_equals_one_call(monkeypatch):
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(2, 6, 20, 24, generator=g)
    rois = _rois(g, 37, 2, 80)
    args = ((5, 5), 0.25, 2, False)
    monkeypatch.setattr(ra, "_CHUNK_ELEMENTS", 6 * 25 * 4)  # 4 RoIs per chunk: 10 chunks over 2 threads
    assert torch.equal(ra._forward(feat, rois, args, 2), tv_roi_align(feat, rois, *args))
