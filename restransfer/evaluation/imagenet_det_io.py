"""ImageNet-DET evaluation files: submissions (read and write), the ground truth of an image list (from
the devkit's XML files or from a json of ``datasets/prepare_imagenet_det.py``), and the inference engine's
predictions as a submission.

A submission has one line per detection: ``<image_index> <DET_id> <confidence> <xmin> <ymin> <xmax>
<ymax>``; ``image_index`` is the image list's index column (for ``val.txt`` its 1-based line number);
boxes are the devkit's inclusive pixel indices, converted at this boundary with :mod:`restransfer.boxes`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from restransfer.boxes import xywh_to_xyxy, xyxy_to_devkit
from restransfer.data.ilsvrc import IlsvrcFormatError, Synsets, where
from restransfer.data.imagenet_det import read_annotation, read_image_list
from restransfer.errors import DataError
from restransfer.evaluation.devkit_records import DetectionTable
from restransfer.fileio import atomic_open

__all__ = [
    "DetGroundTruth",
    "DetSubmission",
    "read_submission",
    "write_submission",
    "load_ground_truth",
    "ground_truth_from_coco",
    "predictions_to_submission",
]


@dataclass
class DetGroundTruth:
    """Ground truth of an image list.

    ``image_ids`` (I,) int64: the list's image indices in list order. Objects, grouped by image in
    list order and in XML order inside an image: ``obj_image_ids`` (G,) int64, ``labels`` (G,) int64
    DET ids 1..K, ``boxes`` (G, 4) float64 devkit inclusive. ``wnids``/``names``: class k is
    ``wnids[k - 1]``.
    """

    image_ids: np.ndarray
    obj_image_ids: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    wnids: Tuple[str, ...]
    names: Tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.wnids)


@dataclass
class DetSubmission(DetectionTable):
    """Detections in file order: ``image_ids`` (N,) int64, ``labels`` (N,) int64 DET ids,
    ``scores`` (N,) float64, ``boxes`` (N, 4) float64 devkit inclusive."""

    image_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


def _row_problem(fields: List[str], image_set: Optional[set], num_classes: int) -> Optional[str]:
    if len(fields) != 7:
        return f"expected 7 fields '<image_index> <DET_id> <confidence> <xmin> <ymin> <xmax> <ymax>', got {len(fields)}"
    values = []
    for name, tok in zip(("image_index", "DET_id", "confidence", "xmin", "ymin", "xmax", "ymax"), fields):
        try:
            v = float(tok)
        except ValueError:
            return f"{name} {tok!r} is not a number"
        if not math.isfinite(v):
            return f"{name} {tok!r} is not a finite number"
        values.append(v)
    if not values[0].is_integer():
        return f"image_index {fields[0]!r} is not an integer"
    if not values[1].is_integer():
        return f"DET_id {fields[1]!r} is not an integer"
    if image_set is not None and int(values[0]) not in image_set:
        return f"image_index {int(values[0])} is not in the image list"
    if not 1 <= values[1] <= num_classes:
        return f"DET_id {int(values[1])} is outside 1..{num_classes}"
    return None


def _first_bad_line(path: Union[str, os.PathLike], image_ids: Optional[np.ndarray], num_classes: int) -> str:
    image_set = None if image_ids is None else set(image_ids.tolist())
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            problem = _row_problem(fields, image_set, num_classes)
            if problem:
                return f"{where(path, lineno)}: {problem}"
    return f"{path}: unreadable submission file"


def read_submission(
    path: os.PathLike | str,
    image_ids: Optional[np.ndarray] = None,
    num_classes: int = 200,
) -> DetSubmission:
    """Read a submission file (blank lines are skipped).

    Args:
        path: lines ``<image_index> <DET_id> <confidence> <xmin> <ymin> <xmax> <ymax>``.
        image_ids: the image list's indices; when given, other image indices are errors.
        num_classes: DET ids must be in 1..num_classes.

    Raises:
        IlsvrcFormatError: ``file:line: what`` for the first line with a wrong field count, a non-number,
        a non-integer index or id, an image index outside the list or a DET id outside 1..K.
    """
    # numpy's C parser reads millions of lines in seconds; only when something is wrong is the file
    # scanned again line by line to name the first bad line.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty file is an empty submission
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        raise IlsvrcFormatError(_first_bad_line(path, image_ids, num_classes)) from None
    if rows.size == 0:
        rows = rows.reshape(0, 7)
    ok = rows.shape[1] == 7
    if ok and len(rows):
        ints = rows[:, :2]
        ok = bool(
            np.isfinite(rows).all()
            and (ints == np.round(ints)).all()
            and ((rows[:, 1] >= 1) & (rows[:, 1] <= num_classes)).all()
            and (image_ids is None or np.isin(rows[:, 0].astype(np.int64), image_ids).all())
        )
    if not ok:
        raise IlsvrcFormatError(_first_bad_line(path, image_ids, num_classes))
    return DetSubmission(
        image_ids=rows[:, 0].astype(np.int64),
        labels=rows[:, 1].astype(np.int64),
        scores=np.ascontiguousarray(rows[:, 2]),
        boxes=np.ascontiguousarray(rows[:, 3:7]),
    )


def write_submission(path: os.PathLike | str, sub: DetSubmission) -> None:
    """Write a submission file. Floats are written in their shortest exact form (``repr``), so reading
    the file back gives the same float64 numbers as the in-memory detections."""
    cols = [sub.image_ids.tolist(), sub.labels.tolist(), sub.scores.tolist()]
    cols += [sub.boxes[:, j].tolist() for j in range(4)]
    line = "%d %d %r %r %r %r %r\n"
    with atomic_open(path) as f:
        f.writelines(line % row for row in zip(*cols))


def load_ground_truth(
    annotations_dir: os.PathLike | str,
    image_list: os.PathLike | str,
    synsets: Synsets,
) -> DetGroundTruth:
    """Ground truth from ``<annotations_dir>/<image>.xml`` for every image of ``image_list``
    (``val.txt`` format). Images without objects stay in the list. Missing files, malformed XML and
    unknown WNIDs raise IlsvrcFormatError naming the file (and line)."""
    names, indices = read_image_list(image_list)
    obj_ids: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    boxes: List[np.ndarray] = []
    for name, index in zip(names, indices.tolist()):
        p = Path(annotations_dir) / f"{name}.xml"
        if not p.is_file():
            raise IlsvrcFormatError(
                f"{p}: annotation missing for image {name!r} (listed in {image_list}); check --annotations"
            )
        ann = read_annotation(p, synsets)
        obj_ids.append(np.full(len(ann.labels), index, dtype=np.int64))
        labels.append(ann.labels)
        boxes.append(ann.boxes)
    return DetGroundTruth(
        image_ids=indices,
        obj_image_ids=np.concatenate(obj_ids) if obj_ids else np.zeros(0, np.int64),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        wnids=synsets.wnids,
        names=synsets.names,
    )


def _coco_classes(coco: Mapping) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if ids != list(range(1, len(ids) + 1)):
        raise DataError(
            "categories: ImageNet-DET jsons have category ids 1..K equal to DET ids; "
            "convert with datasets/prepare_imagenet_det.py"
        )
    return tuple(c.get("wnid", c["name"]) for c in cats), tuple(c["name"] for c in cats)


def ground_truth_from_coco(coco: Mapping) -> DetGroundTruth:
    """Ground truth from a json written by ``datasets/prepare_imagenet_det.py`` (a dict).

    Every image needs ``ilsvrc_index``; ``bbox`` converts back to devkit boxes exactly for integer
    boxes; object order is annotation order (the XML order of the conversion).
    """
    wnids, names = _coco_classes(coco)
    image_index: Dict[int, int] = {}
    for img in coco["images"]:
        if "ilsvrc_index" not in img:
            raise DataError(
                f"image id {img['id']} ({img.get('file_name')}) has no ilsvrc_index; "
                "only val images can be evaluated with the devkit protocol"
            )
        image_index[img["id"]] = int(img["ilsvrc_index"])
    anns = coco["annotations"]
    xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    obj = np.asarray([image_index[a["image_id"]] for a in anns], dtype=np.int64)
    labels = np.asarray([a["category_id"] for a in anns], dtype=np.int64)
    # Stable grouping by image in list order keeps annotation order inside each image.
    position = {idx: p for p, idx in enumerate(image_index.values())}
    o = np.argsort(np.asarray([position[i] for i in obj.tolist()], dtype=np.int64), kind="stable")
    return DetGroundTruth(
        image_ids=np.asarray(list(image_index.values()), dtype=np.int64),
        obj_image_ids=obj[o],
        labels=labels[o],
        boxes=xyxy_to_devkit(xywh_to_xyxy(xywh))[o],
        wnids=wnids,
        names=names,
    )


def predictions_to_submission(
    predictions: Sequence[Mapping],
    coco: Mapping,
    label_to_cat_id: Optional[Mapping[int, int]] = None,
) -> DetSubmission:
    """Per-image prediction dicts (``image_id``, ``boxes`` (N, 4) internal xyxy, ``scores``, ``labels``
    1..K) -> devkit detections, using the converted json (``coco``, a dict) for image indices.

    ``label_to_cat_id`` maps toolkit labels to category ids (= DET ids); by default label ``i + 1`` is
    the i-th category by id, the dataset's convention. Detections keep prediction order.
    """
    index_of = {img["id"]: img.get("ilsvrc_index") for img in coco["images"]}
    if label_to_cat_id is None:
        cat_ids = sorted(c["id"] for c in coco["categories"])
        label_to_cat_id = {i + 1: c for i, c in enumerate(cat_ids)}
    lut = np.zeros(max(label_to_cat_id) + 1, dtype=np.int64)
    for lab, cid in label_to_cat_id.items():
        lut[lab] = cid
    ids, labels, scores, boxes = [], [], [], []
    for i, p in enumerate(predictions):
        image_id = int(p["image_id"])
        if image_id not in index_of:
            raise DataError(f"prediction {i}: image_id {image_id} is not an image of the dataset json")
        if index_of[image_id] is None:
            raise DataError(f"prediction {i}: image_id {image_id} has no ilsvrc_index in the json (not a val image)")
        lab = np.asarray(p["labels"], dtype=np.int64).reshape(-1)
        if len(lab) and (lab.min() < 1 or lab.max() >= len(lut)):
            raise DataError(
                f"prediction {i}: labels must be in 1..{len(lut) - 1}, got {int(lab.min())}..{int(lab.max())}"
            )
        ids.append(np.full(len(lab), index_of[image_id], dtype=np.int64))
        labels.append(lut[lab])
        scores.append(np.asarray(p["scores"], dtype=np.float64).reshape(-1))
        boxes.append(xyxy_to_devkit(np.asarray(p["boxes"], dtype=np.float64).reshape(-1, 4)))
    if not ids:
        return DetSubmission.empty()
    return DetSubmission(np.concatenate(ids), np.concatenate(labels), np.concatenate(scores), np.concatenate(boxes))
