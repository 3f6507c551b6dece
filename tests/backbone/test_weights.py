import pickle

import numpy as np
import pytest
import torch
import torchvision

from restransfer.backbone import MSRA_BGR, TORCHVISION_RGB, ResNet, WeightsError, load_pretrained


def _save_torchvision(tmp_path, depth):
    ref = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    with torch.no_grad():  # non-trivial BN statistics so that a mix-up would show; small gammas keep
        for m in ref.modules():  # the logits of a deep random network O(1)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.05, 0.05), m.running_var.uniform_(0.9, 1.1), m.weight.uniform_(0.2, 0.5)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(ref.state_dict(), path)
    return ref.eval(), path


@pytest.mark.parametrize("depth", [18, 50, pytest.param(101, marks=pytest.mark.slow)])
def test_torchvision_state_dict_gives_same_logits(tmp_path, depth):
    ref, path = _save_torchvision(tmp_path, depth)
    model = ResNet(depth, num_classes=1000).eval()
    report = load_pretrained(model, str(path))
    assert report.format == "torchvision" and model.pixel_convention == TORCHVISION_RGB
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert (model.classify(x) - ref(x)).abs().max() < 1e-4


def test_timm_state_dict_gives_same_logits(tmp_path):
    import timm

    ref = timm.create_model("resnet50", pretrained=False).eval()
    path = tmp_path / "timm_resnet50.safetensors"
    from safetensors.torch import save_file

    save_file(ref.state_dict(), str(path))
    model = ResNet(50, num_classes=1000).eval()
    load_pretrained(model, str(path))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert (model.classify(x) - ref(x)).abs().max() < 1e-4


def _msra_blobs(depth=50, num_classes=1000, seed=0):
    """Random arrays under the names of the MSRA ResNet pickles converted for detectron2 (R-50.pkl)."""
    rng = np.random.default_rng(seed)
    template = ResNet(depth, style="caffe", num_classes=num_classes)
    blobs = {}

    def add(name, shape):
        blobs[name] = rng.standard_normal(shape).astype(np.float32)

    add("conv1_w", (64, 3, 7, 7))
    add("res_conv1_bn_s", (64,)), add("res_conv1_bn_b", (64,))
    for s, (_, stage) in enumerate(template.stages()):
        for b, block in enumerate(stage):
            p = f"res{s + 2}_{b}_"
            for i, letter in enumerate("abc"):
                conv = getattr(block, f"conv{i + 1}")
                add(p + f"branch2{letter}_w", tuple(conv.weight.shape))
                (
                    add(p + f"branch2{letter}_bn_s", (conv.out_channels,)),
                    add(p + f"branch2{letter}_bn_b", (conv.out_channels,)),
                )
            if block.downsample is not None:
                add(p + "branch1_w", tuple(block.downsample[0].weight.shape))
                c = block.downsample[0].out_channels
                add(p + "branch1_bn_s", (c,)), add(p + "branch1_bn_b", (c,))
    add("fc1000_w", (num_classes, template.fc.in_features)), add("fc1000_b", (num_classes,))
    return blobs


def test_msra_pickle_loads_every_parameter(tmp_path):
    blobs = _msra_blobs()
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs, "__author__": "test"}, f, protocol=2)
    model = ResNet(50, style="caffe", num_classes=1000).eval()
    report = load_pretrained(model, str(path))
    assert report.format == "msra" and report.unexpected == []
    assert model.pixel_convention == MSRA_BGR
    assert set(report.loaded) == set(model.state_dict())  # every parameter and buffer consumed
    torch.testing.assert_close(model.layer3[5].conv2.weight, torch.from_numpy(blobs["res4_5_branch2b_w"]))
    torch.testing.assert_close(model.layer2[0].downsample[0].weight, torch.from_numpy(blobs["res3_0_branch1_w"]))
    # caffe BN is exactly scale and bias
    x = torch.randn(1, 64, 4, 4)
    expected = x * torch.from_numpy(blobs["res_conv1_bn_s"]).view(1, -1, 1, 1) + torch.from_numpy(
        blobs["res_conv1_bn_b"]
    ).view(1, -1, 1, 1)
    torch.testing.assert_close(model.bn1(x), expected, rtol=1e-6, atol=1e-6)


