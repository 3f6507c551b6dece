"""PASCAL VOC evaluation files: the devkit's results files (read and write), the ground truth of an image set
(from the XML annotations, or from a dataset's COCO-format dict) and a model's predictions as detections.

Results files are the devkit's ``comp4_det_<image set>_<class>.txt`` (``comp4``: trained on any data), one per
class, one line per detection: ``<image id> <confidence> <xmin> <ymin> <xmax> <ymax>`` in VOC's 1-based
inclusive pixels, as the evaluation server takes them. Boxes convert at this boundary with
:func:`restransfer.boxes.xyxy_to_voc` (``x1 + 1, y1 + 1, x2, y2``) and numbers are written with Python's
shortest round-trip form, so a written file reads back to the very same numbers.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..boxes import xywh_to_xyxy, xyxy_to_voc
from ..data.ilsvrc import where
from ..data.json_io import read_text
from ..data.voc import VOC_CLASSES, VocFormatError, read_image_set, read_voc_annotation
from ..errors import DataError
from ..fileio import atomic_open
from .devkit_records import DetectionTable

__all__ = [
    "VocGroundTruth",
    "VocDetections",
    "results_file_name",
    "write_results",
    "read_results",
    "load_ground_truth",
    "ground_truth_from_coco",
    "predictions_to_detections",
]

PathLike = Union[str, os.PathLike]


@dataclass
class VocGroundTruth:
    """Ground truth of an image set. ``image_names`` (I,): the devkit's image ids in image-set order;
    objects, grouped by image and in XML order inside one: ``obj_image`` (G,) int64 positions in
    ``image_names``, ``labels`` (G,) int64 in 1..K, ``boxes`` (G, 4) float64 VOC 1-based inclusive,
    ``difficult`` (G,) bool. ``class_names[k - 1]`` names label k. ``image_ids`` (I,): the dataset's
    integer image ids of the same images, when the ground truth comes from a dataset."""

    image_names: Tuple[str, ...]
    obj_image: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    difficult: np.ndarray
    class_names: Tuple[str, ...]
    image_ids: Optional[np.ndarray] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return len(self.image_names)

    def num_positives(self) -> np.ndarray:
        """(K,) non-difficult objects per class (the devkit's ``npos``)."""
        return np.bincount(self.labels[~self.difficult], minlength=self.num_classes + 1)[1:].astype(np.int64)


@dataclass
class VocDetections(DetectionTable):
    """Detections in file order: ``image`` (N,) int64 positions in the ground truth's ``image_names``,
    ``labels`` (N,) int64 in 1..K, ``scores`` (N,) float64, ``boxes`` (N, 4) float64 VOC 1-based inclusive."""

    image: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    def check(self, gt: VocGroundTruth) -> None:
        """ValueError naming the first detection (0-based) of an unknown image or class, or with a score or
        box that is not a finite number."""
        n = len(self)
        for what, bad in (
            ("an image outside the image set", (self.image < 0) | (self.image >= gt.num_images)),
            (f"a label outside 1..{gt.num_classes}", (self.labels < 1) | (self.labels > gt.num_classes)),
            (
                "a score or box that is not a finite number",
                ~(np.isfinite(self.scores) & np.isfinite(self.boxes).all(axis=1)),
            ),
        ):
            if n and bad.any():
                raise DataError(f"detection {int(np.flatnonzero(bad)[0])} (0-based) has {what}")


# ------------------------------------------------------------------------------------ ground truth


def load_ground_truth(
    annotations_dir: PathLike, image_set: PathLike, classes: Sequence[str] = VOC_CLASSES
) -> VocGroundTruth:
    """The ground truth of the images listed in ``image_set`` (``ImageSets/Main/test.txt``) from their XML
    files in ``annotations_dir``, read as :func:`restransfer.data.voc.read_voc_annotation` does."""
    names = read_image_set(image_set)
    annotations_dir = Path(annotations_dir)
    obj_image, labels, boxes, difficult = [], [], [], []
    for i, name in enumerate(names):
        p = annotations_dir / f"{name}.xml"
        if not p.is_file():
            raise VocFormatError(f"{p}: annotation file missing for image {name!r} of {image_set}; check --annotations")
        ann = read_voc_annotation(p, classes)
        obj_image.append(np.full(len(ann.labels), i, dtype=np.int64))
        labels.append(ann.labels)
        boxes.append(ann.boxes)
        difficult.append(ann.difficult)
    return VocGroundTruth(
        tuple(names),
        np.concatenate(obj_image) if names else np.zeros(0, np.int64),
        np.concatenate(labels) if names else np.zeros(0, np.int64),
        np.concatenate(boxes) if names else np.zeros((0, 4)),
        np.concatenate(difficult) if names else np.zeros(0, bool),
        tuple(classes),
    )


def ground_truth_from_coco(data: Mapping[str, Any], image_ids: Optional[Sequence[int]] = None) -> VocGroundTruth:
    """The ground truth of a COCO-format dict (a :class:`~restransfer.data.voc_dataset.VocDataset`'s, or a json of
    ``datasets/prepare_voc.py``) over ``image_ids`` (default: all images, by id), in that order.

    Classes are the categories by id (label k = the k-th smallest id, as :class:`~restransfer.data.coco.CocoDataset`
    numbers them); boxes come back from ``bbox`` with ``xyxy_to_voc(xywh_to_xyxy(bbox))``; an annotation is
    difficult when its ``difficult`` is 1, or, without that key, when ``iscrowd`` is 1 (an ignored region);
    images are named by their ``voc_id`` (else their id).
    """
    cats = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {int(c["id"]): k + 1 for k, c in enumerate(cats)}
    images = {int(im["id"]): im for im in data["images"]}
    ids = sorted(images) if image_ids is None else [int(i) for i in image_ids]
    position = {i: p for p, i in enumerate(ids)}
    anns = [a for a in data["annotations"] if int(a["image_id"]) in position and int(a["category_id"]) in label_of]
    # grouped by image in the set's order, each image's objects in file order (the devkit's XML order)
    anns.sort(key=lambda a: position[int(a["image_id"])])
    boxes = xyxy_to_voc(xywh_to_xyxy(np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)))
    return VocGroundTruth(
        image_names=tuple(str(images[i].get("voc_id", i)) for i in ids),
        obj_image=np.asarray([position[int(a["image_id"])] for a in anns], dtype=np.int64),
        labels=np.asarray([label_of[int(a["category_id"])] for a in anns], dtype=np.int64),
        boxes=boxes,
        difficult=np.asarray([bool(a.get("difficult", a.get("iscrowd", 0))) for a in anns], dtype=bool),
        class_names=tuple(str(c["name"]) for c in cats),
        image_ids=np.asarray(ids, dtype=np.int64),
    )


