"""Binary mask pasting one box at a time (dense bool and COCO RLE), its equality with torchvision's float
pasting, the deferred-paste path of the Predictor and evaluation, and its peak memory on a large image."""

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from helpers.tiny_detectors import tiny_model, write_checkpoint, write_config
from torchvision.models.detection.roi_heads import paste_masks_in_image

from restransfer.engine.inference import inference_on_dataset
from restransfer.evaluation.coco import masks_to_rle
from restransfer.models.postprocess import (
    FastDetectionTransform,
    deferred_mask_paste,
    detection_masks,
    paste_masks,
    paste_masks_binary,
)
from restransfer.models.transform import DetectionTransform
from restransfer.predictor import Predictor
from restransfer.rle import encode_masks, encode_patch

pytestmark = pytest.mark.usefixtures("single_thread")  # small models: one intra-op thread (conftest.py)
REPO = Path(__file__).resolve().parents[2]


def _reference_rle(binary: np.ndarray):
    """pycocotools' own encoding of (N, H, W) binary masks, counts as str."""
    rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def _random_boxes(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """Boxes of every kind: inside, partly outside, beyond the far edges, smaller than a pixel, the whole image and
    taller than it (so pasted masks run down whole columns)."""
    fixed = torch.tensor(
        [
            [10.0, 12.0, 50.0, 40.0],
            [-15.0, -8.0, 20.0, 30.0],
            [w - 10.0, h - 14.0, w + 40.0, h + 26.0],
            [30.5, 20.2, 30.9, 20.7],
            [w + 100.0, h + 100.0, w + 130.0, h + 140.0],
            [0.0, 0.0, w - 1.0, h - 1.0],
            [5.0, -30.0, 25.0, h + 30.0],
            [-50.0, -50.0, w + 50.0, h + 50.0],
        ]
    )
    x0y0 = torch.rand(n, 2, generator=g) * torch.tensor([w * 1.1, h * 1.1]) - torch.tensor([w * 0.1, h * 0.1])
    wh = torch.rand(n, 2, generator=g) ** 2 * torch.tensor([w, h]) + 0.3
    # torchvision's pasting mis-slices most boxes that end before the image or start after it
    # (detections are clipped to the image, so they never do)
    x1y1 = torch.clamp(x0y0 + wh, min=1.0)
    return torch.cat([fixed, torch.cat([x0y0, x1y1], 1)])[:n]


@pytest.mark.parametrize("threshold", [0.5, 0.3])
@pytest.mark.parametrize("image_shape", [(64, 100), (37, 23)])
def test_binary_paste_equals_thresholded_float_paste(image_shape, threshold):
    g = torch.Generator().manual_seed(int(threshold * 10) + image_shape[0])
    h, w = image_shape
    boxes = _random_boxes(40, h, w, g)
    masks = torch.rand(40, 1, 28, 28, generator=g)
    masks[7] = 1.0  # a mask that is on over its whole (taller than the image) box: runs span columns
    reference = (paste_masks_in_image(masks, boxes, image_shape)[:, 0] > threshold).numpy()
    assert torch.equal(paste_masks(masks, boxes, image_shape)[:, 0] > threshold, torch.from_numpy(reference))
    assert reference.any(axis=(1, 2)).sum() > 20  # the comparison covers many non-empty masks

    dense = paste_masks_binary(masks, boxes, image_shape, threshold)
    assert dense.dtype == np.bool_ and dense.shape == (40, h, w)
    assert np.array_equal(dense, reference)

    rles = paste_masks_binary(masks, boxes, image_shape, threshold, format="rle")
    assert rles == _reference_rle(reference)  # byte-identical to pycocotools' encoding of the full masks
    assert np.array_equal(mask_util.decode(rles).transpose(2, 0, 1), reference)
    assert all(isinstance(r["counts"], str) for r in rles)
    json.dumps(rles)  # json-ready


def test_binary_paste_without_detections_and_bad_format():
    masks, boxes = torch.zeros(0, 1, 28, 28), torch.zeros(0, 4)
    assert paste_masks_binary(masks, boxes, (30, 40)).shape == (0, 30, 40)
    assert paste_masks_binary(masks, boxes, (30, 40), format="rle") == []
    with pytest.raises(ValueError, match="'bool', 'rle'.*'png'"):
        paste_masks_binary(masks, boxes, (30, 40), format="png")


def test_encode_patch_equals_pycocotools_on_random_patches():
    rng = np.random.default_rng(0)
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(1, 10, 2))
        ph, pw = int(rng.integers(0, h + 1)), int(rng.integers(0, w + 1))
        top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patch = rng.random((ph, pw)) < rng.choice([0.2, 0.6, 1.0])
        full = np.zeros((1, h, w), dtype=bool)
        full[0, top : top + ph, left : left + pw] = patch
        assert encode_patch(patch, top, left, (h, w)) == _reference_rle(full)[0], (h, w, top, left, patch)
    with pytest.raises(ValueError, match="3x3 patch at row 2, column 0 does not fit in a 4x5 image"):
        encode_patch(np.ones((3, 3), bool), 2, 0, (4, 5))


