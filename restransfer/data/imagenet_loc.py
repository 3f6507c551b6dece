"""ImageNet CLS-LOC (the ILSVRC classification-with-localization task): readers and COCO conversion.

Two layouts hold the same annotations:

* the ILSVRC devkit: ``ILSVRC/Data/CLS-LOC/{train,val,test}/`` images, ``ILSVRC/Annotations/CLS-LOC/{train,val}/``
  PASCAL-VOC-like XML files (train ones in one folder per WNID), ``map_clsloc.txt`` (``n02119789 1 kit_fox``:
  WNID, devkit id 1..1000, name), ``ILSVRC2015_clsloc_validation_ground_truth.txt`` (one line of devkit ids per
  validation image, in the order of the XML files sorted by name) and the validation blacklist
  (1-based image indices);
* the Kaggle copy: the same image folders, ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``; lines
  sorted by WNID, which is *not* the devkit id order) and ``LOC_{train,val}_solution.csv``
  (``ImageId,PredictionString`` with ``WNID xmin ymin xmax ymax`` repeated for every box).

Both readers return the same structure, a list of :class:`LocImage` (image name, image-level WNIDs, and
``(WNID, box)`` pairs with devkit boxes), so evaluation and conversion do not care where it came from.
Classes are matched by WNID, never by position in a file. Boxes stay in the devkit's inclusive pixel
indices (``width = xmax - xmin + 1``) until :func:`to_coco` converts them at the file boundary with
:mod:`restransfer.boxes`. The class list, the id map, the XML reader and the error style are those of
:mod:`restransfer.data.ilsvrc`, shared with ImageNet-DET; this module holds what only CLS-LOC has.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..boxes import devkit_to_xyxy, xywh_to_xyxy, xyxy_to_devkit, xyxy_to_xywh
from .ilsvrc import (  # noqa: F401  (re-exported)
    IlsvrcFormatError,
    Synsets,
    is_number,
    read_loc_synset_mapping,
    read_map_clsloc,
    read_synsets,
    read_xml_annotation,
    where,
)
from .image_io import read_image_size
from .json_io import read_json, read_text

__all__ = [
    "LocFormatError",
    "Synsets",
    "LocImage",
    "read_synsets",
    "read_map_clsloc",
    "read_loc_synset_mapping",
    "read_loc_xml",
    "read_devkit_annotations",
    "read_ground_truth_labels",
    "read_kaggle_solution",
    "iter_kaggle_rows",
    "parse_box_groups",
    "read_blacklist",
    "list_images",
    "fill_image_sizes",
    "to_coco",
    "ground_truth_from_coco",
    "convert_split",
]

IMAGE_EXTENSION = ".JPEG"

LocFormatError = IlsvrcFormatError  # the one ILSVRC format error, under its CLS-LOC name


# ------------------------------------------------------------------------------------ ground truth


@dataclass
class LocImage:
    """One image's CLS-LOC ground truth.

    Attributes:
        name: image name without extension, e.g. ``ILSVRC2012_val_00000001``.
        file_name: path relative to the image root ``ILSVRC/Data/CLS-LOC``, e.g. ``val/ILSVRC2012_val_00000001.JPEG``.
        labels: the image-level ground-truth WNIDs (usually one); evaluation averages over them.
        box_wnids: WNID of every box, length M.
        boxes: (M, 4) float64 devkit boxes, inclusive pixel indices ``xmin ymin xmax ymax``.
        width, height: image size in pixels when the source gives it (XML files do, Kaggle CSVs do not).
    """

    name: str
    file_name: str
    labels: Tuple[str, ...]
    box_wnids: Tuple[str, ...] = ()
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    width: Optional[int] = None
    height: Optional[int] = None


def read_loc_xml(path: os.PathLike | str, synsets: Synsets, *, file_name: Optional[str] = None) -> LocImage:
    """Read one CLS-LOC XML annotation with :func:`restransfer.data.ilsvrc.read_xml_annotation` (DOCTYPE and
    entities refused, finite coordinates, errors with file and line).

    The image name is the XML file's stem (some train XMLs carry a literal ``%s`` in ``<filename>``, so that
    field is not trusted).

    Args:
        path: the ``.xml`` file.
        synsets: the class list; every ``<object><name>`` must be one of its WNIDs.
        file_name: the image path to record relative to the image root (default ``<stem>.JPEG``).

    Returns:
        a :class:`LocImage` whose labels are the distinct object WNIDs in order of appearance.
    """
    ann = read_xml_annotation(path, synsets)
    stem = Path(path).stem
    return LocImage(
        name=stem,
        file_name=file_name or stem + IMAGE_EXTENSION,
        labels=tuple(dict.fromkeys(ann.wnids)),
        box_wnids=tuple(ann.wnids),
        boxes=ann.boxes,
        width=ann.width,
        height=ann.height,
    )


def read_ground_truth_labels(
    path: os.PathLike | str, synsets: Synsets, num_images: Optional[int] = None
) -> List[Tuple[str, ...]]:
    """Read the devkit's validation ground truth: line ``i`` holds the devkit id(s) of image ``i``.

    Args:
        path: ``ILSVRC2015_clsloc_validation_ground_truth.txt``.
        synsets: the class list whose labels are the ids in the file (``map_clsloc.txt``).
        num_images: when given, the number of lines required.

    Returns:
        one tuple of WNIDs per image.

    Raises:
        IlsvrcFormatError: an empty or non-integer line, an id outside the class list, a repeated id, the wrong count.
    """
    lines = read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out: List[Tuple[str, ...]] = []
    for lineno, raw in enumerate(lines, 1):
        tokens = raw.split()
        if not tokens:
            raise IlsvrcFormatError(f"{where(path, lineno)}: empty line; every image needs its class id")
        wnids: List[str] = []
        for t in tokens:
            if not t.isdigit():
                raise IlsvrcFormatError(f"{where(path, lineno)}: {t!r} is not a class id (positive integer)")
            try:
                wnid = synsets.wnid(int(t))
            except KeyError:
                raise IlsvrcFormatError(
                    f"{where(path, lineno)}: class id {t} is not in {synsets.path or 'the class list'} "
                    f"(1..{len(synsets)})"
                ) from None
            if wnid in wnids:
                raise IlsvrcFormatError(f"{where(path, lineno)}: class id {t} is repeated")
            wnids.append(wnid)
        out.append(tuple(wnids))
    if num_images is not None and len(out) != num_images:
        raise IlsvrcFormatError(
            f"{path}: {len(out)} lines, but there are {num_images} annotation files; "
            "the ground truth and the annotation folder must be the same split"
        )
    return out


def read_devkit_annotations(
    xml_dir: os.PathLike | str, synsets: Synsets, *, ground_truth: Optional[os.PathLike | str] = None
) -> List[LocImage]:
    """Read a devkit annotation folder (``ILSVRC/Annotations/CLS-LOC/val`` or ``.../train``).

    Images come in the devkit's order: XML paths relative to ``xml_dir`` sorted by name (for ``val`` a flat
    folder, so the order of the ground-truth file and the blacklist indices). ``file_name`` is
    ``<folder name>/<relative path>.JPEG``, e.g. ``train/n01440764/n01440764_10026.JPEG``.

    Args:
        xml_dir: the folder of XML files (searched recursively).
        synsets: the class list.
        ground_truth: the devkit's validation ground-truth file; when given, its ids are the image-level labels
            (otherwise the distinct object WNIDs are).

    Raises:
        IlsvrcFormatError: no XML files, a malformed file, or a ground truth of another length.
    """
    xml_dir = Path(xml_dir)
    if not xml_dir.is_dir():
        raise IlsvrcFormatError(f"{xml_dir}: annotation folder not found (expected ILSVRC/Annotations/CLS-LOC/<split>)")
    rel = sorted(p.relative_to(xml_dir).as_posix() for p in xml_dir.rglob("*.xml"))
    if not rel:
        raise IlsvrcFormatError(f"{xml_dir}: no .xml files; point to ILSVRC/Annotations/CLS-LOC/<split>")
    images = [read_loc_xml(xml_dir / r, synsets, file_name=f"{xml_dir.name}/{r[:-4]}{IMAGE_EXTENSION}") for r in rel]
    if ground_truth is not None:
        for img, labels in zip(images, read_ground_truth_labels(ground_truth, synsets, len(images))):
            img.labels = labels
    for img in images:
        if not img.labels:
            # train XMLs sit in their class folder; an image with no object still belongs to that class
            folder = Path(img.file_name).parent.name
            if folder in synsets:
                img.labels = (folder,)
    return images


def read_kaggle_solution(path: os.PathLike | str, synsets: Synsets, *, split: Optional[str] = None) -> List[LocImage]:
    """Read Kaggle's ``LOC_{train,val}_solution.csv`` (``ImageId,PredictionString``).

    Args:
        path: the CSV file.
        synsets: the class list; WNIDs are looked up in it (its order does not matter).
        split: ``"train"`` or ``"val"`` for ``file_name`` (``train/<wnid>/<id>.JPEG`` or ``val/<id>.JPEG``);
            by default taken from the file name (``LOC_train_solution.csv`` -> train), else val.

    Returns:
        images sorted by ImageId (the devkit order for val); labels are the distinct box WNIDs in order of
        appearance.

    Raises:
        IlsvrcFormatError: a wrong header, a field count that is not a multiple of 5, a non-numeric coordinate, an
            unknown WNID, an image without boxes or a repeated ImageId (with file and line).
    """
    path = Path(path)
    if split is None:
        split = "train" if "train" in path.name.lower() else "val"
    images: Dict[str, LocImage] = {}
    for lineno, image_id, tokens in iter_kaggle_rows(path):
        wnids, boxes = parse_box_groups(tokens, path, lineno, synsets, what="box")
        if not wnids:
            raise IlsvrcFormatError(f"{where(path, lineno)}: image {image_id} has no box")
        if image_id in images:
            raise IlsvrcFormatError(f"{where(path, lineno)}: ImageId {image_id} appears twice")
        sub = f"{split}/{image_id.split('_')[0]}" if split == "train" else split
        images[image_id] = LocImage(
            name=image_id,
            file_name=f"{sub}/{image_id}{IMAGE_EXTENSION}",
            labels=tuple(dict.fromkeys(wnids)),
            box_wnids=tuple(wnids),
            boxes=boxes,
        )
    if not images:
        raise IlsvrcFormatError(f"{path}: no images")
    return [images[k] for k in sorted(images)]


def iter_kaggle_rows(path: os.PathLike | str) -> Iterator[Tuple[int, str, List[str]]]:
    """Rows of a Kaggle ``ImageId,PredictionString`` CSV as ``(line number, ImageId, prediction tokens)``;
    blank rows are skipped.

    Raises:
        IlsvrcFormatError: a wrong header or a row without exactly two columns.
    """
    with io.StringIO(read_text(path, newline=""), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise IlsvrcFormatError(f"{where(path, 1)}: expected the header 'ImageId,PredictionString', got {header}")
        for row in reader:
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != 2:
                raise IlsvrcFormatError(
                    f"{where(path, reader.line_num)}: expected 2 columns (ImageId,PredictionString), got {len(row)}"
                )
            yield reader.line_num, row[0].strip(), row[1].split()


def parse_box_groups(
    tokens: Sequence[str], path: Union[str, os.PathLike], lineno: int, synsets: Synsets, what: str
) -> Tuple[List[str], np.ndarray]:
    """``WNID xmin ymin xmax ymax`` groups -> (WNIDs, (M, 4) float64 boxes), with errors at ``path:lineno``."""
    if len(tokens) % 5:
        raise IlsvrcFormatError(
            f"{where(path, lineno)}: {len(tokens)} fields; each {what} needs 5 (WNID xmin ymin xmax ymax)"
        )
    wnids = list(tokens[0::5])
    for w in wnids:
        if w not in synsets:
            raise IlsvrcFormatError(f"{where(path, lineno)}: WNID {w!r} is not in {synsets.path or 'the class list'}")
    try:
        boxes = np.array([float(t) for i, t in enumerate(tokens) if i % 5], dtype=np.float64).reshape(-1, 4)
    except ValueError:
        bad = next(t for i, t in enumerate(tokens) if i % 5 and not is_number(t))
        raise IlsvrcFormatError(f"{where(path, lineno)}: coordinate {bad!r} is not a number") from None
    if not np.isfinite(boxes).all():
        bad = next(t for i, t in enumerate(tokens) if i % 5 and not math.isfinite(float(t)))
        raise IlsvrcFormatError(f"{where(path, lineno)}: coordinate {bad!r} is not a finite number")
    return wnids, boxes


def read_blacklist(path: os.PathLike | str, num_images: int) -> np.ndarray:
    """Read the devkit's validation blacklist (one 1-based image index per line).

    Returns:
        sorted 0-based indices, int64 (B,).

    Raises:
        IlsvrcFormatError: a non-integer, an index outside 1..num_images, or a repeated index (which would count
            twice in the devkit's denominator).
    """
    out: Dict[int, int] = {}
    for lineno, raw in enumerate(read_text(path).splitlines(), 1):
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) != 1 or not tokens[0].isdigit():
            raise IlsvrcFormatError(
                f"{where(path, lineno)}: expected one image index (1-based integer), got {raw.strip()!r}"
            )
        idx = int(tokens[0])
        if not 1 <= idx <= num_images:
            raise IlsvrcFormatError(
                f"{where(path, lineno)}: image index {idx} is outside 1..{num_images}; "
                "is this the blacklist of another split?"
            )
        if idx in out:
            raise IlsvrcFormatError(f"{where(path, lineno)}: image index {idx} already listed on line {out[idx]}")
        out[idx] = lineno
    return np.array(sorted(out), dtype=np.int64) - 1


# ------------------------------------------------------------------------------------ image folders


def list_images(image_root: os.PathLike | str, split: str, synsets: Optional[Synsets] = None) -> List[LocImage]:
    """Every ``.JPEG`` under ``image_root/split`` as a :class:`LocImage` without boxes, sorted by path.

    Train images sit in ``train/<WNID>/``; with ``synsets`` given, that folder's WNID becomes the image label
    (the classification ground truth of the many train images that have no boxes).
    """
    base = Path(image_root) / split
    if not base.is_dir():
        raise IlsvrcFormatError(f"{base}: image folder not found (expected ILSVRC/Data/CLS-LOC/{split})")
    rel = sorted(p.relative_to(image_root).as_posix() for p in base.rglob("*" + IMAGE_EXTENSION))
    out = []
    for r in rel:
        folder = Path(r).parent.name
        labels = (folder,) if synsets is not None and folder in synsets else ()
        out.append(LocImage(name=Path(r).stem, file_name=r, labels=labels))
    return out


def fill_image_sizes(images: Iterable[LocImage], image_root: os.PathLike | str) -> None:
    """Set ``width``/``height`` of images that lack them from the image file's header.

    Only the header is read (:func:`restransfer.data.image_io.read_image_size` for JPEG, PNG and the other
    common formats, Pillow for the rest), never the pixels, so this costs well under a millisecond per image
    and an image declaring billions of pixels costs no more.

    Raises:
        IlsvrcFormatError: a missing or unreadable image.
    """
    for img in images:
        if img.width is not None and img.height is not None:
            continue
        path = Path(image_root) / img.file_name
        try:
            size = read_image_size(path)
        except OSError as e:
            raise IlsvrcFormatError(
                f"{path}: cannot read the image size ({e.strerror or e}); check --image-root"
            ) from None
        img.width, img.height = size if size is not None else _pillow_size(path)


def _pillow_size(path: Path) -> Tuple[int, int]:
    """The size of a format :func:`read_image_size` does not parse, from Pillow's header reading."""
    from PIL import Image  # a torchvision dependency, for the rare formats only

    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError as e:  # the size is above twice Pillow's guard: not decoded either way
        raise IlsvrcFormatError(f"{path}: {e}") from None
    except (OSError, SyntaxError) as e:
        raise IlsvrcFormatError(f"{path}: cannot read the image size ({e}); check --image-root") from None


# ---------------------------------------------------------------------------------------- COCO json


def to_coco(images: Sequence[LocImage], synsets: Synsets, *, description: str = "ImageNet CLS-LOC") -> dict:
    """CLS-LOC ground truth -> a COCO-format dict.

    * ``categories``: one per class, ``{"id": label, "name", "wnid"}``; the ids are the synsets' labels, i.e. the
      devkit ids when the class list is ``map_clsloc.txt``.
    * ``images``: ids 1..N in the given order (for val: the devkit image index), plus ``"name"`` and
      ``"labels"`` (image-level class ids; the classification ground truth, also for images without boxes).
    * ``annotations``: ``bbox`` in COCO xywh, clipped to the image (a few ILSVRC boxes end one pixel past the
      border, which augmentation libraries reject); ``devkit_bbox`` keeps the original inclusive box so that
      :func:`ground_truth_from_coco` gives back exactly what the devkit evaluates. A box with no area left
      after clipping (entirely outside its image) cannot be trained on; it is kept only for evaluation, in the
      image's ``"devkit_boxes_outside"`` list (``{"category_id", "devkit_bbox"}``).

    Every image must have ``width`` and ``height`` (see :func:`fill_image_sizes`).
    """
    categories = [{"id": k + 1, "name": n, "wnid": w} for k, (w, n) in enumerate(zip(synsets.wnids, synsets.names))]
    out_images, annotations = [], []
    for image_id, img in enumerate(images, 1):
        if img.width is None or img.height is None:
            raise ValueError(f"image {img.file_name}: width/height unknown; call fill_image_sizes first")
        out_images.append(
            {
                "id": image_id,
                "file_name": img.file_name,
                "width": int(img.width),
                "height": int(img.height),
                "name": img.name,
                "labels": [synsets.label(w) for w in img.labels],
            }
        )
        if not len(img.boxes):
            continue
        xyxy = devkit_to_xyxy(img.boxes)
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, img.width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, img.height)
        xywh = xyxy_to_xywh(xyxy)
        for wnid, box, dk in zip(img.box_wnids, xywh, img.boxes):
            entry = {"category_id": synsets.label(wnid), "devkit_bbox": [float(v) for v in dk]}
            if box[2] <= 0 or box[3] <= 0:
                out_images[-1].setdefault("devkit_boxes_outside", []).append(entry)
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    **entry,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": description, "category_ids": synsets.source},
        "images": out_images,
        "annotations": annotations,
        "categories": categories,
    }


