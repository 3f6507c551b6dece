"""PASCAL VOC: the devkit's folder layout, image-set lists, XML annotations and the COCO-format dict built from
them (:class:`~restransfer.data.voc_dataset.VocDataset` is the dataset over it).

The layout (VOC 2007 and 2012 alike; other years and VOC-format sets of one's own follow it)::

    VOCdevkit/VOC2007/Annotations/000001.xml        one XML file per image
    VOCdevkit/VOC2007/JPEGImages/000001.jpg
    VOCdevkit/VOC2007/ImageSets/Main/trainval.txt   one image id per line (also train, val, test)

Annotation files are untrusted input and go through the toolkit's safe XML reader
(:func:`restransfer.data.ilsvrc.parse_xml`: no DTD, no entities, errors with file and line). Here they must
have ``<size>`` (positive integer width and height) and objects with a known ``<name>`` and a ``<bndbox>``
of finite coordinates inside the image: ``1 <= xmin <= xmax <= width``, likewise for y. ``<difficult>`` and
``<truncated>`` are ``0`` or ``1`` and default to 0 when absent, as in the devkit's ``VOCreadrecxml.m``.
Anything else is a :class:`VocFormatError` naming the file and the line.

Boxes stay in VOC's own convention here: 1-based inclusive pixel indices (``width = xmax - xmin + 1``);
:func:`restransfer.boxes.voc_to_xyxy` converts them (``(xmin - 1, ymin - 1, xmax, ymax)``).

Labels are 1..K in the order of the class list (0 is background); the default list is the devkit's 20
classes in its order (:data:`VOC_CLASSES`). :func:`records_to_coco` turns a split into a COCO-format dict
(image ids 1..N in image-set order; ``voc_id``/``voc_year`` on each image; ``difficult`` and ``truncated``
on each annotation, and ``iscrowd = difficult``), which is what
:class:`~restransfer.data.voc_dataset.VocDataset` reads and what ``datasets/prepare_voc.py`` writes: difficult
objects are then ignored regions for every COCO-format tool, as the devkit ignores them in evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..boxes import voc_to_xyxy, xyxy_to_xywh
from ..errors import DataError
from .coco_convert import box_annotations
from .ilsvrc import XmlElement, parse_xml, text_fields, where, xml_number

__all__ = [
    "VOC_CLASSES",
    "VocFormatError",
    "VocAnnotation",
    "VocRecord",
    "read_voc_annotation",
    "read_image_set",
    "year_dir",
    "image_set_path",
    "load_voc_split",
    "records_to_coco",
]

PathLike = Union[str, os.PathLike]

# The devkit's class order (VOCinit.m); label k is VOC_CLASSES[k - 1].
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


class VocFormatError(DataError):
    """A PASCAL VOC file or folder is malformed or missing; the message names it (and the line) and what to do."""


@dataclass
class VocAnnotation:
    """One VOC XML file. ``boxes`` (N, 4) float64 VOC 1-based inclusive ``xmin, ymin, xmax, ymax``;
    ``labels`` (N,) int64 in 1..K; ``names`` the class names; ``difficult``/``truncated`` (N,) bool;
    ``lines`` the line of each ``<object>``. Objects keep the file's order (the devkit breaks IoU ties by it)."""

    path: str
    filename: Optional[str]
    width: int
    height: int
    names: List[str]
    labels: np.ndarray
    boxes: np.ndarray
    difficult: np.ndarray
    truncated: np.ndarray
    lines: List[int]


def _flag(obj: XmlElement, tag: str, path: str) -> bool:
    node = obj.find(tag)
    if node is None:
        return False  # VOCreadrecxml.m: an absent flag is false
    text = node.value()
    if text not in ("0", "1"):
        raise VocFormatError(f"{where(path, node.line)}: <{tag}> is {text!r}; expected 0 or 1")
    return text == "1"


def _size(root: XmlElement, path: str) -> tuple:
    size = root.find("size")
    if size is None:
        raise VocFormatError(
            f"{where(path, root.line)}: missing <size> (width and height are needed to check the boxes)"
        )
    out = []
    for tag in ("width", "height"):
        v = xml_number(size.find(tag), tag, path, size.line)
        if v <= 0 or v != int(v):
            raise VocFormatError(
                f"{where(path, size.find(tag).line)}: <{tag}> is {v:g}; expected a positive integer number of pixels"
            )
        out.append(int(v))
    return tuple(out)


