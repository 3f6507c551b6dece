"""Validation of COCO-format data, one home for training and evaluation.

* :func:`load_coco_json`: read an annotation file and check the structure the toolkit relies on (ids,
  file names, sizes, boxes as ``[x, y, w, h]``), naming the file, the entry and the key.
* :func:`box_problem`, :func:`segmentation_problems`: what is broken about one box or many segmentations (a
  NaN or infinite value, a polygon with fewer than 3 points, a malformed RLE: counts that are not
  non-negative integers summing to height * width, a compressed string that does not decode to them, a
  missing or wrong ``size``). Training skips such annotations (:class:`restransfer.data.coco.CocoDataset`);
  evaluation refuses them.
* :func:`check_ground_truth`, :func:`check_results`: evaluation's checks of a ground truth and a results
  list before either COCO engine runs, so that both refuse the same inputs with the same ``ValueError``
  naming the file, the entry index, the annotation id and the image.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from pycocotools.coco import COCO

from ..errors import DataError
from .json_io import read_json

__all__ = [
    "load_coco_json",
    "box_problem",
    "rle_counts",
    "segmentation_problem",
    "segmentation_problems",
    "check_ground_truth",
    "check_results",
    "check_unique_ids",
    "duplicate_ids",
]

logger = logging.getLogger(__name__)


def _require(cond: bool, json_path: Path, where: str, what: str) -> None:
    if not cond:
        raise DataError(
            f"{json_path}: {where}: {what}. Fix the annotation file (COCO format: https://cocodataset.org/#format-data)"
        )


_NUMBER_TYPES = (int, float, np.integer, np.floating)


def _is_number(v: Any) -> bool:
    return isinstance(v, _NUMBER_TYPES) and not isinstance(v, bool)


def _is_finite_number(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def box_problem(bbox: Any) -> Optional[str]:
    """Why ``bbox`` is not a usable COCO box ``[x, y, w, h]`` of finite numbers, or None when it is.

    JSON files may hold ``Infinity`` and ``NaN`` (Python's json module reads them); such a box would
    be clipped to the whole image or compare false everywhere, so it is broken.
    """
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(map(_is_number, bbox))):
        return f"bbox {bbox!r} is not [x, y, w, h]"
    if not all(map(math.isfinite, bbox)):
        return f"bbox {list(bbox)!r} has a non-finite value"
    return None


def _decode_rle_strings(strings: Sequence[bytes]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode many compressed RLE count strings at once, exactly as pycocotools' ``rleFrString`` does.

    The format: characters ``chr(48 + c)`` with 5 value bits and a continuation bit (0x20) each, a
    group's last character carrying the sign (0x10); runs after the second are delta-coded against
    the run two before. pycocotools' own decoder trusts the counts, and garbage makes its mask
    decoder write outside the mask buffer, so the runs are checked here, in numpy, for all strings
    in one pass (one string at a time costs more in numpy calls than in work).

    Returns ``(runs, bounds, malformed)``: the runs of all strings one after the other (int64),
    string ``i``'s runs being ``runs[bounds[i]:bounds[i + 1]]``, and per string whether
    pycocotools' encoder cannot have written it (characters outside ``0``..``o``, empty, a truncated
    last group, groups too long for 32-bit runs).
    """
    n = len(strings)
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=n)
    string_end = np.cumsum(lengths)
    c = np.frombuffer(b"".join(strings), dtype=np.uint8) - np.uint8(48)  # bytes below "0" wrap past 63
    malformed = lengths == 0
    malformed[np.searchsorted(string_end, np.flatnonzero(c > 63), side="right")] = True
    more = (c & 0x20) != 0
    last = string_end[lengths > 0] - 1
    malformed[lengths > 0] |= more[last]
    more[last] = False  # no group runs into the next string
    ends = np.flatnonzero(~more)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    group_len = ends - starts + 1
    bounds = np.append(np.searchsorted(ends, string_end - lengths), len(ends))
    malformed[np.searchsorted(string_end, ends[group_len > 7], side="right")] = True
    digits = (c & 0x1F).astype(np.int64)
    values = digits[starts]
    active = np.flatnonzero(group_len > 1)
    for j in range(1, 7):  # most groups have 1 or 2 characters
        values[active] += digits[starts[active] + j] << (5 * j)
        active = active[group_len[active] > j + 1]
    negative = np.flatnonzero((c[ends] & 0x10) != 0)
    values[negative] -= np.left_shift(1, 5 * np.minimum(group_len[negative], 7))
    # Run k >= 3 of a string adds run k - 2: cumulative sums along every other run, restarted for
    # each string; a string's first run (k = 0) stays out of them.
    firsts = bounds[:-1][np.diff(bounds) > 0]
    chained = values.copy()
    chained[firsts] = 0
    runs = np.empty_like(values)
    for parity in (0, 1):
        total = np.cumsum(chained[parity::2])
        lo = (bounds - parity + 1) // 2  # string i's runs of this parity: total[lo[i]:lo[i + 1]]
        runs[parity::2] = total - np.repeat(np.concatenate([[0], total])[lo[:-1]], np.diff(lo))
    runs[firsts] = values[firsts]
    return runs, bounds, malformed


