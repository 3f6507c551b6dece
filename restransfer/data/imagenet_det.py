"""ImageNet-DET (ILSVRC2013-2017 DET) readers and conversion to COCO-format json.

The layout is the one of the ILSVRC2015 release::

    ILSVRC/Data/DET/{train,val}/...JPEG
    ILSVRC/Annotations/DET/{train,val}/...xml    PASCAL-VOC-like: size/width,height; object/name (WNID),
                                                 object/bndbox/xmin,ymin,xmax,ymax (inclusive indices)
    ILSVRC/ImageSets/DET/val.txt                 "<image> <index>": index = 1-based image index
    ILSVRC/ImageSets/DET/train_<k>.txt           "<image> <1|0|-1>": positive / partial / negative for class k
    map_det.txt (devkit)                         "<WNID> <DET id 1..200> <name>"

Boxes read from XML stay in the devkit's inclusive convention (``width = xmax - xmin + 1``) as float64
arrays; the COCO json gets ``xyxy_to_xywh(devkit_to_xyxy(box))``, so a box ``(xmin, ymin, xmax, ymax)``
becomes ``[xmin, ymin, xmax - xmin + 1, ymax - ymin + 1]`` and converts back exactly.

XML files, the class list and the text formats shared with CLS-LOC are read by :mod:`restransfer.data.ilsvrc`
(untrusted XML is refused with DOCTYPE/entities; every error names the file and, where there is one, the
line); this module holds what only DET has: image lists, splits, the blacklist and the COCO conversion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from restransfer.boxes import devkit_to_xyxy, xyxy_to_xywh
from restransfer.data.coco_convert import box_annotations
from restransfer.data.ilsvrc import (
    IlsvrcFormatError,
    Synsets,
    XmlAnnotation,
    parse_int,
    read_id_map,
    read_xml_annotation,
    text_fields,
    where,
)
from restransfer.fileio import atomic_write_text

__all__ = [
    "DetFormatError",
    "DetSynsets",
    "DetAnnotation",
    "DetRecord",
    "read_synsets",
    "read_annotation",
    "read_image_list",
    "read_train_list",
    "read_split_list",
    "read_blacklist",
    "train_positive_images",
    "balanced_val_split",
    "load_split",
    "records_to_coco",
    "write_image_list",
    "SPLITS",
]

SPLITS = ("train", "val", "val1", "val2", "train+val1")

# One error type, class list and annotation record for both ILSVRC tasks; the DET names stay importable.
DetFormatError = IlsvrcFormatError
DetSynsets = Synsets
DetAnnotation = XmlAnnotation


def read_synsets(path: os.PathLike | str) -> Synsets:
    """Read the devkit's ``map_det.txt``: lines ``<WNID> <DET id> <name>`` (name may contain spaces).

    The ids must be exactly 1..K (in any line order); the result is ordered by id (see
    :func:`restransfer.data.ilsvrc.read_id_map`).
    """
    return read_id_map(path, id_name="DET id", source="map_det")


def read_annotation(path: os.PathLike | str, synsets: Optional[Synsets] = None) -> XmlAnnotation:
    """Read one DET XML file (:func:`restransfer.data.ilsvrc.read_xml_annotation`); with ``synsets``,
    unknown WNIDs are errors and ``labels`` holds the DET ids."""
    return read_xml_annotation(path, synsets)


# ------------------------------------------------------------------------------------- image lists


def read_image_list(path: os.PathLike | str) -> Tuple[List[str], np.ndarray]:
    """Read an image list such as ``ImageSets/DET/val.txt``.

    Lines are ``<image> <index>``; a line with only ``<image>`` gets its 1-based line number (blank
    lines not counted) as index. Indices must be unique positive integers.

    Returns:
        (names, indices): names without extension, relative to the split folder; indices (N,) int64.
    """
    names: List[str] = []
    indices: List[int] = []
    first: Dict[int, int] = {}
    for lineno, fields in text_fields(path, "<image> [<index>]", 1, 2):
        index = parse_int(fields[1], "image index", path, lineno) if len(fields) == 2 else len(names) + 1
        if index < 1:
            raise IlsvrcFormatError(f"{where(path, lineno)}: image index {index} must be positive")
        if index in first:
            raise IlsvrcFormatError(f"{where(path, lineno)}: image index {index} repeats line {first[index]}")
        first[index] = lineno
        names.append(fields[0])
        indices.append(index)
    return names, np.asarray(indices, dtype=np.int64)


def read_train_list(path: os.PathLike | str) -> Tuple[List[str], np.ndarray]:
    """Read ``train_<k>.txt``: lines ``<image> <1|0|-1>``. Returns (names, flags (N,) int8)."""
    names: List[str] = []
    flags: List[int] = []
    for lineno, fields in text_fields(path, "<image> <1|0|-1>", 2, 2):
        flag = parse_int(fields[1], "flag", path, lineno)
        if flag not in (-1, 0, 1):
            raise IlsvrcFormatError(
                f"{where(path, lineno)}: flag {flag} must be 1 (positive), 0 (partial) or -1 (negative)"
            )
        names.append(fields[0])
        flags.append(flag)
    return names, np.asarray(flags, dtype=np.int8)


def read_split_list(path: os.PathLike | str, known: Set[str]) -> List[str]:
    """Read a val1/val2 split list (e.g. R-CNN's): the first token of each line is a val image name.

    Further tokens (R-CNN lists carry an index) are ignored; the index always comes from ``val.txt``.
    Names not in ``known`` are errors with file and line.
    """
    names: List[str] = []
    seen: Set[str] = set()
    for lineno, fields in text_fields(path, "<image> [...]", 1):
        name = fields[0]
        if name not in known:
            raise IlsvrcFormatError(f"{where(path, lineno)}: image {name!r} is not in the val image list")
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def read_blacklist(path: os.PathLike | str, synsets: Synsets) -> np.ndarray:
    """Read a DET devkit blacklist (``<image_index> <WNID>`` per line) -> (B, 2) int64 ``(index, DET id)``."""
    lookup = synsets.wnid_to_id
    pairs: List[Tuple[int, int]] = []
    for lineno, fields in text_fields(path, "<image_index> <WNID>", 2, 2):
        index = parse_int(fields[0], "image_index", path, lineno)
        if fields[1] not in lookup:
            raise IlsvrcFormatError(
                f"{where(path, lineno)}: unknown WNID {fields[1]!r}; it is not in {synsets.path or 'map_det.txt'}"
            )
        pairs.append((index, lookup[fields[1]]))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def train_positive_images(imagesets_dir: os.PathLike | str, num_classes: int) -> List[str]:
    """Names of the training images that are positive (flag 1) for at least one class, sorted.

    Reads ``train_1.txt`` .. ``train_<num_classes>.txt`` in ``imagesets_dir``. Images that are only
    partial (0) or negative (-1) for every class are left out: their objects are not (fully) annotated.
    """
    imagesets_dir = Path(imagesets_dir)
    positives: Set[str] = set()
    for k in range(1, num_classes + 1):
        p = imagesets_dir / f"train_{k}.txt"
        if not p.is_file():
            raise IlsvrcFormatError(
                f"{p}: missing; the ILSVRC ImageSets/DET folder has train_1.txt .. train_{num_classes}.txt"
            )
        names, flags = read_train_list(p)
        positives.update(n for n, fl in zip(names, flags) if fl == 1)
    return sorted(positives)


# ------------------------------------------------------------------------------------- val1 / val2


def balanced_val_split(names: Sequence[str], classes: Sequence[Iterable[int]]) -> Tuple[List[str], List[str]]:
    """Split val images into two halves with balanced per-class image counts, deterministically.

    Algorithm (depends only on the names and the class sets, never on file order or a random seed):

    1. ``freq[c]`` = number of images that contain class ``c``.
    2. Images with objects are visited in order of (``min(freq[c] for c in classes)``, name): images
       of the rarest classes first. Images without objects follow, by name.
    3. Each image goes to the half that has fewer images of its classes: with ``n1[c]``, ``n2[c]``
       the per-class image counts so far, ``d = sum(n1[c] - n2[c] for c in classes)``; ``d < 0`` ->
       val1, ``d > 0`` -> val2, ``d == 0`` -> the half with fewer images (val1 on a tie).

    Args:
        names: image names (unique).
        classes: for each image, the DET ids of its objects (repeats allowed, empty for no objects).

    Returns:
        (val1, val2): the names in each half, in the order of ``names``.
    """
    sets = [frozenset(int(c) for c in cs) for cs in classes]
    if len(sets) != len(names):
        raise ValueError(f"{len(names)} names but {len(sets)} class sets")
    freq: Dict[int, int] = {}
    for s in sets:
        for c in s:
            freq[c] = freq.get(c, 0) + 1
    with_objects = sorted((i for i, s in enumerate(sets) if s), key=lambda i: (min(freq[c] for c in sets[i]), names[i]))
    without = sorted((i for i, s in enumerate(sets) if not s), key=lambda i: names[i])
    n1: Dict[int, int] = {}
    n2: Dict[int, int] = {}
    size = [0, 0]
    half = np.zeros(len(names), dtype=np.int8)
    for i in with_objects + without:
        d = sum(n1.get(c, 0) - n2.get(c, 0) for c in sets[i])
        h = 0 if d < 0 else 1 if d > 0 else (0 if size[0] <= size[1] else 1)
        half[i] = h
        size[h] += 1
        counts = n1 if h == 0 else n2
        for c in sets[i]:
            counts[c] = counts.get(c, 0) + 1
    val1 = [n for n, h in zip(names, half) if h == 0]
    val2 = [n for n, h in zip(names, half) if h == 1]
    return val1, val2


# ------------------------------------------------------------------------------------------ splits


@dataclass
class DetRecord:
    """One image of a split: ``subset`` is "train" or "val", ``name`` the ILSVRC image name (no
    extension), ``index`` its 1-based val.txt index (None for train images)."""

    subset: str
    name: str
    index: Optional[int]
    annotation: XmlAnnotation


def _read_records(
    root: Path, subset: str, names: Sequence[str], indices: Sequence[Optional[int]], synsets: Synsets
) -> List[DetRecord]:
    ann_dir = root / "Annotations" / "DET" / subset
    out = []
    for name, index in zip(names, indices):
        p = ann_dir / f"{name}.xml"
        if not p.is_file():
            raise IlsvrcFormatError(
                f"{p}: annotation file missing for image {name!r}; "
                f"check --root and the extracted Annotations/DET/{subset}"
            )
        out.append(DetRecord(subset, name, index, read_annotation(p, synsets)))
    return out


def load_split(
    root: os.PathLike | str,
    split: str,
    synsets: Synsets,
    val1_list: Optional[os.PathLike | str] = None,
    val2_list: Optional[os.PathLike | str] = None,
) -> List[DetRecord]:
    """Read the images and annotations of one split of an ILSVRC DET folder.

    Args:
        root: the ``ILSVRC`` folder (holding Data/, Annotations/, ImageSets/).
        split: one of ``train``, ``val``, ``val1``, ``val2``, ``train+val1``.
        synsets: from :func:`read_synsets`; unknown WNIDs are errors.
        val1_list, val2_list: optional split lists (R-CNN's ``val1.txt``/``val2.txt``). With one of
            them the other half is its complement in val.txt; with neither, :func:`balanced_val_split`.

    Returns:
        Records in a deterministic order: train images by name, val images in val.txt order. Every
        listed val image is kept, also those without objects.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    root = Path(root)
    sets_dir = root / "ImageSets" / "DET"
    records: List[DetRecord] = []
    if split in ("train", "train+val1"):
        names = train_positive_images(sets_dir, len(synsets))
        records += _read_records(root, "train", names, [None] * len(names), synsets)
    if split == "train":
        return records
    val_names, val_idx = read_image_list(sets_dir / "val.txt")
    val = _read_records(root, "val", val_names, [int(i) for i in val_idx], synsets)
    if split == "val":
        return records + val
    want, other = (val2_list, val1_list) if split == "val2" else (val1_list, val2_list)
    known = set(val_names)
    if want is not None:
        chosen = set(read_split_list(want, known))
    elif other is not None:
        chosen = known - set(read_split_list(other, known))
    else:
        v1, v2 = balanced_val_split(val_names, [r.annotation.labels.tolist() for r in val])
        chosen = set(v2 if split == "val2" else v1)
    return records + [r for r in val if r.name in chosen]


def records_to_coco(records: Sequence[DetRecord], synsets: Synsets, description: str = "") -> dict:
    """COCO-format json dict for records from :func:`load_split`.

    * ``categories``: ``{"id": DET id, "name", "wnid"}`` for all K classes, so category id == DET id.
    * ``images``: ``id`` 1..N in record order; ``file_name`` = ``<subset>/<name>.JPEG`` (relative to
      ``ILSVRC/Data/DET``); ``ilsvrc_name`` = the ILSVRC name; ``ilsvrc_index`` = the val.txt index
      (val images only, what submissions and blacklists refer to).
    * ``annotations``: ``bbox`` = ``xyxy_to_xywh(devkit_to_xyxy(box))``, ``area`` = w * h,
      ``iscrowd`` 0, in XML object order.
    """
    images: List[dict] = []
    annotations: List[dict] = []
    for image_id, rec in enumerate(records, 1):
        ann = rec.annotation
        if ann.width is None or ann.height is None:
            raise IlsvrcFormatError(f"{ann.path}: no <size>/<width>,<height>; COCO images need the image size")
        img = {
            "id": image_id,
            "file_name": f"{rec.subset}/{rec.name}.JPEG",
            "width": ann.width,
            "height": ann.height,
            "ilsvrc_name": rec.name,
        }
        if rec.index is not None:
            img["ilsvrc_index"] = rec.index
        images.append(img)
        xywh = xyxy_to_xywh(devkit_to_xyxy(ann.boxes))
        annotations += box_annotations(image_id, xywh, ann.labels, first_id=len(annotations) + 1)
    categories = [{"id": i + 1, "name": n, "wnid": w} for i, (w, n) in enumerate(zip(synsets.wnids, synsets.names))]
    return {
        "info": {"description": description or "ImageNet-DET converted by restransfer"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_image_list(path: os.PathLike | str, records: Sequence[DetRecord]) -> None:
    """Write the val images of ``records`` as an image list ``<image> <index>`` (val.txt format), for
    evaluating a val subset (val1/val2) with the devkit protocol. Train records are skipped."""
    atomic_write_text(path, "".join(f"{r.name} {r.index}\n" for r in records if r.index is not None))