def ground_truth_from_coco(data: dict | os.PathLike | str) -> Tuple[List[LocImage], Synsets]:
    """A COCO dict or json file written by :func:`to_coco` -> (images in image-id order, synsets).

    Boxes come from ``devkit_bbox`` when present (exact devkit ground truth, including the image's
    ``devkit_boxes_outside``), otherwise from ``bbox``; image labels from ``labels`` when present, otherwise the
    distinct box classes.

    Raises:
        IlsvrcFormatError: categories without ``wnid`` or with ids that are not 1..K.
    """
    where = "the COCO dict"
    if not isinstance(data, dict):
        where = str(data)
        data = read_json(data, "annotation file")
        if not isinstance(data, dict):
            raise IlsvrcFormatError(f"{where}: expected a COCO object with images/annotations/categories")
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    if [c["id"] for c in cats] != list(range(1, len(cats) + 1)) or any("wnid" not in c for c in cats):
        raise IlsvrcFormatError(
            f"{where}: categories must have ids 1..K and a 'wnid' field; "
            "convert the annotations with datasets/prepare_imagenet_loc.py"
        )
    synsets = Synsets(tuple(c["wnid"] for c in cats), tuple(c.get("name", c["wnid"]) for c in cats), "coco", where)
    per_image: Dict[int, List[dict]] = {}
    for ann in data.get("annotations", []):
        per_image.setdefault(ann["image_id"], []).append(ann)
    images = []
    for im in sorted(data["images"], key=lambda i: i["id"]):
        anns = per_image.get(im["id"], []) + list(im.get("devkit_boxes_outside", []))
        wnids = tuple(synsets.wnid(a["category_id"]) for a in anns)
        boxes = np.array(
            [a["devkit_bbox"] if "devkit_bbox" in a else xyxy_to_devkit(xywh_to_xyxy(a["bbox"]))[0] for a in anns],
            dtype=np.float64,
        ).reshape(-1, 4)
        labels = tuple(synsets.wnid(k) for k in im["labels"]) if "labels" in im else tuple(dict.fromkeys(wnids))
        name = im.get("name") or Path(im["file_name"]).stem
        images.append(
            LocImage(
                name=name,
                file_name=im["file_name"],
                labels=labels,
                box_wnids=wnids,
                boxes=boxes,
                width=im.get("width"),
                height=im.get("height"),
            )
        )
    return images, synsets