def rle_counts(counts: Union[str, bytes]) -> Optional[np.ndarray]:
    """The run lengths (int64) encoded in a compressed COCO RLE string, or None when it is malformed."""
    try:
        raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    except (UnicodeEncodeError, TypeError):
        return None
    runs, _, malformed = _decode_rle_strings([raw])
    return None if malformed[0] else runs


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _rle_size_problem(segm: Dict[str, Any], height: Optional[int], width: Optional[int]) -> Optional[str]:
    size = segm.get("size")
    if size is None:
        return "RLE without a size [height, width]"
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
        return f"RLE size {size!r} is not [height, width]"
    if height is not None and width is not None and list(size) != [height, width]:
        return f"RLE size {list(size)} differs from the image's [{height}, {width}]"
    counts = segm.get("counts")
    if isinstance(counts, list):
        if not all(map(_is_int, counts)):
            return "RLE counts are not all integers"
        if any(v < 0 for v in counts):
            return f"RLE counts hold a negative value ({min(counts)})"
        if sum(counts) != size[0] * size[1]:
            return f"RLE counts sum to {sum(counts)}, not height * width = {size[0] * size[1]}"
        return None
    if not isinstance(counts, (str, bytes)):
        return f"RLE counts must be a list of integers or a compressed string, got {type(counts).__name__}"
    if isinstance(counts, str) and not counts.isascii():
        return "RLE counts string is malformed (not pycocotools' compressed encoding)"
    return None


def _polygon_problem(segm: List[Any]) -> Optional[str]:
    for k, part in enumerate(segm):
        # Whole-list checks (types as a set, finiteness of the sum): COCO-sized files have millions of points.
        if not isinstance(part, list) or not all(
            issubclass(t, _NUMBER_TYPES) and t is not bool for t in set(map(type, part))
        ):
            return f"polygon part {k} is not a list of coordinates [x1, y1, x2, y2, ...]"
        if len(part) < 6 or len(part) % 2:
            return f"polygon part {k} has {len(part)} coordinates; it needs 3 or more (x, y) points"
        if not math.isfinite(sum(part)):
            return f"polygon part {k} has a non-finite coordinate"
    return None


def _chunks(items: List[int], sizes: List[int], budget: int = 1 << 22) -> Iterator[List[int]]:
    """``items`` in consecutive chunks whose ``sizes`` add up to about ``budget`` (bounds memory)."""
    chunk: List[int] = []
    used = 0
    for item, size in zip(items, sizes):
        if chunk and used + size > budget:
            yield chunk
            chunk, used = [], 0
        chunk.append(item)
        used += size
    if chunk:
        yield chunk


