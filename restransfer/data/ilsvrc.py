"""What the ILSVRC tasks (DET and CLS-LOC) share: class lists, the devkit's id maps, safe XML annotations,
whitespace-separated text files, and one error style ``file:line: what is wrong; what to do``.

* Class lists: :class:`Synsets` (label ``k`` in 1..K is ``wnids[k - 1]``), read from the devkit's id maps
  (``map_det.txt``, ``map_clsloc.txt``: ``<WNID> <id> <name>``) by :func:`read_id_map`, or from Kaggle's
  ``LOC_synset_mapping.txt`` (``<WNID> <name>``, labels = line numbers); :func:`read_synsets` tells them apart.
* XML annotations (PASCAL-VOC-like: ``size/width,height``; ``object/name`` = WNID, ``object/bndbox``
  inclusive pixel indices) by :func:`read_xml_annotation`. They are untrusted input: expat parses them, a
  document that declares a DOCTYPE or entities is refused (no entity expansion: no "billion laughs", no
  external entities), coordinates must be finite numbers with ``xmin <= xmax`` and ``ymin <= ymax``, and
  every error names the file and the line.

Boxes read here stay in the devkit's inclusive convention; :mod:`restransfer.boxes` converts them.
"""

from __future__ import annotations

import os
import re
import xml.parsers.expat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import DataError
from .json_io import read_text

__all__ = [
    "IlsvrcFormatError",
    "where",
    "text_fields",
    "parse_int",
    "check_wnid",
    "is_number",
    "Synsets",
    "read_id_map",
    "read_map_clsloc",
    "read_loc_synset_mapping",
    "read_synsets",
    "XmlElement",
    "parse_xml",
    "xml_number",
    "XmlAnnotation",
    "read_xml_annotation",
]

_WNID = re.compile(r"^n\d{8}$")


class IlsvrcFormatError(DataError):
    """An ILSVRC file (DET or CLS-LOC) is malformed; the message names the file (and line) and what to do."""


def where(path: os.PathLike | str, line: Optional[int] = None) -> str:
    """``path:line`` (or ``path`` without a line): how every ILSVRC error message starts."""
    return f"{path}:{line}" if line is not None else str(path)


