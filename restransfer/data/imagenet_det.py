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

XML files are untrusted input: they are parsed with expat, documents that declare a DOCTYPE or
entities are refused (no entity expansion), and every error names the file and, where there is one,
the line.
"""
from __future__ import annotations

import os
import xml.parsers.expat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from restransfer.boxes import devkit_to_xyxy, xyxy_to_xywh

__all__ = [
    "DetFormatError",
    "DetSynsets",
    "DetAnnotation",
    "DetRecord",
    "text_fields",
    "parse_int",
    "read_synsets",
    "read_annotation",
    "read_image_list",
    "read_train_list",
    "read_split_list",
    "train_positive_images",
    "balanced_val_split",
    "load_split",
    "records_to_coco",
    "write_image_list",
    "SPLITS",
]

SPLITS = ("train", "val", "val1", "val2", "train+val1")


class DetFormatError(ValueError):
    """An ImageNet-DET file is malformed; the message names the file (and line) and what to do."""


def _where(path: os.PathLike | str, line: Optional[int] = None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def text_fields(
    path: os.PathLike | str, usage: str, min_fields: int, max_fields: Optional[int] = None, maxsplit: int = -1
) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(line number, fields)`` of the non-blank lines of a whitespace-separated text file.

    A line with fewer than ``min_fields`` or more than ``max_fields`` fields (None: no maximum) raises
    DetFormatError ``file:line: expected '<usage>', got n fields``.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split(maxsplit=maxsplit) if maxsplit >= 0 else line.split()
            if not fields:
                continue
            if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
                raise DetFormatError(f"{_where(path, lineno)}: expected '{usage}', got {len(fields)} fields")
            yield lineno, fields


def parse_int(token: str, what: str, path: os.PathLike | str, lineno: int) -> int:
    """``int(token)``, or DetFormatError ``file:line: <what> '<token>' is not an integer``."""
    try:
        return int(token)
    except ValueError:
        raise DetFormatError(f"{_where(path, lineno)}: {what} {token!r} is not an integer") from None


# ------------------------------------------------------------------------------------------ synsets


@dataclass(frozen=True)
class DetSynsets:
    """The devkit class list. DET id ``i + 1`` is ``wnids[i]`` / ``names[i]``; ids are 1..K."""

    wnids: Tuple[str, ...]
    names: Tuple[str, ...]
    path: str = ""

    @cached_property
    def wnid_to_id(self) -> Dict[str, int]:
        return {w: i + 1 for i, w in enumerate(self.wnids)}

    def __len__(self) -> int:
        return len(self.wnids)


def read_synsets(path: os.PathLike | str) -> DetSynsets:
    """Read the devkit's ``map_det.txt``: lines ``<WNID> <DET id> <name>`` (name may contain spaces).

    The ids must be exactly 1..K (in any line order); the result is ordered by id.
    """
    entries: Dict[int, Tuple[str, str, int]] = {}
    seen: Dict[str, int] = {}
    for lineno, fields in text_fields(path, "<WNID> <DET id> <name>", 2, maxsplit=2):
        wnid = fields[0]
        name = fields[2].strip() if len(fields) > 2 else wnid
        det_id = parse_int(fields[1], "DET id", path, lineno)
        if det_id in entries:
            raise DetFormatError(f"{_where(path, lineno)}: DET id {det_id} repeats line {entries[det_id][2]}")
        if wnid in seen:
            raise DetFormatError(f"{_where(path, lineno)}: WNID {wnid} repeats line {seen[wnid]}")
        entries[det_id] = (wnid, name, lineno)
        seen[wnid] = lineno
    if not entries:
        raise DetFormatError(f"{path}: no classes; expected lines '<WNID> <DET id> <name>' (the devkit's map_det.txt)")
    k = len(entries)
    if sorted(entries) != list(range(1, k + 1)):
        missing = sorted(set(range(1, k + 1)) - set(entries))
        raise DetFormatError(f"{path}: DET ids must be 1..{k} without gaps; missing {missing[:5]}")
    return DetSynsets(
        wnids=tuple(entries[i][0] for i in range(1, k + 1)),
        names=tuple(entries[i][1] for i in range(1, k + 1)),
        path=str(path),
    )


# ---------------------------------------------------------------------------------------------- XML


@dataclass
class DetAnnotation:
    """One XML annotation file.

    ``boxes`` is (N, 4) float64 in devkit inclusive ``xmin, ymin, xmax, ymax``; ``wnids`` and ``lines``
    (the line of each ``<object>`` in the file) have length N; ``labels`` (N,) int64 holds DET ids when
    the file was read with synsets, else zeros. ``width``/``height`` are None when ``<size>`` is absent.
    """

    path: str
    width: Optional[int]
    height: Optional[int]
    wnids: List[str]
    boxes: np.ndarray
    lines: List[int]
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class _Node:
    __slots__ = ("tag", "line", "children", "text")

    def __init__(self, tag: str, line: int):
        self.tag = tag
        self.line = line
        self.children: List["_Node"] = []
        self.text: List[str] = []

    def find(self, tag: str) -> Optional["_Node"]:
        for c in self.children:
            if c.tag == tag:
                return c
        return None

    def findall(self, tag: str) -> List["_Node"]:
        return [c for c in self.children if c.tag == tag]

    def value(self) -> str:
        return "".join(self.text).strip()


def _parse_xml(path: str) -> _Node:
    """Parse a small XML file into a tree of _Node with line numbers; refuse DOCTYPE/entities."""
    data = Path(path).read_bytes()
    parser = xml.parsers.expat.ParserCreate()
    root = _Node("", 0)
    stack = [root]

    def start(tag, _attrs):
        node = _Node(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def end(_tag):
        stack.pop()

    def chars(text):
        stack[-1].text.append(text)

    def refuse(*_args):
        # Entity declarations allow exponential expansion ("billion laughs"); annotation files never need them.
        raise DetFormatError(
            f"{_where(path, parser.CurrentLineNumber)}: DOCTYPE/entity declarations are not allowed in annotation files"
        )

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as e:
        raise DetFormatError(
            f"{_where(path, e.lineno)}: malformed XML ({xml.parsers.expat.ErrorString(e.code)}, "
            f"column {e.offset + 1}); re-extract the annotation archive or fix the file"
        ) from None
    if not root.children:
        raise DetFormatError(f"{path}: empty XML document")
    return root.children[0]


def _number(node: Optional[_Node], what: str, path: str, parent_line: int) -> float:
    if node is None:
        raise DetFormatError(f"{_where(path, parent_line)}: missing <{what}>")
    text = node.value()
    try:
        value = float(text)
    except ValueError:
        raise DetFormatError(f"{_where(path, node.line)}: <{what}> is {text!r}, not a number") from None
    if not np.isfinite(value):
        raise DetFormatError(f"{_where(path, node.line)}: <{what}> is {text!r}, not a finite number")
    return value


def read_annotation(path: os.PathLike | str, synsets: Optional[DetSynsets] = None) -> DetAnnotation:
    """Read one PASCAL-VOC-like ILSVRC XML file.

    Args:
        path: the ``.xml`` file.
        synsets: when given, every object's WNID must be one of its classes (else DetFormatError with
            file and line), and ``labels`` receives the DET ids.

    Returns:
        A :class:`DetAnnotation`; objects keep the file's order (the devkit breaks IoU ties by it).
    """
    path = str(path)
    root = _parse_xml(path)
    if root.tag != "annotation":
        raise DetFormatError(f"{_where(path, root.line)}: root element is <{root.tag}>, expected <annotation>")
    width = height = None
    size = root.find("size")
    if size is not None:
        width = int(_number(size.find("width"), "width", path, size.line))
        height = int(_number(size.find("height"), "height", path, size.line))
    wnids: List[str] = []
    lines: List[int] = []
    boxes: List[Tuple[float, float, float, float]] = []
    for obj in root.findall("object"):
        name = obj.find("name")
        if name is None or not name.value():
            raise DetFormatError(f"{_where(path, obj.line)}: <object> without <name> (the WNID)")
        bb = obj.find("bndbox")
        if bb is None:
            raise DetFormatError(f"{_where(path, obj.line)}: <object> without <bndbox>")
        box = tuple(_number(bb.find(k), k, path, bb.line) for k in ("xmin", "ymin", "xmax", "ymax"))
        if box[2] < box[0] or box[3] < box[1]:
            raise DetFormatError(
                f"{_where(path, bb.line)}: bndbox {box} has xmax < xmin or ymax < ymin "
                "(inclusive devkit coordinates need xmin <= xmax, ymin <= ymax)"
            )
        wnids.append(name.value())
        lines.append(obj.line)
        boxes.append(box)  # type: ignore[arg-type]
    labels = np.zeros(len(wnids), dtype=np.int64)
    if synsets is not None:
        lookup = synsets.wnid_to_id
        for i, (w, ln) in enumerate(zip(wnids, lines)):
            if w not in lookup:
                raise DetFormatError(
                    f"{_where(path, ln)}: unknown WNID {w!r}; "
                    f"it is not in the class list {synsets.path or 'map_det.txt'}"
                )
            labels[i] = lookup[w]
    return DetAnnotation(
        path=path,
        width=width,
        height=height,
        wnids=wnids,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        lines=lines,
        labels=labels,
    )


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
            raise DetFormatError(f"{_where(path, lineno)}: image index {index} must be positive")
        if index in first:
            raise DetFormatError(f"{_where(path, lineno)}: image index {index} repeats line {first[index]}")
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
            raise DetFormatError(
                f"{_where(path, lineno)}: flag {flag} must be 1 (positive), 0 (partial) or -1 (negative)"
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
            raise DetFormatError(f"{_where(path, lineno)}: image {name!r} is not in the val image list")
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


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
            raise DetFormatError(
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
    annotation: DetAnnotation


def _read_records(
    root: Path, subset: str, names: Sequence[str], indices: Sequence[Optional[int]], synsets: DetSynsets
) -> List[DetRecord]:
    ann_dir = root / "Annotations" / "DET" / subset
    out = []
    for name, index in zip(names, indices):
        p = ann_dir / f"{name}.xml"
        if not p.is_file():
            raise DetFormatError(
                f"{p}: annotation file missing for image {name!r}; "
                f"check --root and the extracted Annotations/DET/{subset}"
            )
        out.append(DetRecord(subset, name, index, read_annotation(p, synsets)))
    return out


def load_split(
    root: os.PathLike | str,
    split: str,
    synsets: DetSynsets,
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


def records_to_coco(records: Sequence[DetRecord], synsets: DetSynsets, description: str = "") -> dict:
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
            raise DetFormatError(f"{ann.path}: no <size>/<width>,<height>; COCO images need the image size")
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
        for box, label in zip(xywh.tolist(), ann.labels.tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{r.name} {r.index}\n" for r in records if r.index is not None), encoding="utf-8")