def segmentation_problems(
    segms: Sequence[Any], sizes: Sequence[Tuple[Optional[int], Optional[int]]]
) -> List[Optional[Tuple[str, str]]]:
    """Why each COCO ``segmentation`` cannot be rasterised: ``(kind, description)``, or None when it can.

    ``kind`` is ``"polygon"`` (a part with fewer than 3 points, an odd or non-finite coordinate
    list) or ``"RLE"`` (a missing or wrong ``size``; counts that are not non-negative integers
    summing to height * width, or a compressed string that does not decode to such runs).
    ``sizes[i]``: image ``(height, width)`` that RLE ``segms[i]`` must have (None: only its own
    consistency is checked). A missing (None) or empty segmentation is not a problem: it has no
    outline. Compressed strings are decoded together, so one call for many is much faster.
    """
    problems: List[Optional[Tuple[str, str]]] = [None] * len(segms)
    pending: List[int] = []  # compressed RLEs to decode together
    for i, (segm, (height, width)) in enumerate(zip(segms, sizes)):
        if segm is None or (isinstance(segm, list) and not segm):
            continue
        if isinstance(segm, list):
            problem = _polygon_problem(segm)
            problems[i] = ("polygon", problem) if problem else None
        elif isinstance(segm, dict):
            problem = _rle_size_problem(segm, height, width)
            if problem:
                problems[i] = ("RLE", problem)
            elif not isinstance(segm["counts"], list):
                pending.append(i)
        else:
            problems[i] = ("RLE", f"segmentation is a {type(segm).__name__}, neither polygons nor an RLE dict")
    for chunk in _chunks(pending, [len(segms[i]["counts"]) for i in pending]):
        strings = [segms[i]["counts"] for i in chunk]
        runs, bounds, malformed = _decode_rle_strings([v.encode("ascii") if isinstance(v, str) else v for v in strings])
        nonempty = np.flatnonzero(np.diff(bounds) > 0)
        smallest = np.zeros(len(chunk), np.int64)
        total = np.zeros(len(chunk), np.int64)
        if len(nonempty):
            smallest[nonempty] = np.minimum.reduceat(runs, bounds[nonempty])
            total[nonempty] = np.add.reduceat(runs, bounds[nonempty])
        for j, i in enumerate(chunk):
            h, w = segms[i]["size"]
            if malformed[j]:
                problems[i] = ("RLE", "RLE counts string is malformed (not pycocotools' compressed encoding)")
            elif smallest[j] < 0:
                problems[i] = ("RLE", f"RLE counts string decodes to a negative run ({int(smallest[j])})")
            elif int(total[j]) != h * w:
                problems[i] = (
                    "RLE",
                    f"RLE counts string decodes to runs summing to {int(total[j])}, not height * width = {h * w}",
                )
    return problems


def segmentation_problem(
    segm: Any, height: Optional[int] = None, width: Optional[int] = None
) -> Optional[Tuple[str, str]]:
    """:func:`segmentation_problems` of one segmentation."""
    return segmentation_problems([segm], [(height, width)])[0]


def _require_int_ids(entries: List[Any], key: str, json_path: Path, section: str) -> None:
    """Every ``entries[i][key]`` is an integer; else a :class:`DataError` naming the entry and the value."""
    if _all_of_types((e[key] for e in entries), int, np.integer):
        return
    i = next(i for i, e in enumerate(entries) if not _is_int(e[key]))
    raise DataError(
        f"{json_path}: {section}[{i}].{key}: {entries[i][key]!r} is not an integer; COCO ids are "
        "integers (results files and annotations refer to images and categories by them). Fix the "
        "annotation file (COCO format: https://cocodataset.org/#format-data)"
    )


def duplicate_ids(entries: Sequence[Mapping[str, Any]], key: str = "id") -> Dict[Any, List[int]]:
    """``{id: [positions]}`` of the ids that more than one of ``entries`` carries (empty when all differ)."""
    seen: Dict[Any, int] = {}
    dupes: Dict[Any, List[int]] = {}
    for i, e in enumerate(entries):
        v = e[key]
        if v in seen:
            dupes.setdefault(v, [seen[v]]).append(i)
        else:
            seen[v] = i
    return dupes


def _describe_duplicates(dupes: Dict[Any, List[int]], section: str, what: str) -> str:
    shown = "; ".join(
        f"{what} {v!r} at " + ", ".join(f"{section}[{i}]" for i in pos[:4]) + (" ..." if len(pos) > 4 else "")
        for v, pos in list(dupes.items())[:3]
    )
    more = f" and {len(dupes) - 3} more" if len(dupes) > 3 else ""
    return f"{len(dupes)} {what}s appear more than once ({shown}{more})"