def text_fields(
    path: os.PathLike | str, usage: str, min_fields: int, max_fields: Optional[int] = None, maxsplit: int = -1
) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(line number, fields)`` of the non-blank lines of a whitespace-separated text file.

    A line with fewer than ``min_fields`` or more than ``max_fields`` fields (None: no maximum) raises
    IlsvrcFormatError ``file:line: expected '<usage>', got n fields``.
    """
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        fields = line.split(maxsplit=maxsplit) if maxsplit >= 0 else line.split()
        if not fields:
            continue
        if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
            raise IlsvrcFormatError(f"{where(path, lineno)}: expected '{usage}', got {len(fields)} fields")
        yield lineno, fields


def parse_int(token: str, what: str, path: os.PathLike | str, lineno: int) -> int:
    """``int(token)``, or IlsvrcFormatError ``file:line: <what> '<token>' is not an integer``."""
    try:
        return int(token)
    except ValueError:
        raise IlsvrcFormatError(f"{where(path, lineno)}: {what} {token!r} is not an integer") from None


def is_number(token: str) -> bool:
    """Whether ``float(token)`` succeeds (``nan``/``inf`` included; callers judge finiteness)."""
    try:
        float(token)
        return True
    except ValueError:
        return False


def check_wnid(token: str, path: os.PathLike | str, lineno: int) -> str:
    """``token`` when it is a WNID (``n`` and 8 digits), else IlsvrcFormatError with file and line."""
    if not _WNID.match(token):
        raise IlsvrcFormatError(
            f"{where(path, lineno)}: {token!r} is not a WNID (expected 'n' and 8 digits, e.g. n01440764)"
        )
    return token


# ---------------------------------------------------------------------------------------- synsets


@dataclass(frozen=True)
class Synsets:
    """A class list. Label ``k`` (1..K) is ``wnids[k - 1]`` / ``names[k - 1]``.

    With a devkit id map (``map_det.txt``, ``map_clsloc.txt``) the labels are the devkit ids; with Kaggle's
    ``LOC_synset_mapping.txt`` they are the file's 1-based line numbers. Everything that crosses files goes
    by WNID (:meth:`label`, :attr:`wnid_to_id`).
    """

    wnids: Tuple[str, ...]
    names: Tuple[str, ...]
    source: str = ""  # "map_det", "map_clsloc", "loc_synset_mapping", "coco", ...
    path: Optional[str] = None

    @cached_property
    def wnid_to_id(self) -> Dict[str, int]:
        return {w: i + 1 for i, w in enumerate(self.wnids)}

    def __len__(self) -> int:
        return len(self.wnids)

    def __contains__(self, wnid: str) -> bool:
        return wnid in self.wnid_to_id

    def label(self, wnid: str) -> int:
        """1-based label of ``wnid``; ``KeyError`` when the class list does not have it."""
        return self.wnid_to_id[wnid]

    def wnid(self, label: int) -> str:
        """WNID of the 1-based ``label``."""
        if not 1 <= label <= len(self.wnids):
            raise KeyError(label)
        return self.wnids[label - 1]


def read_id_map(path: os.PathLike | str, *, id_name: str = "devkit id", source: str = "map_clsloc") -> Synsets:
    """Read a devkit id map: lines ``<WNID> <id> <name>`` (``map_det.txt``, ``map_clsloc.txt``; the name may
    contain spaces and defaults to the WNID).

    The ids must be exactly 1..K (in any line order); the result is ordered by id. ``id_name`` ("DET id",
    "devkit id") words the errors.

    Raises:
        IlsvrcFormatError: an unreadable file, a line with fewer than two fields, a bad WNID, a non-integer id,
            a repeated WNID or id, or ids that are not exactly 1..K (with file and line).
    """
    if not Path(path).is_file():
        raise IlsvrcFormatError(f"{path}: class list not found; pass the devkit's map_det.txt / map_clsloc.txt")
    usage = f"<WNID> <{id_name}> <name>"
    entries: Dict[int, Tuple[str, str, int]] = {}
    seen: Dict[str, int] = {}
    for lineno, fields in text_fields(path, usage, 2, maxsplit=2):
        wnid = check_wnid(fields[0], path, lineno)
        class_id = parse_int(fields[1], id_name, path, lineno)
        if wnid in seen:
            raise IlsvrcFormatError(f"{where(path, lineno)}: WNID {wnid} already listed on line {seen[wnid]}")
        if class_id in entries:
            raise IlsvrcFormatError(
                f"{where(path, lineno)}: {id_name} {class_id} already listed on line "
                f"{entries[class_id][2]} ({entries[class_id][0]})"
            )
        entries[class_id] = (wnid, fields[2].strip() if len(fields) > 2 else wnid, lineno)
        seen[wnid] = lineno
    if not entries:
        raise IlsvrcFormatError(f"{path}: no classes; expected lines '{usage}', e.g. 'n02119789 1 kit_fox'")
    k = len(entries)
    missing = sorted(set(range(1, k + 1)) - set(entries))
    if missing:
        raise IlsvrcFormatError(f"{path}: {id_name}s must be 1..{k} without gaps, but {missing[:5]} are missing")
    ordered = [entries[i] for i in range(1, k + 1)]
    return Synsets(tuple(e[0] for e in ordered), tuple(e[1] for e in ordered), source, str(path))


def read_map_clsloc(path: os.PathLike | str) -> Synsets:
    """The devkit's ``map_clsloc.txt`` (``WNID devkit_id name`` per line) -> :class:`Synsets` by devkit id."""
    return read_id_map(path, id_name="devkit id", source="map_clsloc")


