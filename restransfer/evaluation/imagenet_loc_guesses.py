"""Top-5 ImageNet localization guesses from detector outputs (and an image classifier's scores), as in the
ResNet paper.

Every mode turns the per-image prediction dicts of the inference loop (``boxes`` xyxy in original pixels,
``scores``, ``labels`` 1..K) into up to 5 guesses ``(WNID, box, score)`` per image (:class:`LocGuesses`):

* ``detector``: the 5 classes with the highest detection scores, each with its highest-scoring box;
* ``classifier``: the top-5 classes of an image classifier (the paper's setting), each with the
  highest-scoring detection of that class, else the highest-scoring detection of any class, else the whole
  image;
* ``gt_class``: the ground-truth class(es) with their best box (same fallbacks), for the paper's
  "localization error on the ground-truth class" column.

Detector labels become WNIDs through the dataset's categories (``wnid`` field of the COCO json written by
``datasets/prepare_imagenet_loc.py``); classifier columns through the classifier's own class list, by default
sorted WNIDs (the index order of torchvision's and timm's ImageNet models). The classifier's scores come from
a saved file (:func:`load_classifier_scores`) or from running it
(:func:`restransfer.inference.classifier.classifier_scores_from_model`). :class:`LocGuesses` and the
submission writers (devkit text, Kaggle CSV) live with their readers in
:mod:`restransfer.evaluation.imagenet_loc_io`; the protocol's evaluator is
:class:`restransfer.evaluation.evaluators.ImageNetLocEvaluator`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from .imagenet_loc_io import MAX_GUESSES, LocGuesses

__all__ = [
    "MODES",
    "label_wnids",
    "detector_guesses",
    "classifier_guesses",
    "gt_class_guesses",
    "top_columns",
    "load_classifier_scores",
]

MODES = ("detector", "classifier", "gt_class")


class _MissingWnid(DataError, KeyError):
    """A category without its WNID: an input error, and the KeyError it was before (for ``except KeyError``)."""

    __str__ = BaseException.__str__  # the message as written, not quoted as a KeyError's key is


def label_wnids(dataset: Any) -> Dict[int, str]:
    """Contiguous detector label (1..K) -> WNID, from a COCO dataset whose categories carry ``wnid``
    (``dataset.label_to_cat_id`` and ``dataset.coco.cats``); a category without one is a DataError (also a
    KeyError) naming it."""
    out = {}
    for label, cat_id in dataset.label_to_cat_id.items():
        cat = dataset.coco.cats[cat_id]
        if "wnid" not in cat:
            raise _MissingWnid(
                f"category {cat_id} ({cat.get('name')}) has no 'wnid' field; convert the "
                "annotations with datasets/prepare_imagenet_loc.py"
            )
        out[int(label)] = cat["wnid"]
    return out


def _lookup(label_to_wnid: Mapping[int, str]) -> np.ndarray:
    lut = np.full(max(label_to_wnid, default=0) + 1, "", dtype="<U32")
    for k, w in label_to_wnid.items():
        lut[k] = w
    return lut


class _Ranked:
    """One image's detections ranked by descending score (stable: equal scores keep their order).

    Attributes:
        boxes, scores: (M, 4) and (M,) float64 in ranked order.
        labels: (M,) int64 in ranked order.
        classes: (P,) the labels present, ascending; ``best[p]`` is the rank of class ``classes[p]``'s best
            detection.
    """

    def __init__(self, pred: dict, image_index: int, lut: np.ndarray) -> None:
        scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(pred["labels"], dtype=np.int64).reshape(-1)
        unknown = (labels < 1) | (labels >= len(lut))
        unknown[~unknown] = lut[labels[~unknown]] == ""
        if unknown.any():
            raise DataError(
                f"prediction {image_index} (image_id {pred.get('image_id')}): label "
                f"{int(labels[unknown][0])} has no WNID; labels must be the dataset's 1..{len(lut) - 1}"
            )
        order = np.argsort(-scores, kind="stable")
        self.scores, self.labels = scores[order], labels[order]
        self.boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)[order]
        self.classes, self.best = np.unique(self.labels, return_index=True)

    def best_of(self, wanted: np.ndarray) -> np.ndarray:
        """Rank of the best detection of each ``wanted`` label, -1 where the image has none."""
        if not len(self.classes):
            return np.full(len(wanted), -1)
        pos = np.searchsorted(self.classes, wanted).clip(0, len(self.classes) - 1)
        return np.where(self.classes[pos] == wanted, self.best[pos], -1)


def detector_guesses(
    predictions: Sequence[dict], label_to_wnid: Mapping[int, str], top_k: int = MAX_GUESSES
) -> LocGuesses:
    """Mode ``detector``: per image the ``top_k`` classes with the highest detection score, each with that
    detection's box and score.

    Args:
        predictions: per-image dicts with ``image_id``, ``boxes`` (M, 4) xyxy, ``scores`` (M,), ``labels`` (M,).
        label_to_wnid: detector label -> WNID (:func:`label_wnids`).
    """
    out = LocGuesses.empty([p["image_id"] for p in predictions], top_k)
    lut = _lookup(label_to_wnid)
    for i, pred in enumerate(predictions):
        r = _Ranked(pred, i, lut)
        pick = np.sort(r.best)[:top_k]
        g = len(pick)
        out.wnids[i, :g] = lut[r.labels[pick]]
        out.boxes[i, :g] = r.boxes[pick]
        out.scores[i, :g] = r.scores[pick]
    return out


def _fill_classes(
    out: LocGuesses,
    i: int,
    r: _Ranked,
    wanted: np.ndarray,
    lut: np.ndarray,
    scores: Optional[np.ndarray],
    size: Tuple[float, float],
) -> None:
    """Fill row ``i`` with the ``wanted`` labels, each with its best detection, else the best detection of any
    class, else the whole image ``(0, 0, width, height)``. Scores are ``scores``, or when that is None the
    class's best detection score (NaN for a fallback box)."""
    g = len(wanted)
    rank = r.best_of(wanted)
    found = rank >= 0
    fallback = r.boxes[0] if len(r.boxes) else np.array([0.0, 0.0, float(size[0]), float(size[1])])
    out.wnids[i, :g] = lut[wanted]
    out.boxes[i, :g] = np.where(found[:, None], r.boxes[rank.clip(0)] if len(r.boxes) else 0.0, fallback)
    if scores is None:
        scores = np.where(found, r.scores[rank.clip(0)] if len(r.scores) else np.nan, np.nan)
    out.scores[i, :g] = scores