def test_build_resnet_constructs_with_the_weights_convention(tmp_path):
    """The builder reads the weights first and passes their convention to the constructor; loading the state
    leaves the constructed convention alone (nothing is set on the model afterwards)."""
    from restransfer.backbone import build_resnet
    from restransfer.backbone.weights import load_pretrained_state, read_pretrained

    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(_msra_blobs(), f)
    model = build_resnet(50, weights=str(path), style="caffe", num_classes=1000)
    assert model.pixel_convention == MSRA_BGR
    torch.testing.assert_close(model.layer3[5].conv2.weight, torch.from_numpy(_msra_blobs()["res4_5_branch2b_w"]))
    pretrained = read_pretrained(str(path))
    assert pretrained.format == "msra" and pretrained.convention == MSRA_BGR
    built = ResNet(50, style="caffe", num_classes=1000, pixel_convention=TORCHVISION_RGB)
    load_pretrained_state(built, pretrained)
    assert built.pixel_convention == TORCHVISION_RGB  # as constructed
    assert ResNet(18).pixel_convention is None and ResNet(18, class_names=["a", "b"]).class_names == ["a", "b"]


def test_style_mismatch_is_an_error(tmp_path):
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(_msra_blobs(), f)
    with pytest.raises(WeightsError, match="style='caffe'"):
        load_pretrained(ResNet(50, style="pytorch"), str(path))
    _, tv = _save_torchvision(tmp_path, 50)
    with pytest.raises(WeightsError, match="style='pytorch'"):
        load_pretrained(ResNet(50, style="caffe"), str(tv))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_disallowed_object_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"conv1_w": np.zeros(3), "x": _Evil()}, f)
    with pytest.raises(WeightsError, match="builtins.print.*not allowed"):
        load_pretrained(ResNet(50, style="caffe"), str(path))
    assert "must never run" not in capsys.readouterr().out
    # a torch checkpoint holding an arbitrary object is refused as well
    tpath = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Evil()}, tpath)
    with pytest.raises(WeightsError, match="refused"):
        load_pretrained(ResNet(50), str(tpath))


def test_missing_file_and_wrong_depth(tmp_path):
    with pytest.raises(WeightsError, match="not found.*nope.pth"):
        load_pretrained(ResNet(18), str(tmp_path / "nope.pth"))
    _, p50 = _save_torchvision(tmp_path, 50)
    with pytest.raises(WeightsError, match="shape mismatch at layer1.0.conv1.weight"):
        load_pretrained(ResNet(18), str(p50))
    _, p18 = _save_torchvision(tmp_path, 18)
    with pytest.raises(WeightsError, match="missing.*layer1.2"):
        load_pretrained(ResNet(34), str(p18))


def test_partial_model_ignores_later_stages(tmp_path):
    ref, path = _save_torchvision(tmp_path, 18)
    model = ResNet(18, out_features=("res4",)).eval()
    report = load_pretrained(model, str(path))
    assert not any(k.startswith(("layer4", "fc")) for k in report.loaded)
    torch.testing.assert_close(model.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)


def test_offline_torchvision_source_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"hub/checkpoints/resnet101-63fe2227\.pth"):
        load_pretrained(ResNet(101), "torchvision://resnet101")


def test_torchvision_source_reads_the_cache(tmp_path, monkeypatch):
    ref, path = _save_torchvision(tmp_path, 18)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cache = tmp_path / "th" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    model = ResNet(18, num_classes=1000).eval()
    load_pretrained(model, "torchvision://resnet18")
    torch.testing.assert_close(model.fc.weight, ref.fc.weight)