def read_voc_annotation(path: PathLike, classes: Sequence[str] = VOC_CLASSES) -> VocAnnotation:
    """Read one VOC XML annotation file.

    Raises:
        DataError (:class:`VocFormatError`, or the XML reader's error): malformed XML or a DOCTYPE/entity
            declaration, a root other than ``<annotation>``, a missing ``<size>``, an object without
            ``<name>`` or ``<bndbox>``, a class not in ``classes``, a missing, non-numeric, NaN or infinite
            coordinate, a box outside the image or with ``xmax < xmin``, a flag other than 0/1 (file and line).
    """
    path = str(path)
    root = parse_xml(path)
    if root.tag != "annotation":
        raise VocFormatError(f"{where(path, root.line)}: root element is <{root.tag}>, expected <annotation>")
    width, height = _size(root, path)
    lookup: Dict[str, int] = {c: i + 1 for i, c in enumerate(classes)}
    names, labels, boxes, difficult, truncated, lines = [], [], [], [], [], []
    for obj in root.findall("object"):
        name = obj.find("name")
        if name is None or not name.value():
            raise VocFormatError(f"{where(path, obj.line)}: <object> without <name>")
        if name.value() not in lookup:
            shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
            raise VocFormatError(
                f"{where(path, name.line)}: unknown class {name.value()!r}; the class list has "
                f"{len(classes)} names ({shown}): give the dataset's class list ('classes' in a "
                "format voc data entry, --classes in the tools) or fix the name"
            )
        bb = obj.find("bndbox")
        if bb is None:
            raise VocFormatError(f"{where(path, obj.line)}: <object> without <bndbox>")
        box = [xml_number(bb.find(k), k, path, bb.line) for k in ("xmin", "ymin", "xmax", "ymax")]
        if not (1 <= box[0] <= box[2] <= width and 1 <= box[1] <= box[3] <= height):
            raise VocFormatError(
                f"{where(path, bb.line)}: bndbox (xmin {box[0]:g}, ymin {box[1]:g}, xmax {box[2]:g}, ymax {box[3]:g}) "
                f"is not inside the {width}x{height} image; VOC boxes are 1-based inclusive pixels with "
                f"1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height"
            )
        names.append(name.value())
        labels.append(lookup[name.value()])
        boxes.append(box)
        difficult.append(_flag(obj, "difficult", path))
        truncated.append(_flag(obj, "truncated", path))
        lines.append(obj.line)
    filename = root.find("filename")
    return VocAnnotation(
        path=path,
        filename=filename.value() if filename is not None and filename.value() else None,
        width=width,
        height=height,
        names=names,
        labels=np.asarray(labels, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        difficult=np.asarray(difficult, dtype=bool),
        truncated=np.asarray(truncated, dtype=bool),
        lines=lines,
    )


def read_image_set(path: PathLike) -> List[str]:
    """The image ids of an image-set list (``ImageSets/Main/test.txt``: one id per line), in file order.

    Raises:
        VocFormatError: a missing file, a line with more than one field (a per-class list such as
            ``aeroplane_test.txt``), an id that repeats, or no ids at all (file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise VocFormatError(
            f"{path}: image-set list not found; expected VOCdevkit/VOC<year>/ImageSets/Main/"
            "<split>.txt (see datasets/README.md, PASCAL VOC)"
        )
    ids: List[str] = []
    first: Dict[str, int] = {}
    try:
        for lineno, fields in text_fields(path, "<image id>", 1, 1):
            if fields[0] in first:
                raise VocFormatError(f"{where(path, lineno)}: image {fields[0]!r} repeats line {first[fields[0]]}")
            first[fields[0]] = lineno
            ids.append(fields[0])
    except DataError as e:
        if isinstance(e, VocFormatError):
            raise
        raise VocFormatError(
            f"{e}; a main image-set list has one image id per line (per-class lists such as "
            "aeroplane_test.txt are not image sets)"
        ) from None
    if not ids:
        raise VocFormatError(f"{path}: the image-set list is empty")
    return ids


def year_dir(root: PathLike, year: Union[int, str]) -> Path:
    """``root/VOC<year>`` (``root`` is the VOCdevkit folder); a VocFormatError when it is not a folder."""
    d = Path(root) / f"VOC{year}"
    if not d.is_dir():
        raise VocFormatError(
            f"{d}: not found; root must be the VOCdevkit folder that holds VOC{year}/ "
            "(see datasets/README.md, PASCAL VOC)"
        )
    return d


def image_set_path(root: PathLike, year: Union[int, str], split: str) -> Path:
    """``root/VOC<year>/ImageSets/Main/<split>.txt``."""
    return year_dir(root, year) / "ImageSets" / "Main" / f"{split}.txt"


@dataclass
class VocRecord:
    """One image of a split: its ``year``, devkit ``image_id`` (``000001``, ``2008_000002``), image path
    relative to the VOCdevkit root, and annotation."""

    year: str
    image_id: str
    file_name: str
    annotation: VocAnnotation


def _image_file(ann: VocAnnotation, image_id: str) -> str:
    # <filename> names the image file (VOC-format sets of one's own may use .png); it must be the image's own
    # name, never a path. Otherwise the devkit's JPEGImages/<id>.jpg.
    name = ann.filename
    if name and Path(name).stem == image_id and os.path.basename(name) == name and name not in (".", ".."):
        return name
    return f"{image_id}.jpg"


def load_voc_split(
    root: PathLike, year: Union[int, str], split: str, classes: Sequence[str] = VOC_CLASSES
) -> List[VocRecord]:
    """Read the annotations of every image of ``ImageSets/Main/<split>.txt`` of ``root/VOC<year>``, in list order.

    Raises:
        VocFormatError / DataError: the folder, the list or an annotation file is missing or malformed.
    """
    ydir = year_dir(root, year)
    ids = read_image_set(image_set_path(root, year, split))
    ann_dir = ydir / "Annotations"
    records = []
    for image_id in ids:
        p = ann_dir / f"{image_id}.xml"
        if not p.is_file():
            raise VocFormatError(
                f"{p}: annotation file missing for image {image_id!r} of "
                f"{image_set_path(root, year, split)}; check root and the extracted archive"
            )
        ann = read_voc_annotation(p, classes)
        records.append(VocRecord(str(year), image_id, f"VOC{year}/JPEGImages/{_image_file(ann, image_id)}", ann))
    return records


def records_to_coco(
    records: Sequence[VocRecord],
    classes: Sequence[str] = VOC_CLASSES,
    *,
    use_difficult: bool = False,
    description: str = "",
) -> dict:
    """A COCO-format dict of ``records`` (paths relative to the VOCdevkit root).

    * ``images``: ``id`` 1..N in record order, ``file_name`` (``VOC2007/JPEGImages/000001.jpg``), ``width``,
      ``height``, ``voc_id`` (the devkit's image id) and ``voc_year``;
    * ``annotations``: ``bbox = xyxy_to_xywh(voc_to_xyxy(box))``, i.e. ``[xmin - 1, ymin - 1, xmax - xmin + 1,
      ymax - ymin + 1]``, ``area = w * h``, ``difficult`` and ``truncated`` (0/1), and ``iscrowd = difficult``
      unless ``use_difficult`` (then 0): a COCO tool neither trains on a difficult object nor counts it;
    * ``categories``: ``{"id": k, "name": classes[k - 1]}``, so category id == label.
    """
    images, annotations = [], []
    for image_id, rec in enumerate(records, 1):
        ann = rec.annotation
        images.append(
            {
                "id": image_id,
                "file_name": rec.file_name,
                "width": ann.width,
                "height": ann.height,
                "voc_id": rec.image_id,
                "voc_year": rec.year,
            }
        )
        annotations += box_annotations(
            image_id,
            xyxy_to_xywh(voc_to_xyxy(ann.boxes)),
            ann.labels,
            first_id=len(annotations) + 1,
            iscrowd=ann.difficult & (not use_difficult),
            difficult=ann.difficult,
            truncated=ann.truncated,
        )
    return {
        "info": {"description": description or "PASCAL VOC converted by restransfer"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(classes)],
    }