def check_unique_ids(data: Mapping[str, Any], name: str, duplicates: str = "error") -> None:
    """Image, category and annotation ids must be unique: ``duplicates="error"`` (evaluation: a duplicated
    annotation silently changes AP) raises a :class:`DataError` naming them; ``"drop"`` (training) warns and
    leaves out every entry after the first of its id, in place."""
    if duplicates not in ("error", "drop"):
        raise ValueError(f"duplicates={duplicates!r}: use 'error' or 'drop'")
    for section, what in (("images", "image id"), ("categories", "category id"), ("annotations", "annotation id")):
        entries = data[section]
        dupes = duplicate_ids(entries)
        if not dupes:
            continue
        text = f"{name}: {_describe_duplicates(dupes, section, what)}"
        if duplicates == "error":
            raise DataError(f"{text}; ids must be unique: remove or renumber the duplicates in the annotation file")
        logger.warning("%s; only the first entry of each id is used", text)
        later = {i for pos in dupes.values() for i in pos[1:]}
        data[section] = [e for i, e in enumerate(entries) if i not in later]


def load_coco_json(json_path: Union[str, os.PathLike], duplicates: str = "error") -> COCO:
    """Read and validate a COCO-format annotation file into a pycocotools ``COCO`` (no output printed).

    Checks the fields the toolkit relies on (``images[i].id/file_name/width/height``,
    ``annotations[i].id/image_id/category_id/bbox``, ``categories[i].id/name``) and raises a
    :class:`DataError` naming the file, the entry index and the key when one is missing or malformed;
    ids are integers. The ``annotations`` list must be present (empty for images without objects).
    Duplicated ids are errors, or with ``duplicates="drop"`` warnings with the later entries left out
    (:func:`check_unique_ids`). The values of boxes and segmentations are not judged here: see
    :func:`box_problem` and :func:`segmentation_problem`.
    """
    json_path = Path(json_path)
    data = read_json(json_path, "annotation file")
    _require(isinstance(data, dict), json_path, "top level", "expected an object with images/annotations/categories")
    for key in ("images", "categories"):
        _require(isinstance(data.get(key), list), json_path, key, "missing or not a list")
    # A file without the key is more likely an image-info file or a truncated export than a set
    # without objects; a set without objects says so with an empty list.
    _require(
        "annotations" in data,
        json_path,
        "annotations",
        'missing (an image-info file?); a set whose images have no objects needs "annotations": []',
    )
    _require(isinstance(data["annotations"], list), json_path, "annotations", "not a list")
    for i, img in enumerate(data["images"]):
        ok = isinstance(img, dict) and all(k in img for k in ("id", "file_name", "width", "height"))
        _require(ok, json_path, f"images[{i}]", "needs id, file_name, width and height")
        _require(
            isinstance(img["file_name"], str) and img["file_name"] != "",
            json_path,
            f"images[{i}] (id {img['id']!r})",
            f"file_name must be a non-empty path, got {img['file_name']!r}",
        )
        _require(
            _is_finite_number(img["width"])
            and _is_finite_number(img["height"])
            and img["width"] > 0
            and img["height"] > 0,
            json_path,
            f"images[{i}] (id {img['id']!r})",
            f"width/height must be positive numbers, got {img['width']!r}x{img['height']!r}",
        )
    _require_int_ids(data["images"], "id", json_path, "images")
    for i, cat in enumerate(data["categories"]):
        _require(
            isinstance(cat, dict) and "id" in cat and "name" in cat, json_path, f"categories[{i}]", "needs id and name"
        )
    _require_int_ids(data["categories"], "id", json_path, "categories")
    for i, ann in enumerate(data["annotations"]):
        ok = isinstance(ann, dict) and all(k in ann for k in ("image_id", "category_id", "bbox"))
        _require(ok, json_path, f"annotations[{i}]", "needs image_id, category_id and bbox")
        bbox = ann["bbox"]
        _require(
            isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox)),
            json_path,
            f"annotations[{i}].bbox",
            f"expected [x, y, w, h], got {bbox!r}",
        )
    anns = data["annotations"]
    _require_int_ids(anns, "image_id", json_path, "annotations")
    _require_int_ids(anns, "category_id", json_path, "annotations")
    with_id = [a for a in anns if "id" in a]
    _require_int_ids(with_id, "id", json_path, "annotations")
    if len(with_id) < len(anns):
        # pycocotools needs ids; files produced by other tools sometimes leave them out. New ids follow the
        # largest given one, so that they cannot repeat an id the file uses.
        next_id = max((int(a["id"]) for a in with_id), default=0) + 1
        for ann in anns:
            if "id" not in ann:
                ann["id"] = next_id
                next_id += 1
    check_unique_ids(data, str(json_path), duplicates)
    image_ids = {img["id"] for img in data["images"]}
    orphans = [a for a in data["annotations"] if a["image_id"] not in image_ids]
    if orphans:
        logger.warning(
            "%s: %d annotations refer to image ids missing from images (first: %r); ignored",
            json_path,
            len(orphans),
            orphans[0]["image_id"],
        )
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in image_ids]
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def check_ground_truth(
    gt_data: Dict[str, Any], name: str, iou_types: Sequence[str], image_ids: Optional[Sequence[int]] = None
) -> None:
    """Raise a DataError naming the first annotation that either engine would misread or crash on
    (among those of ``image_ids``, the images evaluated; None: all)."""
    for key in ("images", "categories", "annotations"):
        if not isinstance(gt_data.get(key), list):
            extra = ' ("annotations": [] when no image has objects)' if key == "annotations" else ""
            raise DataError(
                f"{name}: the ground truth has no {key!r} list{extra}; evaluate against the "
                f"annotation file of the test set"
            )
    sizes = {img.get("id"): (img.get("height"), img.get("width")) for img in gt_data["images"]}
    if image_ids is not None:
        sizes = {i: sizes[i] for i in image_ids if i in sizes}
    for section in ("images", "categories"):
        for i, entry in enumerate(gt_data[section]):
            if not isinstance(entry, dict) or not _is_int(entry.get("id")):
                raise DataError(
                    f"{name}: {section}[{i}]: id {entry.get('id') if isinstance(entry, dict) else entry!r} "
                    "is not an integer; COCO image and category ids are integers"
                )
    anns = gt_data["annotations"]
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or not _is_int(ann.get("image_id")) or not _is_int(ann.get("id")):
            raise DataError(
                f"{name}: annotations[{i}] is not an annotation with integer id and image_id (got id "
                f"{ann.get('id') if isinstance(ann, dict) else None!r}, image_id "
                f"{ann.get('image_id') if isinstance(ann, dict) else None!r})"
            )
    check_unique_ids(gt_data, name, "error")
    evaluated = [i for i, a in enumerate(anns) if a["image_id"] in sizes]
    segm_problems = (
        segmentation_problems(
            [anns[i].get("segmentation") for i in evaluated], [sizes[anns[i]["image_id"]] for i in evaluated]
        )
        if "segm" in iou_types
        else [None] * len(evaluated)
    )
    for i, segm_problem in zip(evaluated, segm_problems):
        ann = anns[i]
        where = f"{name}: annotations[{i}] (id {ann.get('id')}, image {ann['image_id']})"
        problem = box_problem(ann.get("bbox")) if "bbox" in iou_types or "bbox" in ann else None
        if problem is None and "segm" in iou_types:
            if not ann.get("segmentation"):
                raise DataError(
                    f"{where} has no segmentation; segm evaluation needs masks in the ground truth (evaluate bbox only)"
                )
            problem = segm_problem[1] if segm_problem else None
        if problem is not None:
            raise DataError(f"{where}: {problem}; fix or remove this annotation")


