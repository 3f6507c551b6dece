"""A generated classification set in the imagefolder layout, for demos and tests that must not download.

``generate_shape_classes(root)`` writes ``root/train/<class>/NNNNN.png`` and ``root/test/<class>/NNNNN.png``:
each small image holds one shape (the class: filled or outlined circle, triangle, square, star, ...) of random
size, rotation, position and colour on a noisy two-colour gradient, with a few distractor lines. Every
image is a pure function of ``(seed, split, index)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Sequence

import cv2
import numpy as np

from ..fileio import atomic_write_bytes, atomic_write_text

__all__ = ["SHAPE_CLASS_NAMES", "render_shape_class", "generate_shape_classes", "ensure_shape_classes"]

_SHAPES = ("circle", "triangle", "square", "star", "cross")
SHAPE_CLASS_NAMES = tuple(f"{fill}_{shape}" for shape in _SHAPES for fill in ("filled", "outlined"))
_SPLIT_STREAM = {"train": 1, "test": 2}


def _outline(shape: str, angle: float, n: int = 40) -> np.ndarray:
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "cross":
        a, b = 1.0, 0.35
        pts = np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]]
        )
    else:
        k, radii = {"triangle": (3, [1.0]), "square": (4, [1.0]), "star": (5, [1.0, 0.45])}[shape]
        t = angle + np.arange(k * len(radii)) * 2 * np.pi / (k * len(radii))
        r = np.tile(radii, k)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def render_shape_class(rng: np.random.Generator, label: int, size: int = 32) -> np.ndarray:
    """One uint8 (size, size, 3) RGB image of class ``SHAPE_CLASS_NAMES[label]``."""
    shape = _SHAPES[label // 2]
    outlined = label % 2 == 1
    c0, c1 = rng.uniform(20, 235, size=(2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ramp = (np.cos(theta) * xx + np.sin(theta) * yy)[..., None]
    img = c0 + (c1 - c0) * (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    for _ in range(int(rng.integers(0, 3))):
        p, q = rng.integers(0, size, size=(2, 2))
        cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), rng.uniform(0, 255, 3).tolist(), 1)
    radius = rng.uniform(0.22, 0.42) * size
    center = rng.uniform(radius, size - radius, size=2)
    pts = _outline(shape, float(rng.uniform(0, 2 * np.pi))) * radius + center
    colour = np.where(img.mean((0, 1)) > 128, rng.uniform(0, 90, 3), rng.uniform(165, 255, 3)).tolist()
    poly = [np.round(pts * 16).astype(np.int32)]
    if outlined:
        cv2.polylines(img, poly, True, colour, thickness=max(1, size // 16), lineType=cv2.LINE_AA, shift=4)
    else:
        cv2.fillPoly(img, poly, colour, lineType=cv2.LINE_AA, shift=4)
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate_shape_classes(
    root: os.PathLike | str,
    *,
    num_train: int = 5000,
    num_test: int = 1000,
    size: int = 32,
    classes: Sequence[str] = SHAPE_CLASS_NAMES,
    seed: int = 0,
) -> Dict[str, Path]:
    """Write the set (balanced classes, PNG) under ``root``; returns ``{"train": dir, "test": dir}``."""
    root = Path(root)
    out = {}
    for split, count in (("train", num_train), ("test", num_test)):
        base = root / split
        for i in range(count):
            label = SHAPE_CLASS_NAMES.index(classes[i % len(classes)])
            rng = np.random.default_rng([seed, _SPLIT_STREAM[split], i])
            ok, png = cv2.imencode(".png", cv2.cvtColor(render_shape_class(rng, label, size), cv2.COLOR_RGB2BGR))
            atomic_write_bytes(base / SHAPE_CLASS_NAMES[label] / f"{i:05d}.png", png.tobytes())
        out[split] = base
    atomic_write_text(root / "DONE", f"{num_train} {num_test} {size} {seed}\n")
    return out


def ensure_shape_classes(image_root: os.PathLike | str, **kwargs) -> None:
    """Generate the set whose ``train``/``test`` folder is ``image_root`` unless it is complete already."""
    root = Path(image_root).parent
    if not (root / "DONE").is_file():
        generate_shape_classes(root, **kwargs)