def convert_split(
    split: str,
    synsets: Synsets,
    image_root: os.PathLike | str,
    *,
    annotations: Optional[os.PathLike | str] = None,
    ground_truth: Optional[os.PathLike | str] = None,
    solution: Optional[os.PathLike | str] = None,
    keep_unboxed: bool = False,
) -> dict:
    """Read one split in either layout and return its COCO dict (:func:`to_coco`).

    Args:
        split: ``train``, ``val`` or ``test`` (test: every image under ``image_root/test``, no annotations).
        synsets: the class list; category ids are its labels (devkit ids with ``map_clsloc.txt``).
        image_root: ``ILSVRC/Data/CLS-LOC``; ``file_name`` entries are relative to it. Image sizes missing from
            the annotations (Kaggle CSVs) are read from the image headers here.
        annotations, ground_truth: devkit layout (XML folder, and for val the ground-truth file).
        solution: Kaggle layout (``LOC_<split>_solution.csv``).
        keep_unboxed: also list the images under ``image_root/<split>`` that have no boxes (most of train),
            with their folder's class as image label, for classification; by default only images with boxes
            are written, since a detector learns nothing from them.
    """
    if split == "test":
        images = list_images(image_root, split)
    elif (annotations is None) == (solution is None):
        raise ValueError(f"split {split}: give either the devkit annotation folder or the Kaggle solution CSV")
    elif annotations is not None:
        images = read_devkit_annotations(annotations, synsets, ground_truth=ground_truth)
    else:
        images = read_kaggle_solution(solution, synsets, split=split)
    if keep_unboxed and split != "test":
        boxed = {im.file_name for im in images}
        images = sorted(
            images + [im for im in list_images(image_root, split, synsets) if im.file_name not in boxed],
            key=lambda im: im.file_name,
        )
    fill_image_sizes(images, image_root)
    return to_coco(images, synsets, description=f"ImageNet CLS-LOC {split}")