def _labels_of(wnids: Sequence[str], label_of: Mapping[str, int], what: str) -> np.ndarray:
    missing = [w for w in wnids if w not in label_of]
    if missing:
        raise DataError(f"{what} {missing[:3]} are not among the detector's categories")
    return np.array([label_of[w] for w in wnids], dtype=np.int64)


def _image_sizes(
    predictions: Sequence[dict], image_sizes: Mapping[int, Tuple[float, float]]
) -> List[Tuple[float, float]]:
    try:
        return [image_sizes[int(p["image_id"])] for p in predictions]
    except KeyError as e:
        raise KeyError(f"image_id {e.args[0]}: no image size to fall back to a whole-image box") from None


def top_columns(scores: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """(N, C) scores -> (N, min(k, C)) column indices of the k highest, best first, equal scores by lower column:
    the same as a stable descending argsort cut to k, in O(N * C) (a full sort of 50,000 x 1000 takes seconds)."""
    n, c = scores.shape
    k = min(k, c)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        s = scores[start : start + chunk]
        kth = np.partition(s, c - k, axis=1)[:, c - k : c - k + 1]  # the k-th highest score of each row
        above = s > kth
        ties = s == kth
        # of the columns tied with the k-th score, the lowest ones fill the remaining places
        room = k - above.sum(1, keepdims=True)
        chosen = above | (ties & (np.cumsum(ties, axis=1, dtype=np.int32) <= room))
        cols = np.nonzero(chosen)[1].reshape(len(s), k)  # row-major: ascending columns per row
        vals = np.take_along_axis(s, cols, 1)
        order = np.lexsort((cols, -vals), axis=1)
        out[start : start + chunk] = np.take_along_axis(cols, order, 1)
    return out


def classifier_guesses(
    predictions: Sequence[dict],
    class_scores: np.ndarray,
    label_to_wnid: Mapping[int, str],
    image_sizes: Mapping[int, Tuple[float, float]],
    *,
    classifier_wnids: Optional[Sequence[str]] = None,
    top_k: int = MAX_GUESSES,
) -> LocGuesses:
    """Mode ``classifier`` (the ResNet paper's): the classifier's top-k classes, each with its best detection.

    Args:
        predictions: per-image detector outputs (N images).
        class_scores: (N, C) classifier logits or probabilities, row ``i`` for ``predictions[i]``.
        label_to_wnid: detector label -> WNID.
        image_sizes: image_id -> (width, height), for the whole-image box when an image has no detection.
        classifier_wnids: the WNID of each of the C columns; default sorted WNIDs of ``label_to_wnid`` (the
            class index order of torchvision's and timm's ImageNet classifiers).
        top_k: guesses per image. Equal scores rank the lower column first.
    """
    class_scores = np.asarray(class_scores)  # float32 stays float32: 50,000 x 1000 scores are 200 MB already
    wnid_of_column = np.asarray(sorted(label_to_wnid.values()) if classifier_wnids is None else list(classifier_wnids))
    if class_scores.ndim != 2 or class_scores.shape != (len(predictions), len(wnid_of_column)):
        raise DataError(
            f"class_scores must be (num_images={len(predictions)}, num_classes={len(wnid_of_column)}), "
            f"got {class_scores.shape}"
        )
    label_of_column = _labels_of(list(wnid_of_column), {w: k for k, w in label_to_wnid.items()}, "classifier classes")
    top = top_columns(class_scores, top_k)
    out = LocGuesses.empty([p["image_id"] for p in predictions], top_k)
    lut = _lookup(label_to_wnid)
    for i, (pred, size) in enumerate(zip(predictions, _image_sizes(predictions, image_sizes))):
        _fill_classes(out, i, _Ranked(pred, i, lut), label_of_column[top[i]], lut, class_scores[i, top[i]], size)
    return out


def gt_class_guesses(
    predictions: Sequence[dict],
    gt_wnids: Mapping[int, Sequence[str]],
    label_to_wnid: Mapping[int, str],
    image_sizes: Mapping[int, Tuple[float, float]],
    top_k: int = MAX_GUESSES,
) -> LocGuesses:
    """Mode ``gt_class``: each ground-truth class of the image (image_id -> WNIDs in ``gt_wnids``) with its best
    detection (fallbacks as in :func:`classifier_guesses`); the score is that detection's score, NaN for a
    fallback box."""
    out = LocGuesses.empty([p["image_id"] for p in predictions], top_k)
    lut = _lookup(label_to_wnid)
    label_of = {w: k for k, w in label_to_wnid.items()}
    for i, (pred, size) in enumerate(zip(predictions, _image_sizes(predictions, image_sizes))):
        wanted = _labels_of(list(gt_wnids.get(int(pred["image_id"]), ()))[:top_k], label_of, "ground-truth classes")
        _fill_classes(out, i, _Ranked(pred, i, lut), wanted, lut, None, size)
    return out


def load_classifier_scores(path: os.PathLike | str, num_images: Optional[int] = None) -> np.ndarray:
    """Read saved classifier outputs: ``.npy`` (loaded without pickle) or a text matrix (``np.loadtxt``), shape
    (N, C), one row per image in dataset order, columns in the classifier's class order."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            scores = np.load(path, allow_pickle=False)
        else:
            scores = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, EOFError) as e:  # numpy's words for a file that is not a number matrix
        raise DataError(
            f"{path}: not a matrix of classifier scores ({e}); give a .npy array or a text file of "
            "numbers, one row per image"
        ) from None
    if not isinstance(scores, np.ndarray):  # an .npz archive under a .npy name
        raise DataError(
            f"{path}: holds several arrays (an .npz archive); save the (images, classes) scores with numpy.save"
        )
    if scores.ndim != 2:
        raise DataError(f"{path}: classifier scores must be a 2-D (images, classes) array, got shape {scores.shape}")
    if num_images is not None and len(scores) != num_images:
        raise DataError(f"{path}: {len(scores)} rows of classifier scores for {num_images} images")
    return scores.astype(np.float64, copy=False)