def read_loc_synset_mapping(path: os.PathLike | str) -> Synsets:
    """Read Kaggle's ``LOC_synset_mapping.txt`` (``WNID name`` per line) -> :class:`Synsets` in line order.

    Raises:
        IlsvrcFormatError: a bad WNID or a repeated one (with file and line), or no classes.
    """
    wnids: List[str] = []
    names: List[str] = []
    seen: Dict[str, int] = {}
    for lineno, fields in text_fields(path, "<WNID> <name>", 1, maxsplit=1):
        wnid = check_wnid(fields[0], path, lineno)
        if wnid in seen:
            raise IlsvrcFormatError(f"{where(path, lineno)}: WNID {wnid} already listed on line {seen[wnid]}")
        seen[wnid] = lineno
        wnids.append(wnid)
        names.append(fields[1].strip() if len(fields) > 1 else wnid)
    if not wnids:
        raise IlsvrcFormatError(f"{path}: no classes; expected lines like 'n01440764 tench, Tinca tinca'")
    return Synsets(tuple(wnids), tuple(names), "loc_synset_mapping", str(path))


def read_synsets(path: os.PathLike | str) -> Synsets:
    """Read a CLS-LOC class list, telling the two apart by the first line: ``map_clsloc.txt`` has an integer
    second field (``n02119789 1 kit_fox``), ``LOC_synset_mapping.txt`` a name (``n01440764 tench, ...``)."""
    try:
        text = read_text(path)
    except OSError as e:
        raise IlsvrcFormatError(f"{path}: cannot read the class list: {e.strerror or e}") from None
    for raw in text.splitlines():
        parts = raw.split()
        if parts:
            if len(parts) >= 3 and parts[1].isdigit():
                return read_map_clsloc(path)
            return read_loc_synset_mapping(path)
    raise IlsvrcFormatError(f"{path}: the class list is empty")


# ---------------------------------------------------------------------------------------------- XML


class XmlElement:
    """An element of a parsed XML file: ``tag``, ``line`` (1-based, of its start tag), ``children`` in
    document order and its character data (:meth:`value`)."""

    __slots__ = ("tag", "line", "children", "text")

    def __init__(self, tag: str, line: int):
        self.tag = tag
        self.line = line
        self.children: List["XmlElement"] = []
        self.text: List[str] = []

    def find(self, tag: str) -> Optional["XmlElement"]:
        """The first child called ``tag``, or None."""
        for c in self.children:
            if c.tag == tag:
                return c
        return None

    def findall(self, tag: str) -> List["XmlElement"]:
        return [c for c in self.children if c.tag == tag]

    def value(self) -> str:
        """The element's own text, stripped."""
        return "".join(self.text).strip()


