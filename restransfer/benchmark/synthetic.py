"""Synthetic inputs for benchmarks and checks: detector batches and COCO-layout folders of JPEGs.

:func:`synthetic_batch` renders synthetic-shapes images with their training targets, in memory (it lives
with the shapes set, :mod:`restransfer.data.shapes`, and is re-exported here).
:func:`generate_coco_folder` writes photo-like JPEGs at COCO's sizes (640x480 and 480x640, about 150 KB
each as COCO's are, 1-14 polygon objects per image) with a COCO annotation file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util

from ..data.shapes import synthetic_batch
from ..errors import ConfigError
from ..fileio import atomic_write_bytes, atomic_write_text

__all__ = ["synthetic_batch", "GeneratedFolder", "generate_coco_folder", "COCO_SIZES"]

# COCO's images are mostly 640 px on the long side, about two thirds of them landscape
COCO_SIZES = ((480, 640), (640, 480))
_LANDSCAPE_SHARE = 2 / 3


@dataclass
class GeneratedFolder:
    """A folder written by :func:`generate_coco_folder`."""

    json: str
    image_root: str
    num_images: int
    sizes: List[Tuple[int, int]]  # the (H, W) image sizes used
    mean_file_kb: float
    objects_per_image: float


def _photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float32 (h, w, 3) texture with detail at every scale, so that a JPEG of it has a photo's size
    and decoding cost (a flat image decodes several times faster, pure noise slower)."""
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = rng.uniform(60, 190, size=3)
    for cells, amplitude in ((2, 50), (6, 30), (24, 18), (96, 16), (240, 10)):
        gh, gw = max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))
        grid = rng.normal(0, amplitude, size=(gh, gw, 3)).astype(np.float32)
        img += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return img


def _polygon(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A star-shaped polygon (K, 2) of 8-16 vertices, float xy, inside the image."""
    bw, bh = rng.uniform(0.05, 0.6) * w, rng.uniform(0.05, 0.6) * h
    cx, cy = rng.uniform(bw / 2, w - bw / 2), rng.uniform(bh / 2, h - bh / 2)
    k = int(rng.integers(8, 17))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=k))
    radius = rng.uniform(0.6, 1.0, size=k)
    pts = np.stack([cx + 0.5 * bw * radius * np.cos(angles), cy + 0.5 * bh * radius * np.sin(angles)], axis=1)
    return np.clip(pts, 0, [w - 1, h - 1])


def generate_coco_folder(
    root: Union[str, os.PathLike],
    num_images: int,
    *,
    num_classes: int = 80,
    sizes: Sequence[Tuple[int, int]] = COCO_SIZES,
    max_objects: int = 14,
    quality: int = 90,
    seed: int = 0,
) -> GeneratedFolder:
    """Write ``num_images`` synthetic JPEGs with COCO annotations (boxes and polygon segmentations).

    Layout: ``root/images/000001.jpg ...`` and ``root/annotations/train.json``; categories 1..K named
    ``class_1``... Image ``i`` has ``sizes[0]`` (H, W) with probability 2/3, else ``sizes[1]``, and
    1..``max_objects`` objects (COCO averages 7.3 per image). Everything is a function of ``seed``.
    """
    if num_images < 1 or num_classes < 1 or max_objects < 1:
        raise ConfigError(
            f"generate_coco_folder: num_images ({num_images}), num_classes ({num_classes}) and "
            f"max_objects ({max_objects}) must be at least 1"
        )
    if not sizes or any(len(s) != 2 or min(s) < 16 for s in sizes):
        raise ConfigError(f"generate_coco_folder: sizes {list(sizes)} must be (H, W) pairs of at least 16 px")
    root = Path(root)
    image_dir, ann_dir = root / "images", root / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, file_bytes = [], [], 0
    for i in range(int(num_images)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        h, w = sizes[0] if len(sizes) == 1 or rng.random() < _LANDSCAPE_SHARE else sizes[1]
        img = _photo_like(rng, h, w)
        image_id = i + 1
        for _ in range(int(rng.integers(1, max_objects + 1))):
            poly = np.round(_polygon(rng, h, w), 2)  # as written to the json, so that the box is the polygon's
            mask = np.zeros((h, w), dtype=np.uint8)
            cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
            inside = mask.astype(bool)
            # blend a colour into the texture: objects keep detail, as in photos
            img[inside] = 0.5 * img[inside] + 0.5 * rng.uniform(0, 255, size=3).astype(np.float32)
            rle = mask_util.frPyObjects([poly.ravel().tolist()], h, w)[0]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(num_classes)) + 1,
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "area": float(mask_util.area(rle)),
                    "segmentation": [[float(v) for v in poly.ravel()]],
                    "iscrowd": 0,
                }
            )
        img += rng.normal(0, 16, size=img.shape).astype(np.float32)  # sensor noise and fine texture
        ok, jpeg = cv2.imencode(
            ".jpg",
            cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, int(quality)],
        )
        if not ok:
            raise OSError(f"OpenCV could not encode {image_dir / f'{image_id:06d}.jpg'}")
        atomic_write_bytes(image_dir / f"{image_id:06d}.jpg", jpeg.tobytes(), sync=False)
        file_bytes += len(jpeg)
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "height": h, "width": w})
    data = {
        "info": {"description": f"restransfer loader-benchmark images, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": f"class_{k + 1}", "supercategory": "none"} for k in range(num_classes)],
    }
    json_path = ann_dir / "train.json"
    atomic_write_text(json_path, json.dumps(data))
    used = sorted({(im["height"], im["width"]) for im in images}, key=lambda hw: -hw[1])
    return GeneratedFolder(
        json=str(json_path),
        image_root=str(image_dir),
        num_images=len(images),
        sizes=used,
        mean_file_kb=file_bytes / len(images) / 1024,
        objects_per_image=len(annotations) / len(images),
    )
