"""The training loader hands uint8 images (a quarter of the bytes) and the detector converts them: the
numbers the model computes on must be the very ones the float path gave, so training is unchanged."""

import numpy as np
import pytest
import torch
from helpers import tiny_overrides

from restransfer.config import load_config
from restransfer.data.build import build_train_loader
from restransfer.data.coco import CocoDataset
from restransfer.data.transforms import build_transforms
from restransfer.models import build_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _float_as_before(image: torch.Tensor) -> torch.Tensor:
    """The loader's former conversion, verbatim: numpy's float32 division of the CHW uint8 array by 255."""
    chw = np.empty(tuple(image.shape), dtype=np.float32)
    np.divide(image.numpy(), np.float32(255.0), out=chw)
    return torch.from_numpy(chw)


def _train_config(shapes, *extra):
    return load_config(
        None,
        tiny_overrides(
            "training",
            "model.arch=mask_rcnn",
            "input.min_size_train=[80,96]",
            "input.max_size_train=128",
            "input.color_jitter=0.2",
            f"data.train=[{{json: {shapes}/annotations/train.json, image_root: {shapes}/train}}]",
            *extra,
        ),
    )


def test_every_byte_value_converts_as_numpy_did():
    values = torch.arange(256, dtype=torch.uint8).repeat(3, 40, 1)  # long rows: the vectorized kernel
    model = build_model(load_config(None, tiny_overrides("inference")))
    normalized = model.transform.normalize(values)
    expected = model.transform.normalize(_float_as_before(values))
    assert normalized.dtype == torch.float32 and torch.equal(normalized, expected)


def test_dataset_and_loader_hand_uint8_images(shapes):
    tf = build_transforms([80, 96], 128, color_jitter=0.2)
    args = (shapes / "annotations" / "train.json", shapes / "train")
    as_float = CocoDataset(*args, transforms=tf, is_train=True)
    as_uint8 = CocoDataset(*args, transforms=tf, is_train=True, uint8_images=True)
    for key in [(0, 11), (3, 12)]:
        f, tf_target = as_float[key]
        u, tu_target = as_uint8[key]
        assert f.dtype == torch.float32 and u.dtype == torch.uint8 and u.is_contiguous()
        assert torch.equal(_float_as_before(u), f) and torch.equal(tf_target["boxes"], tu_target["boxes"])
    images, _ = next(iter(build_train_loader(_train_config(shapes))))
    assert all(im.dtype == torch.uint8 and im.shape[0] == 3 for im in images)


def test_uint8_batch_gives_the_float_batch_s_loss(shapes):
    cfg = _train_config(shapes)
    images, targets = next(iter(build_train_loader(cfg)))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    losses = {}
    for name, batch in (("uint8", list(images)), ("float", [_float_as_before(im) for im in images])):
        torch.manual_seed(1)  # the same anchor and RoI sampling for both
        model.zero_grad(set_to_none=True)
        loss_dict = model(batch, list(targets))
        sum(loss_dict.values()).backward()
        losses[name] = {k: float(v.detach()) for k, v in loss_dict.items()}
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads
        losses[name]["gradient"] = float(sum(g.double().abs().sum() for g in grads))
    assert losses["uint8"].keys() == losses["float"].keys()
    for k, v in losses["float"].items():
        assert losses["uint8"][k] == pytest.approx(v, abs=1e-6, rel=0), k
    # and at inference, where users may pass either
    model.eval()
    with torch.no_grad():
        out_u8, out_f = model([images[0]]), model([_float_as_before(images[0])])
    assert torch.equal(out_u8[0]["boxes"], out_f[0]["boxes"]) and torch.equal(out_u8[0]["scores"], out_f[0]["scores"])