def test_encode_masks_equals_pycocotools_for_tensors_and_arrays():
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(5, 1, 17, 13, generator=g)
    expected = _reference_rle((probs[:, 0] > 0.4).numpy())
    assert encode_masks(probs, 0.4) == expected
    assert encode_masks(probs[:, 0].numpy(), 0.4) == expected
    assert encode_masks(probs[:, 0] > 0.4) == expected  # binary masks pass through
    assert masks_to_rle(probs, threshold=0.4) == expected
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        encode_masks(torch.zeros(2, 3, 4, 4))


@pytest.fixture(scope="module")
def tiny():
    cfg, model, images = tiny_model()
    with torch.inference_mode():
        plain = model(images)[0]
    assert len(plain["masks"]) > 0
    return cfg, model, images, plain


def test_deferred_paste_gives_the_plain_models_masks_and_restores_the_model(tiny):
    _, model, images, plain = tiny
    assert type(model.transform) is DetectionTransform
    with torch.inference_mode():
        with deferred_mask_paste(model) as deferred:
            out = model(images)[0]
        again = model(images)[0]
    assert deferred
    assert "masks" not in out and out["mask_probs"].shape == (len(plain["boxes"]), 1, 28, 28)
    assert type(model.transform) is DetectionTransform and "defer_mask_paste" not in vars(model.transform)
    assert again["masks"].shape == plain["masks"].shape and again["masks"].dtype == torch.float32
    expected = (plain["masks"][:, 0] > 0.5).numpy()
    image_size = tuple(images[0].shape[-2:])
    assert np.array_equal(detection_masks(out, image_size), expected)
    assert np.array_equal(detection_masks(plain, image_size), expected)  # full-image masks are accepted too
    keep = plain["scores"] > plain["scores"].median()
    assert detection_masks(out, image_size, format="rle", keep=keep) == _reference_rle(expected[keep.numpy()])


def test_deferred_paste_on_an_optimized_model_keeps_its_fast_transform(tiny):
    _, model, images, plain = tiny
    fast = copy.deepcopy(model).optimize_for_inference(fold_bn=False, channels_last=False)
    assert type(fast.transform) is FastDetectionTransform
    with torch.inference_mode(), deferred_mask_paste(fast):
        out = fast(images)[0]
    assert type(fast.transform) is FastDetectionTransform and not fast.transform.defer_mask_paste
    assert "mask_probs" in out
    with torch.inference_mode():
        assert fast(images)[0]["masks"].shape == plain["masks"].shape


def test_evaluation_writes_the_plain_models_masks_as_rle(tiny):
    _, model, images, plain = tiny
    loader = [([images[0]], [{"image_id": 7}])]
    (pred,) = inference_on_dataset(model, loader, torch.device("cpu"), progress=False)
    assert pred["image_id"] == 7 and len(pred["masks"]) == len(plain["boxes"])
    assert pred["masks"] == masks_to_rle(plain["masks"])
    assert type(model.transform) is DetectionTransform


