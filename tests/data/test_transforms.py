"""Training/test augmentation: sizes, box and mask geometry, degenerate boxes, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from restransfer.data.transforms import build_transforms


def _sample(h=50, w=100):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    boxes = np.array([[10, 5, 30, 25], [0, 0, w, h]], dtype=np.float64)
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 5:25, 10:30] = 1
    masks[1] = 1
    return image, boxes, np.array([4, 7]), masks


def _mask_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_short_side_resize_keeps_aspect_and_scales_boxes_and_masks():
    image, boxes, labels, masks = _sample()
    out = build_transforms([60], 1000, hflip_prob=0.0)(image, boxes, labels, masks, seed=0)
    assert out["image"].shape == (60, 120, 3) and out["masks"].shape == (2, 60, 120)
    np.testing.assert_allclose(out["boxes"], boxes * 1.2, rtol=1e-6)
    assert _mask_box(out["masks"][0]) == [12, 6, 36, 30]
    assert out["boxes"].dtype == np.float32 and out["labels"].tolist() == [4, 7]


def test_long_side_cap_wins_over_the_short_side():
    image, boxes, labels, masks = _sample()
    out = build_transforms([60], 110, hflip_prob=0.0)(image, boxes, labels, masks, seed=0)
    assert out["image"].shape == (55, 110, 3)  # scale min(60/50, 110/100) = 1.1
    np.testing.assert_allclose(out["boxes"], boxes * 1.1, rtol=1e-6)


def test_short_side_is_drawn_from_the_list_and_seeded():
    image, boxes, labels, masks = _sample()
    tf = build_transforms([40, 60, 80], 1000, hflip_prob=0.5)
    shapes = {tf(image, boxes, labels, masks, seed=s)["image"].shape[0] for s in range(40)}
    assert shapes == {40, 60, 80}
    a = tf(image, boxes, labels, masks, seed=123)
    b = tf(image, boxes, labels, masks, seed=123)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["boxes"], b["boxes"])


def test_horizontal_flip_mirrors_boxes_and_masks_together():
    image, boxes, labels, masks = _sample()
    out = build_transforms([50], 1000, hflip_prob=1.0)(image, boxes, labels, masks, seed=0)
    np.testing.assert_allclose(out["boxes"][0], [70, 5, 90, 25], atol=1e-4)
    assert _mask_box(out["masks"][0]) == [70, 5, 90, 25]
    assert np.array_equal(out["image"], image[:, ::-1])


def test_colour_jitter_changes_pixels_not_geometry():
    image, boxes, labels, masks = _sample()
    out = build_transforms([50], 1000, hflip_prob=0.0, color_jitter=0.4)(image, boxes, labels, masks, seed=1)
    assert not np.array_equal(out["image"], image)
    np.testing.assert_allclose(out["boxes"], boxes, atol=1e-4)


def test_degenerate_boxes_are_dropped_with_their_labels_and_masks():
    image, boxes, labels, masks = _sample()
    boxes = np.vstack([boxes[:1], [[40, 10, 40 + 1e-9, 20]], boxes[1:]])
    labels = np.array([4, 5, 7])
    masks = np.stack([masks[0], np.zeros_like(masks[0]), masks[1]])
    out = build_transforms([50], 1000, hflip_prob=0.0)(image, boxes, labels, masks, seed=0)
    assert out["num_dropped"] == 1
    assert out["labels"].tolist() == [4, 7]
    assert (
        out["masks"].shape == (2, 50, 100) and out["masks"][1].all() and _mask_box(out["masks"][0]) == [10, 5, 30, 25]
    )


def test_no_boxes_and_test_pipeline_identity():
    image, _, _, _ = _sample()
    out = build_transforms([80], 1000)(
        image, np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros((0, 50, 100), np.uint8), seed=0
    )
    assert out["image"].shape == (80, 160, 3) and out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 80, 160)
    test_tf = build_transforms([80], 1000, is_train=False)
    image, boxes, labels, masks = _sample()
    same = test_tf(image, boxes, labels, masks)
    assert same["image"] is image and same["masks"] is masks and np.array_equal(same["boxes"], boxes)


def test_empty_size_list_is_an_error():
    with pytest.raises(ValueError, match="min_size_train"):
        build_transforms([], 1000)