def predictions_to_detections(predictions: Sequence[Mapping[str, Any]], gt: VocGroundTruth) -> VocDetections:
    """A model's per-image predictions (``image_id``, ``boxes`` (n, 4) internal xyxy, ``scores``, ``labels``
    1..K) as detections on ``gt``'s images (``gt.image_ids``), in the order the results files list them:
    images in image-set order, each image's detections in the model's order. Images without a prediction
    have no detections; a prediction of an image outside ``gt`` is a ValueError."""
    if gt.image_ids is None:
        raise ValueError("the ground truth has no image ids (read it with ground_truth_from_coco)")
    position = {int(i): p for p, i in enumerate(gt.image_ids.tolist())}
    by_pos: Dict[int, Mapping[str, Any]] = {}
    for pred in predictions:
        image_id = int(pred["image_id"])
        if image_id not in position:
            raise DataError(f"a prediction for image id {image_id}, which is not in the evaluated set")
        by_pos[position[image_id]] = pred
    parts = [(p, by_pos[p]) for p in sorted(by_pos)]
    if not parts:
        return VocDetections.empty()
    counts = [len(pred["scores"]) for _, pred in parts]
    return VocDetections(
        image=np.repeat(np.asarray([p for p, _ in parts], dtype=np.int64), counts),
        labels=np.concatenate([np.asarray(pred["labels"], dtype=np.int64).reshape(-1) for _, pred in parts]),
        scores=np.concatenate([np.asarray(pred["scores"], dtype=np.float64).reshape(-1) for _, pred in parts]),
        boxes=xyxy_to_voc(
            np.concatenate([np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4) for _, pred in parts])
        ),
    )


# ---------------------------------------------------------------------------------------- results files


def results_file_name(class_name: str, image_set: str = "test", comp: str = "comp4") -> str:
    """``comp4_det_test_<class>.txt``: the devkit's results file of a class."""
    return f"{comp}_det_{image_set}_{class_name}.txt"


def write_results(
    out_dir: PathLike, gt: VocGroundTruth, dets: VocDetections, *, image_set: str = "test", comp: str = "comp4"
) -> List[Path]:
    """Write one results file per class (an empty file for a class without detections) into ``out_dir``;
    lines in detection order. Returns the paths."""
    dets.check(gt)
    out_dir = Path(out_dir)
    names = np.asarray(gt.image_names, dtype=object)
    paths = []
    for k, cls in enumerate(gt.class_names, 1):
        sel = np.flatnonzero(dets.labels == k)
        rows = zip(names[dets.image[sel]].tolist(), dets.scores[sel].tolist(), dets.boxes[sel].tolist())
        path = out_dir / results_file_name(cls, image_set, comp)
        with atomic_open(path) as f:
            f.writelines(f"{n} {s!r} {b[0]!r} {b[1]!r} {b[2]!r} {b[3]!r}\n" for n, s, b in rows)
        paths.append(path)
    return paths