def test_predictor_mask_formats(tiny, tmp_path):
    _, model, images, _ = tiny
    ckpt = write_checkpoint(tmp_path, model, ["a", "b", "c"])
    config = write_config(tmp_path)
    rgb = (images[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    dense = Predictor(config, weights=str(ckpt), threshold=0.2)(rgb)
    rle = Predictor(config, weights=str(ckpt), threshold=0.2, mask_format="rle")(rgb)
    assert dense["masks"].dtype == np.bool_ and dense["masks"].shape == (len(dense["boxes"]),) + rgb.shape[:2]
    assert len(dense["boxes"]) > 0 and dense["masks"].any()
    assert np.array_equal(rle["boxes"], dense["boxes"])
    assert isinstance(rle["masks"], list) and all(r["size"] == list(rgb.shape[:2]) for r in rle["masks"])
    assert np.array_equal(mask_util.decode(rle["masks"]).transpose(2, 0, 1), dense["masks"])
    with pytest.raises(ValueError, match="mask format must be one of 'bool', 'rle', got 'polygon'"):
        Predictor(config, weights=str(ckpt), mask_format="polygon")


# Runs in a fresh process: pastes 100 masks into a 6000x8000 image and reports the growth of peak
# resident memory (ru_maxrss, which sees torch's allocations too) over the resident memory before.
_MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    torch.set_num_threads(2)
    from restransfer.models.postprocess import paste_masks_binary

    def resident():
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * resource.getpagesize()
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    fmt, h, w, n = sys.argv[1], 6000, 8000, 100
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(n, 1, 28, 28, generator=g)
    x0y0 = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) - 200
    wh = torch.rand(n, 2, generator=g) ** 3 * torch.tensor([w, h]) + 8   # mostly small boxes ...
    boxes = torch.cat([x0y0, x0y0 + wh], 1)
    boxes[:4] = torch.tensor([[0, 0, w - 1, h - 1], [-300, -200, 0.7 * w, 0.8 * h],   # ... and large ones
                              [0.2 * w, 0, w + 100, h + 100], [100, 100, 0.5 * w, 0.5 * h]])
    before = resident()
    out = paste_masks_binary(masks, boxes, (h, w), 0.5, fmt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if fmt == "bool":
        nbytes, areas = out.nbytes, out.sum(axis=(1, 2), dtype=np.int64).tolist()
    else:
        import pycocotools.mask as mask_util
        nbytes, areas = sum(len(r["counts"]) for r in out), mask_util.area(out).tolist()
    print(json.dumps({"increase": peak - before, "nbytes": nbytes, "areas": areas}))
""")


def _probe(fmt: str) -> dict:
    # glibc gives threads that contend for its lock arenas of their own, whose freed memory it keeps: on a
    # loaded machine that multiplies the peak; two arenas keep the figure about this code's allocations
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, fmt], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pasting_100_masks_into_a_48_megapixel_image_is_memory_bounded():
    """Dense: the peak grows by less than twice the returned (100, 6000, 8000) bool array (4.8 GB; full
    float pasting needs 19.2 GB). RLE: a fraction of one dense stack. Both give the same masks."""
    dense = _probe("bool")
    assert dense["nbytes"] == 100 * 6000 * 8000
    assert dense["increase"] < 2 * dense["nbytes"], dense["increase"]
    rle = _probe("rle")
    # one full-image box is pasted as an H x W float patch (192 MB); how much of the freed patches the
    # allocator returns between boxes varies with the machine's load (0.27-1.5 GB seen), so the bound leaves
    # room: half of one dense bool stack, a tenth of what pasting in float would take
    assert rle["increase"] < dense["nbytes"] / 2, rle["increase"]
    assert rle["areas"] == dense["areas"] and max(dense["areas"]) > 10_000_000
