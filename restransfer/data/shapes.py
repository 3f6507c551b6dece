"""A deterministic synthetic instance-segmentation set in COCO format: shapes on textured backgrounds.

Layout written by :func:`generate_shapes`::

    root/train/000001.png ...        root/annotations/train.json
    root/val/000001.png ...          root/annotations/val.json

Each image has 1-4 objects whose longer box side is 16-60 px, drawn in random colours that stand
out from the local background, on a background made of a colour gradient, low-frequency noise,
soft blobs, thin lines and pixel noise. Later objects occlude earlier ones; a placement is redrawn
when it would hide more than half of an earlier object, so every annotated object keeps at least
half of its pixels. Masks (compressed RLE), boxes and areas describe the visible part.

Everything is a pure function of ``(seed, split, image index)``: the same arguments give the same
bytes on every run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from torch import Tensor

from ..errors import ConfigError
from ..fileio import atomic_write_bytes, atomic_write_text, exclusive_lock

__all__ = [
    "SHAPE_CLASSES",
    "DEFAULT_CLASSES",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "generate_shapes",
    "ensure_shapes",
    "render_shapes_image",
    "synthetic_batch",
]

SHAPE_CLASSES = ("circle", "triangle", "square", "star")
DEFAULT_CLASSES = ("circle", "triangle", "square")
DEFAULT_NUM_TRAIN = 2000
DEFAULT_NUM_VAL = 200

_SPLIT_CODE = {"train": 0, "val": 1}
_MIN_SIZE, _MAX_SIZE = 16, 60
_MAX_OBJECTS = 4
_MIN_VISIBLE = 0.5  # fraction of an object's pixels that must stay visible
_MIN_CONTRAST = 90.0  # Euclidean RGB distance between object colour and local background mean
_SUBPIXEL_SHIFT = 4  # cv2 drawing with 1/16-pixel vertex precision
_PLACEMENT_TRIES = 20


def _unit_outline(shape: str, angle: float) -> np.ndarray:
    """Vertices (V, 2) of ``shape`` with circumradius 1 around the origin, rotated by ``angle``."""
    if shape == "triangle":
        t = angle + np.arange(3) * 2 * np.pi / 3
        radii = np.ones(3)
    elif shape == "square":
        t = angle + np.arange(4) * np.pi / 2
        radii = np.ones(4)
    elif shape == "star":
        t = angle + np.arange(10) * np.pi / 5
        radii = np.tile([1.0, 0.45], 5)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPE_CLASSES)}")
    return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)


def _shape_mask(
    shape: str, size: float, angle: float, top_left: Tuple[float, float], hw: Tuple[int, int]
) -> np.ndarray:
    """Binary mask (H, W) uint8 of a shape whose full box has longer side ``size`` at ``top_left`` (x, y)."""
    mask = np.zeros(hw, dtype=np.uint8)
    scale = 1 << _SUBPIXEL_SHIFT
    if shape == "circle":
        r = size / 2
        center = (int(round((top_left[0] + r) * scale)), int(round((top_left[1] + r) * scale)))
        cv2.circle(mask, center, int(round(r * scale)), 1, thickness=-1, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
        return mask
    pts = _unit_outline(shape, angle)
    pts -= pts.min(axis=0)
    pts *= size / pts.max()
    pts += np.asarray(top_left)
    cv2.fillPoly(mask, [np.round(pts * scale).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
    return mask


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Textured float32 (H, W, 3) background in [0, 255]."""
    c0, c1 = rng.uniform(30, 225, size=(2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.cos(theta) * xx / w + np.sin(theta) * yy / h
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    img = c0 + (c1 - c0) * ramp[..., None]
    # Low-frequency colour noise: a coarse random grid upsampled smoothly.
    grid = rng.normal(0, 22, size=(rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.float32)
    img += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    # Soft blobs: blurred ellipses, unlike the crisp objects.
    blobs = np.zeros((h, w, 3), dtype=np.float32)
    for _ in range(rng.integers(1, 5)):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(w // 12, w // 3)), int(rng.integers(h // 12, h // 3)))
        color = rng.uniform(-60, 60, size=3).tolist()
        cv2.ellipse(blobs, center, axes, float(rng.uniform(0, 180)), 0, 360, color, thickness=-1)
    img += cv2.GaussianBlur(blobs, (0, 0), sigmaX=max(h, w) / 25)
    # Thin lines in muted colours.
    mean = img.mean(axis=(0, 1))
    for _ in range(rng.integers(2, 7)):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        color = (mean + rng.uniform(-50, 50, size=3)).tolist()
        cv2.line(img, p0, p1, color, thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    img += 6.0 * rng.standard_normal(size=img.shape, dtype=np.float32)
    return img


def _object_colour(rng: np.random.Generator, local_mean: np.ndarray) -> np.ndarray:
    """A random saturated colour far enough from ``local_mean`` (the best of a few draws)."""
    best, best_d = None, -1.0
    for _ in range(12):
        hsv = np.array([[[rng.uniform(0, 180), rng.uniform(120, 255), rng.uniform(90, 255)]]], dtype=np.float32)
        rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        # Very dark or very light colours contrast well with mid-tone backgrounds too.
        if rng.random() < 0.2:
            rgb = np.full(3, 15.0 if local_mean.mean() > 127 else 240.0, dtype=np.float32)
        d = float(np.linalg.norm(rgb - local_mean))
        if d > best_d:
            best, best_d = rgb, d
        if d >= _MIN_CONTRAST:
            break
    return best


def render_shapes_image(
    rng: np.random.Generator, image_size: int, classes: Sequence[str] = DEFAULT_CLASSES
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Draw one image.

    Returns:
        ``image`` uint8 (S, S, 3) RGB and a list of ``(label, visible_mask)`` with labels 1..len(classes)
        and ``visible_mask`` uint8 (S, S), in drawing order.
    """
    h = w = int(image_size)
    if h < _MAX_SIZE + 4:
        raise ConfigError(f"image_size must be at least {_MAX_SIZE + 4} px to hold {_MAX_SIZE} px objects, got {h}")
    img = _background(rng, h, w)
    objects: List[Tuple[int, np.ndarray, np.ndarray]] = []  # (label, full mask, visible mask)
    for _ in range(rng.integers(1, _MAX_OBJECTS + 1)):
        label = int(rng.integers(len(classes))) + 1
        size = float(rng.uniform(_MIN_SIZE, _MAX_SIZE))
        angle = float(rng.uniform(0, 2 * np.pi))
        for _ in range(_PLACEMENT_TRIES):
            top_left = (float(rng.uniform(0, w - size - 1)), float(rng.uniform(0, h - size - 1)))
            mask = _shape_mask(classes[label - 1], size, angle, top_left, (h, w))
            hidden = mask.astype(bool)
            if all((vis & ~hidden).sum() >= _MIN_VISIBLE * full.sum() for _, full, vis in objects):
                break
        else:
            continue  # no placement keeps the earlier objects visible enough
        for _, _, vis in objects:
            vis &= ~hidden
        objects.append((label, hidden, hidden.copy()))
        colour = _object_colour(rng, img[hidden].mean(axis=0))
        # Gentle shading and noise on the object so that it is not a flat patch either.
        ys, xs = np.nonzero(hidden)
        g = rng.uniform(-1, 1, size=2)
        shade = 25.0 * (g[0] * (xs - xs.mean()) + g[1] * (ys - ys.mean())) / max(size, 1.0)
        img[ys, xs] = colour + shade[:, None] + rng.normal(0, 5, size=(len(ys), 3))
    image = np.clip(img, 0, 255).astype(np.uint8)
    return image, [(label, vis.astype(np.uint8)) for label, _, vis in objects if vis.any()]


def _generate_split(
    root: Path, split: str, num_images: int, image_size: int, seed: int, classes: Sequence[str]
) -> Dict[str, Any]:
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], i]))
        image, objects = render_shapes_image(rng, image_size, classes)
        image_id = i + 1
        file_name = f"{image_id:06d}.png"
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"OpenCV could not encode {image_dir / file_name}")
        atomic_write_bytes(image_dir / file_name, png.tobytes(), sync=False)  # made again while the json is missing
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for label, mask in objects:
            rle = mask_util.encode(np.asfortranarray(mask))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "area": float(mask_util.area(rle)),
                    "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"restransfer synthetic shapes, {split}, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(classes)],
    }


def generate_shapes(
    root: Union[str, os.PathLike],
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = 128,
    seed: int = 0,
    classes: Optional[Sequence[str]] = None,
) -> Dict[str, Path]:
    """Write the synthetic set under ``root``.

    Args:
        root: output folder (created); existing files of the same names are replaced.
        num_train, num_val: number of images per split.
        image_size: side of the square images in pixels (at least 64).
        seed: everything is determined by it.
        classes: shape names from :data:`SHAPE_CLASSES`; category ids follow their order (1..K).

    Returns:
        ``{"train": path of train.json, "val": path of val.json}``. Each json is written atomically
        after its images, so a present json means a complete split.
    """
    classes = tuple(classes or DEFAULT_CLASSES)
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if unknown or len(set(classes)) != len(classes) or not classes:
        raise ConfigError(f"classes {list(classes)}: give distinct names from {', '.join(SHAPE_CLASSES)}")
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", num_train), ("val", num_val)):
        data = _generate_split(root, split, int(n), int(image_size), int(seed), classes)
        path = root / "annotations" / f"{split}.json"
        atomic_write_text(path, json.dumps(data))
        out[split] = path
    return out


def ensure_shapes(root: Union[str, os.PathLike], **kwargs: Any) -> Dict[str, Path]:
    """Generate the set under ``root`` (``kwargs`` as for :func:`generate_shapes`) unless both jsons exist.

    Safe when several processes (e.g. the ranks of a distributed run) call it at once: the first
    generates while the others wait on a lock file, then find the jsons and return.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {split: root / "annotations" / f"{split}.json" for split in _SPLIT_CODE}
    with exclusive_lock(root / ".generate.lock"):
        if all(p.is_file() for p in paths.values()):
            return paths
        return generate_shapes(root, **kwargs)


def synthetic_batch(
    size: Tuple[int, int], batch: int = 1, seed: int = 0, num_classes: int = 3
) -> Tuple[List[Tensor], List[Dict[str, Tensor]]]:
    """``batch`` synthetic-shapes images ``(3, H, W)`` float RGB in [0, 1] with their training targets
    (``boxes`` xyxy, ``labels`` in 1..min(3, num_classes), ``masks`` (N, H, W) uint8)."""
    h, w = size
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(batch):
        img, objects = render_shapes_image(rng, max(h, w, 64))
        img = img[:h, :w]
        boxes, labels, masks = [], [], []
        for label, mask in objects:
            mask = mask[:h, :w]
            ys, xs = np.nonzero(mask)
            if len(xs) == 0 or xs.max() == xs.min() or ys.max() == ys.min():
                continue
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(min(label, num_classes))
            masks.append(mask)
        images.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255))
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
            }
        )
    return images, targets