def _all_of_types(values: Iterable[Any], *types: type) -> bool:
    """Whether every value is an instance of ``types`` and none is a bool (one ``type`` call per value)."""
    return all(issubclass(t, types) and t is not bool for t in set(map(type, values)))


def _result_problem(r: Mapping[str, Any], iou_types: Sequence[str]) -> Optional[str]:
    """What is wrong with one result's score or box (the slow path that names the first bad result)."""
    if not (_all_of_types([r["score"]], *_NUMBER_TYPES) and math.isfinite(r["score"])):
        return f"score {r['score']!r} is not a finite number"
    if "bbox" in iou_types:
        return box_problem(r["bbox"])
    return None


def check_results(
    results: List[Dict[str, Any]], name: str, iou_types: Sequence[str], gt_data: Dict[str, Any], allow_empty: bool
) -> None:
    """Raise a DataError naming the first result that either engine would misread or crash on.

    Results files hold up to millions of detections: the checks run over columns, and only on a
    failure does a per-result pass find the first bad one.
    """
    if not results and not allow_empty:
        raise DataError(
            f"{name}: no detections to evaluate; check that these are the model's results (to score "
            "an empty set, where every metric with ground truth is 0, pass --allow-empty to "
            "tools/eval_coco.py, or allow_empty=True to evaluate_coco)"
        )
    keys = ("image_id", "category_id", "score") + tuple({"bbox": "bbox", "segm": "segmentation"}[t] for t in iou_types)
    try:
        columns = {k: [r[k] for r in results] for k in keys}
    except (KeyError, TypeError, IndexError):
        i = next(i for i, r in enumerate(results) if not (isinstance(r, Mapping) and all(k in r for k in keys)))
        raise DataError(f"{name}: results[{i}]: a {'/'.join(iou_types)} result needs {', '.join(keys)}") from None
    id_types = (int, np.integer)
    if not (_all_of_types(columns["image_id"], *id_types) and _all_of_types(columns["category_id"], *id_types)):
        i = next(i for i, r in enumerate(results) if not (_is_int(r["image_id"]) and _is_int(r["category_id"])))
        raise DataError(
            f"{name}: results[{i}]: image_id {results[i]['image_id']!r} and category_id "
            f"{results[i]['category_id']!r} must be integer ids of the ground truth's images and "
            "categories"
        )
    ok = _all_of_types(columns["score"], *_NUMBER_TYPES)
    ok = ok and bool(np.isfinite(np.asarray(columns["score"], dtype=np.float64)).all())
    if ok and "bbox" in iou_types:
        boxes = columns["bbox"]
        ok = (
            _all_of_types(boxes, list, tuple)
            and set(map(len, boxes)) <= {4}
            and _all_of_types(itertools.chain.from_iterable(boxes), *_NUMBER_TYPES)
            and bool(np.isfinite(np.asarray(boxes, dtype=np.float64)).all())
        )
    if not ok:
        i, problem = next((i, p) for i, r in enumerate(results) if (p := _result_problem(r, iou_types)) is not None)
        raise DataError(f"{name}: results[{i}] (image {results[i]['image_id']}): {problem}")
    sizes = {img.get("id"): (img.get("height"), img.get("width")) for img in gt_data["images"]}
    if "segm" in iou_types:
        segms = columns["segmentation"]
        compressed = [isinstance(m, dict) and isinstance(m.get("counts"), (str, bytes)) for m in segms]
        problems = segmentation_problems(segms, [sizes.get(i, (None, None)) for i in columns["image_id"]])
        for i, (is_compressed, problem) in enumerate(zip(compressed, problems)):
            if not is_compressed or problem is not None:
                what = (
                    problem[1]
                    if is_compressed
                    else ("segmentation must be a compressed RLE {size, counts: str}, as masks_to_rle writes it")
                )
                raise DataError(f"{name}: results[{i}] (image {results[i]['image_id']}): {what}")
    unknown_images = set(columns["image_id"]) - sizes.keys()
    if unknown_images:
        ids = sorted(unknown_images, key=str)
        first = columns["image_id"].index(ids[0])
        raise DataError(
            f"{name}: results refer to {len(ids)} image ids that the ground truth does not have "
            f"(first: {ids[:5]}, e.g. results[{first}]); evaluate against the "
            f"annotation file the predictions were made on"
        )
    cat_ids = {c.get("id") for c in gt_data["categories"]}
    unknown_cats = set(columns["category_id"]) - cat_ids
    if unknown_cats:
        ids = sorted(unknown_cats, key=str)
        first = next(i for i, c in enumerate(columns["category_id"]) if c in unknown_cats)
        raise DataError(
            f"{name}: results use category ids that the ground truth does not have: {ids} (first at "
            f"results[{first}]); its categories are {sorted(cat_ids, key=str)}; map the model's "
            f"labels to this annotation file's ids"
        )