def parse_xml(path: os.PathLike | str) -> XmlElement:
    """Parse a small XML file into :class:`XmlElement` s with line numbers; return the root element.

    Raises:
        IlsvrcFormatError: malformed XML, an empty document, or any DOCTYPE or entity declaration (refused
            before anything is expanded), naming the file and the line.
    """
    data = Path(path).read_bytes()
    parser = xml.parsers.expat.ParserCreate()
    root = XmlElement("", 0)
    stack = [root]

    def start(tag: str, _attrs: Dict[str, str]):
        node = XmlElement(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def end(_tag: str):
        stack.pop()

    def chars(text: str):
        stack[-1].text.append(text)

    def refuse(*_args):
        # Entity declarations allow exponential expansion ("billion laughs") and external entities reach
        # outside the file; annotation files never need them.
        raise IlsvrcFormatError(
            f"{where(path, parser.CurrentLineNumber)}: DOCTYPE/entity declarations are not allowed in annotation files"
        )

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as e:
        raise IlsvrcFormatError(
            f"{where(path, e.lineno)}: malformed XML ({xml.parsers.expat.ErrorString(e.code)}, "
            f"column {e.offset + 1}); re-extract the annotation archive or fix the file"
        ) from None
    if not root.children:
        raise IlsvrcFormatError(f"{path}: empty XML document")
    return root.children[0]


@dataclass
class XmlAnnotation:
    """One XML annotation file.

    ``boxes`` is (N, 4) float64 in devkit inclusive ``xmin, ymin, xmax, ymax``; ``wnids`` and ``lines``
    (the line of each ``<object>`` in the file) have length N; ``labels`` (N,) int64 holds the class list's
    labels when the file was read with one, else zeros. ``width``/``height`` are None without ``<size>``.
    """

    path: str
    width: Optional[int]
    height: Optional[int]
    wnids: List[str]
    boxes: np.ndarray
    lines: List[int]
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def xml_number(node: Optional[XmlElement], what: str, path: str, parent_line: int) -> float:
    """The finite number in ``node`` (the child ``<what>`` of the element on ``parent_line``), or
    IlsvrcFormatError naming the file and line: missing, not a number, NaN or infinite."""
    if node is None:
        raise IlsvrcFormatError(f"{where(path, parent_line)}: missing <{what}>")
    text = node.value()
    try:
        value = float(text)
    except ValueError:
        raise IlsvrcFormatError(f"{where(path, node.line)}: <{what}> is {text!r}, not a number") from None
    # float() also accepts "nan" and "inf": a box made of them would match nothing and skew every metric.
    if not np.isfinite(value):
        raise IlsvrcFormatError(f"{where(path, node.line)}: <{what}> is {text!r}, not a finite number")
    return value


def read_xml_annotation(path: os.PathLike | str, synsets: Optional[Synsets] = None) -> XmlAnnotation:
    """Read one PASCAL-VOC-like ILSVRC XML file (DET or CLS-LOC).

    Args:
        path: the ``.xml`` file.
        synsets: when given, every object's WNID must be one of its classes, and ``labels`` receives their
            labels.

    Returns:
        An :class:`XmlAnnotation`; objects keep the file's order (the devkit breaks IoU ties by it).

    Raises:
        IlsvrcFormatError: see :func:`parse_xml`; a root other than ``<annotation>``, an object without
            ``<name>`` or ``<bndbox>``, a missing, non-numeric or non-finite coordinate, ``xmax < xmin`` or
            ``ymax < ymin``, an unknown WNID (with file and line).
    """
    path = str(path)
    root = parse_xml(path)
    if root.tag != "annotation":
        raise IlsvrcFormatError(f"{where(path, root.line)}: root element is <{root.tag}>, expected <annotation>")
    width = height = None
    size = root.find("size")
    if size is not None:
        width = int(xml_number(size.find("width"), "width", path, size.line))
        height = int(xml_number(size.find("height"), "height", path, size.line))
    wnids: List[str] = []
    lines: List[int] = []
    name_lines: List[int] = []
    boxes: List[Tuple[float, ...]] = []
    for obj in root.findall("object"):
        name = obj.find("name")
        if name is None or not name.value():
            raise IlsvrcFormatError(f"{where(path, obj.line)}: <object> without <name> (the WNID)")
        bb = obj.find("bndbox")
        if bb is None:
            raise IlsvrcFormatError(f"{where(path, obj.line)}: <object> without <bndbox>")
        box = tuple(xml_number(bb.find(k), k, path, bb.line) for k in ("xmin", "ymin", "xmax", "ymax"))
        if box[2] < box[0] or box[3] < box[1]:
            raise IlsvrcFormatError(
                f"{where(path, bb.line)}: bndbox {box} has xmax < xmin or ymax < ymin "
                "(inclusive devkit coordinates need xmin <= xmax, ymin <= ymax)"
            )
        wnids.append(name.value())
        lines.append(obj.line)
        name_lines.append(name.line)
        boxes.append(box)
    labels = np.zeros(len(wnids), dtype=np.int64)
    if synsets is not None:
        lookup = synsets.wnid_to_id
        for i, (w, ln) in enumerate(zip(wnids, name_lines)):
            if w not in lookup:
                raise IlsvrcFormatError(
                    f"{where(path, ln)}: unknown WNID {w!r}; it is not in {synsets.path or 'the class list'}; "
                    "use the class list that belongs to these annotations"
                )
            labels[i] = lookup[w]
    return XmlAnnotation(
        path=path,
        width=width,
        height=height,
        wnids=wnids,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        lines=lines,
        labels=labels,
    )