_RESULTS = re.compile(r"^(comp\d+_det_.+)_(.+)\.txt$")


def _results_files(results_dir: Path, classes: Sequence[str]) -> Dict[str, Path]:
    if not results_dir.is_dir():
        raise VocFormatError(f"{results_dir}: results folder not found")
    found: Dict[str, Dict[str, Path]] = {}  # prefix -> class -> file
    for p in sorted(results_dir.iterdir()):
        # the longest class name that ends the file name ('comp4_det_test_pottedplant.txt')
        cls = max((c for c in classes if p.name.endswith(f"_{c}.txt")), key=len, default=None)
        if cls is None or not p.is_file():
            continue
        m = re.match(r"^(comp\d+_det_.+)_" + re.escape(cls) + r"\.txt$", p.name)
        if m:
            found.setdefault(m.group(1), {})[cls] = p
    if not found:
        raise VocFormatError(
            f"{results_dir}: no results files; expected {results_file_name(classes[0])}, ... (one "
            "per class, 'comp<N>_det_<image set>_<class>.txt')"
        )
    if len(found) > 1:
        raise VocFormatError(
            f"{results_dir}: results files of several runs ({', '.join(sorted(found))}); keep one "
            "set of comp<N>_det_<image set>_<class>.txt files per folder"
        )
    return next(iter(found.values()))


_USAGE = "'<image id> <confidence> <xmin> <ymin> <xmax> <ymax>'"


def _parse_numbers(tokens: List[str]) -> Optional[np.ndarray]:
    """float64 of every token, parsed in C (twice as fast as numpy's str-to-float cast), or None when one is not
    a number."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns, then stops, at the first token that is not a number
        try:
            out = np.fromstring(" ".join(tokens), dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    return out if len(out) == len(tokens) else None


def _read_file(path: Path, position: Mapping[str, int]):
    """``(image positions, scores, boxes)`` of one results file, lines in order."""
    text = read_text(path)  # bytes that are not UTF-8: a DataError naming the file and line
    lines = text.split("\n")
    rows = [i for i, line in enumerate(lines) if line.strip()]
    tokens = text.split()
    # every line has 6 fields exactly when the tokens come in sixes that start where the lines start
    if len(tokens) != 6 * len(rows) or tokens[0::6] != [lines[i].split(None, 1)[0] for i in rows]:
        for i in rows:
            n = len(lines[i].split())
            if n != 6:
                raise VocFormatError(f"{where(path, i + 1)}: expected {_USAGE}, got {n} fields")
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))
    image = np.fromiter((position.get(n, -1) for n in tokens[0::6]), dtype=np.int64, count=len(rows))
    if (image < 0).any():
        i = int(np.flatnonzero(image < 0)[0])
        raise VocFormatError(
            f"{where(path, rows[i] + 1)}: unrecognized image {tokens[6 * i]!r}: it is not in the "
            "image set being evaluated"
        )
    del tokens[0::6]
    numbers = _parse_numbers(tokens)
    if numbers is None:  # find the token, or read what numpy's parser refused but Python's accepts
        values = []
        for k, tok in enumerate(tokens):
            try:
                values.append(float(tok))
            except ValueError:
                raise VocFormatError(f"{where(path, rows[k // 5] + 1)}: {tok!r} is not a number") from None
        numbers = np.asarray(values)
    numbers = numbers.reshape(-1, 5)
    finite = np.isfinite(numbers).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise VocFormatError(f"{where(path, rows[i] + 1)}: confidence and box must be finite numbers")
    return image, numbers[:, 0], numbers[:, 1:]


def read_results(results_dir: PathLike, gt: VocGroundTruth) -> VocDetections:
    """The detections of the results files in ``results_dir`` (one ``comp<N>_det_<image set>_<class>.txt`` per
    class; a class without a file has no detections), classes in label order, each file's lines in order.

    Raises:
        VocFormatError: no results files, files of several runs, a line without 6 fields, an image outside
            the image set, a value that is not a finite number (file and line).
    """
    files = _results_files(Path(results_dir), gt.class_names)
    position = {n: i for i, n in enumerate(gt.image_names)}
    parts = []
    for k, cls in enumerate(gt.class_names, 1):
        if cls in files:
            image, scores, boxes = _read_file(files[cls], position)
            parts.append((image, np.full(len(image), k, dtype=np.int64), scores, boxes))
    if not parts:
        return VocDetections.empty()
    return VocDetections(*(np.concatenate([p[j] for p in parts]) for j in range(4)))
