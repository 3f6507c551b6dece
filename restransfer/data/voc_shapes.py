"""A small generated set in the PASCAL VOC layout: the synthetic shapes (:mod:`restransfer.data.shapes`) as
VOC JPEG images, XML annotations and image-set lists, with truncated and difficult objects.

Layout written by :func:`generate_voc_shapes` (``root`` plays the VOCdevkit folder)::

    root/VOC2007/JPEGImages/000001.jpg ...
    root/VOC2007/Annotations/000001.xml ...        VOC XML, 1-based inclusive boxes
    root/VOC2007/ImageSets/Main/trainval.txt       ids 000001 .. (num_trainval)
    root/VOC2007/ImageSets/Main/test.txt           the following ids

Each image is a window of a larger shapes canvas, so objects near its border are cut: an object that lost
visible pixels to the border is ``truncated``; one that kept less than 40% of them, or whose box is shorter
than 10 px on its longer side, is ``difficult`` (as VOC marks objects hard to recognise); one that kept none
is not annotated. Boxes bound the visible pixels. Everything is a pure function of the arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union
from xml.sax.saxutils import escape

import cv2
import numpy as np

from ..fileio import atomic_write_bytes, atomic_write_text, exclusive_lock
from .shapes import DEFAULT_CLASSES, render_shapes_image

__all__ = ["generate_voc_shapes", "ensure_voc_shapes", "DEFAULT_CLASSES", "DEFAULT_NUM_TRAINVAL", "DEFAULT_NUM_TEST"]

DEFAULT_NUM_TRAINVAL = 600
DEFAULT_NUM_TEST = 200
_MARGIN = 16  # pixels of canvas around the image window on each side
_DIFFICULT_VISIBLE = 0.4
_DIFFICULT_SIDE = 10
_SPLIT_CODE = {"trainval": 0, "test": 1}


def _objects_xml(objects: Sequence[Tuple[str, Tuple[int, int, int, int], bool, bool]]) -> str:
    parts = []
    for name, (x1, y1, x2, y2), truncated, difficult in objects:
        parts.append(
            f"  <object>\n    <name>{escape(name)}</name>\n    <pose>Unspecified</pose>\n"
            f"    <truncated>{int(truncated)}</truncated>\n    <difficult>{int(difficult)}</difficult>\n"
            f"    <bndbox>\n      <xmin>{x1}</xmin>\n      <ymin>{y1}</ymin>\n      <xmax>{x2}</xmax>\n"
            f"      <ymax>{y2}</ymax>\n    </bndbox>\n  </object>\n"
        )
    return "".join(parts)


def _annotation_xml(
    year: str, image_id: str, size: int, objects: Sequence[Tuple[str, Tuple[int, int, int, int], bool, bool]]
) -> str:
    return (
        f"<annotation>\n  <folder>VOC{year}</folder>\n  <filename>{image_id}.jpg</filename>\n"
        "  <source>\n    <database>restransfer synthetic shapes</database>\n  </source>\n"
        f"  <size>\n    <width>{size}</width>\n    <height>{size}</height>\n    <depth>3</depth>\n  </size>\n"
        f"  <segmented>0</segmented>\n{_objects_xml(objects)}</annotation>\n"
    )


def _render(rng: np.random.Generator, size: int, classes: Sequence[str]):
    """One image (S, S, 3) RGB and its objects ``(name, VOC box, truncated, difficult)`` in drawing order."""
    canvas, objects = render_shapes_image(rng, size + 2 * _MARGIN, classes)
    ox, oy = (int(v) for v in rng.integers(0, 2 * _MARGIN + 1, 2))
    image = canvas[oy : oy + size, ox : ox + size]
    out = []
    for label, mask in objects:
        inside = mask[oy : oy + size, ox : ox + size]
        kept, total = int(inside.sum()), int(mask.sum())
        if kept == 0:
            continue
        ys, xs = np.nonzero(inside)
        box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)  # VOC 1-based inclusive
        side = max(box[2] - box[0], box[3] - box[1]) + 1
        difficult = kept < _DIFFICULT_VISIBLE * total or side < _DIFFICULT_SIDE
        out.append((classes[label - 1], box, kept < total, difficult))
    return image, out


def generate_voc_shapes(
    root: Union[str, os.PathLike],
    num_trainval: int = DEFAULT_NUM_TRAINVAL,
    num_test: int = DEFAULT_NUM_TEST,
    year: Union[int, str] = 2007,
    image_size: int = 128,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
) -> Dict[str, Path]:
    """Write the set under ``root`` (the VOCdevkit folder); existing files of the same names are replaced.

    Returns ``{"trainval": path, "test": path}`` of the image-set lists, each written after its images and
    annotations, so a present list means a complete split.
    """
    classes = tuple(classes)
    ydir = Path(root) / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (ydir / sub).mkdir(parents=True, exist_ok=True)
    out, first = {}, 1
    for split, n in (("trainval", int(num_trainval)), ("test", int(num_test))):
        ids: List[str] = []
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], i]))
            image, objects = _render(rng, int(image_size), classes)
            image_id = f"{first + i:06d}"
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise OSError(f"OpenCV could not encode {ydir / 'JPEGImages' / image_id}.jpg")
            atomic_write_bytes(ydir / "JPEGImages" / f"{image_id}.jpg", jpg.tobytes())
            atomic_write_text(
                ydir / "Annotations" / f"{image_id}.xml", _annotation_xml(str(year), image_id, int(image_size), objects)
            )
            ids.append(image_id)
        first += n
        out[split] = ydir / "ImageSets" / "Main" / f"{split}.txt"
        atomic_write_text(out[split], "".join(f"{i}\n" for i in ids))
    return out


def ensure_voc_shapes(root: Union[str, os.PathLike], year: Union[int, str] = 2007, **kwargs) -> Dict[str, Path]:
    """Generate the set under ``root`` (``kwargs`` as for :func:`generate_voc_shapes`) unless both image-set
    lists exist; processes calling it at once wait on a lock file while the first generates."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lists = {s: root / f"VOC{year}" / "ImageSets" / "Main" / f"{s}.txt" for s in _SPLIT_CODE}
    with exclusive_lock(root / ".generate.lock"):
        if all(p.is_file() for p in lists.values()):
            return lists
        return generate_voc_shapes(root, year=year, **kwargs)
