"""Generated data sets and timings of the ImageNet evaluations, at the size of the ILSVRC validation sets.

* ImageNet-DET: :func:`synthetic_det_eval_set` builds a ground truth and a submission
  (:class:`~restransfer.evaluation.imagenet_det_io.DetGroundTruth`,
  :class:`~restransfer.evaluation.imagenet_det_io.DetSubmission`); :func:`run_det_eval_benchmark` times
  writing and reading the submission file, the devkit evaluation from arrays and optionally the COCO
  protocol beside it.
* CLS-LOC: :func:`synthetic_loc_eval_set` builds a class list, per-image ground truth and 5 guesses per image;
  :func:`run_loc_eval_benchmark` writes the Kaggle solution and both submission formats (optionally the
  devkit XML folder) into a temporary folder and times reading each, the top-5 evaluation and the three
  localization modes of :mod:`restransfer.evaluation.imagenet_loc_guesses` over detector outputs.

Timings are wall seconds of one run.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from ..boxes import devkit_to_xyxy
from ..data.ilsvrc import Synsets
from ..data.imagenet_loc import LocImage, read_devkit_annotations, read_kaggle_solution
from ..errors import ConfigError
from ..evaluation.imagenet_det import (
    DetGroundTruth,
    DetSubmission,
    coco_box_metrics,
    evaluate_detections,
    read_submission,
    write_submission,
)
from ..evaluation.imagenet_loc import evaluate_localization, pack_ground_truth
from ..evaluation.imagenet_loc_guesses import classifier_guesses, detector_guesses, gt_class_guesses
from ..evaluation.imagenet_loc_io import (
    MAX_GUESSES,
    LocGuesses,
    read_devkit_submission,
    read_kaggle_submission,
    write_devkit_submission,
    write_kaggle_submission,
)

__all__ = [
    "synthetic_det_eval_set",
    "DetEvalTimings",
    "run_det_eval_benchmark",
    "synthetic_loc_eval_set",
    "LocEvalTimings",
    "run_loc_eval_benchmark",
    "LOC_EVALUATE_STEP",
]

Seed = Union[int, np.random.Generator]
T = TypeVar("T")

# the step of run_loc_eval_benchmark whose result LocEvalTimings.metrics holds
LOC_EVALUATE_STEP = "evaluate (top-1 and top-5)"


def _timed(seconds: Dict[str, float], name: str, fn: Callable[[], T]) -> T:
    """``fn()``, its wall time recorded as ``seconds[name]``."""
    t = time.perf_counter()
    out = fn()
    seconds[name] = time.perf_counter() - t
    return out


# ------------------------------------------------------------------------------------ ImageNet-DET


def synthetic_det_eval_set(
    num_images: int = 20121, num_classes: int = 200, num_detections: int = 2_000_000, *, seed: Seed = 0
) -> Tuple[DetGroundTruth, DetSubmission]:
    """A ground truth and a submission with the statistics of ILSVRC DET val (500 x 500 px canvas).

    Ground truth: image ids ``1..num_images``, 1 + Poisson(1.8) objects per image (about 2.8, as in val);
    2% of images are crowded with 5-29 more objects, and half of every image's objects share one class.
    Box sides are log-uniform in 8..450 px; boxes are devkit inclusive integer indices inside the canvas.
    WNIDs are ``n00000000``, ``n00000001``, ...

    Submission: ``num_detections`` rows in random order. A third are copies of ground-truth objects
    jittered by 12% of their size (objects drawn with replacement, so some get several; 10% with a random
    class), scored Beta(4, 2); the rest are random boxes of random classes in random images, scored
    Beta(2, 4). Scores are rounded to 3 decimals so that ties occur. Boxes are float devkit coordinates.

    ``seed``: an int, or a ``numpy.random.Generator`` that is used (and advanced) as is.
    """
    rng = np.random.default_rng(seed)
    image_ids = np.arange(1, num_images + 1, dtype=np.int64)
    per_image = rng.poisson(1.8, num_images) + 1
    crowded = rng.random(num_images) < 0.02
    per_image[crowded] += rng.integers(5, 30, crowded.sum())
    obj_image = np.repeat(image_ids, per_image)
    g = len(obj_image)
    image_class = rng.integers(1, num_classes + 1, num_images)  # crowded images repeat one class
    labels = np.where(rng.random(g) < 0.5, image_class[obj_image - 1], rng.integers(1, num_classes + 1, g))
    wh = np.exp(rng.uniform(np.log(8), np.log(450), (g, 2))).round()
    xy = rng.uniform(0, 500 - wh)
    gt_boxes = np.column_stack([xy, xy + wh - 1]).round()
    wnids = tuple(f"n{i:08d}" for i in range(num_classes))
    gt = DetGroundTruth(image_ids, obj_image, labels.astype(np.int64), gt_boxes, wnids)

    n_near = num_detections // 3
    src = rng.integers(0, g, n_near)
    scale = np.repeat((gt_boxes[src, 2:] - gt_boxes[src, :2] + 1), 2, axis=0).reshape(-1, 4)
    near = gt_boxes[src] + rng.normal(0, 0.12, (n_near, 4)) * scale
    near_labels = np.where(rng.random(n_near) < 0.9, labels[src], rng.integers(1, num_classes + 1, n_near))
    n_rand = num_detections - n_near
    rwh = rng.uniform(4, 400, (n_rand, 2))
    rxy = rng.uniform(0, 500 - rwh)
    image_col = np.concatenate([obj_image[src], rng.integers(1, num_images + 1, n_rand)])
    label_col = np.concatenate([near_labels, rng.integers(1, num_classes + 1, n_rand)]).astype(np.int64)
    score_col = np.concatenate([rng.beta(4, 2, n_near), rng.beta(2, 4, n_rand)]).round(3)
    box_col = np.concatenate([near, np.column_stack([rxy, rxy + rwh])])
    order = rng.permutation(num_detections)
    return gt, DetSubmission(image_col[order], label_col[order], score_col[order], box_col[order])


@dataclass
class DetEvalTimings:
    """What :func:`run_det_eval_benchmark` measured.

    Attributes:
        num_images, num_classes, num_objects, num_detections: the size of the generated set.
        seconds: wall seconds per step, in run order: ``"generate"``, ``"write submission file"``,
            ``"read submission file"``, ``"devkit evaluation"`` and, when timed, ``"COCO protocol"``.
        mean_ap: the devkit's mAP@.5 of the submission read back from its file, a fraction in [0, 1].
        true_positives: the number of detections the devkit matched.
        coco: the COCO protocol's metrics (percentages, ``"AP"``, ``"AP50"``, ...) when timed, else None.
    """

    num_images: int
    num_classes: int
    num_objects: int
    num_detections: int
    seconds: Dict[str, float]
    mean_ap: float
    true_positives: int
    coco: Optional[Dict[str, float]] = None


def run_det_eval_benchmark(
    num_images: int = 20121,
    num_classes: int = 200,
    num_detections: int = 2_000_000,
    *,
    seed: int = 0,
    coco: bool = False,
) -> DetEvalTimings:
    """Generate a set (:func:`synthetic_det_eval_set`), write its submission file into a temporary folder,
    read it back and evaluate it with the devkit protocol (and with ``coco`` also the COCO protocol)."""
    seconds: Dict[str, float] = {}
    gt, sub = _timed(
        seconds, "generate", lambda: synthetic_det_eval_set(num_images, num_classes, num_detections, seed=seed)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "submission.txt"
        _timed(seconds, "write submission file", lambda: write_submission(path, sub))
        sub_file = _timed(seconds, "read submission file", lambda: read_submission(path, gt.image_ids, num_classes))
    result = _timed(seconds, "devkit evaluation", lambda: evaluate_detections(gt, sub_file))
    coco_metrics = _timed(seconds, "COCO protocol", lambda: coco_box_metrics(gt, sub_file)) if coco else None
    return DetEvalTimings(
        num_images=num_images,
        num_classes=num_classes,
        num_objects=len(gt.labels),
        num_detections=len(sub),
        seconds=seconds,
        mean_ap=result.mean_ap,
        true_positives=int(result.tp.sum()),
        coco=coco_metrics,
    )


# ------------------------------------------------------------------------------------ CLS-LOC


def synthetic_loc_eval_set(
    num_images: int = 50000, num_classes: int = 1000, *, seed: Seed = 0
) -> Tuple[Synsets, List[LocImage], LocGuesses]:
    """A class list, ground truth and guesses shaped like ILSVRC CLS-LOC val.

    Classes: ``num_classes`` (at least 5) WNIDs, label ``k`` is ``synsets.wnids[k - 1]``. Images:
    ``ILSVRC2012_val_00000001`` ... with image id ``i + 1`` for image ``i``, 200-499 px per side, one class
    each, 1-3 boxes of that class (devkit inclusive integer indices, corner in 0..99, sides 11..100 px).
    Guesses: 5 per image, distinct random classes; the image's class replaces the guess at rank r with
    probability 1/7 for each r in 1..5 (otherwise it is there only by chance). Every guess box is the image's
    first box (internal xyxy) jittered by 8 px (standard deviation) per coordinate.

    ``seed``: an int, or a ``numpy.random.Generator`` that is used (and advanced) as is.
    """
    if num_classes < MAX_GUESSES:
        raise ConfigError(f"num_classes is {num_classes}; the guesses need at least {MAX_GUESSES} classes")
    rng = np.random.default_rng(seed)
    n, k = num_images, num_classes
    wnids = tuple(f"n{10000000 + 7919 * i:08d}" for i in range(k))
    synsets = Synsets(wnids, wnids, "map_clsloc")
    sizes = rng.integers(200, 500, (n, 2))
    labels = rng.integers(0, k, n)
    images = []
    for i in range(n):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        m = int(rng.integers(1, 4))
        xy = rng.integers(0, 100, (m, 2))
        wh = rng.integers(10, 100, (m, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float64)
        images.append(
            LocImage(
                name,
                f"val/{name}.JPEG",
                (wnids[labels[i]],),
                (wnids[labels[i]],) * m,
                boxes,
                int(sizes[i, 0]),
                int(sizes[i, 1]),
            )
        )
    guesses = LocGuesses.empty(np.arange(1, n + 1))
    for i, im in enumerate(images):
        classes = rng.choice(k, MAX_GUESSES, replace=False)
        rank = rng.integers(0, MAX_GUESSES + 2)
        if rank < MAX_GUESSES:
            classes[rank] = labels[i]
        guesses.wnids[i] = [wnids[c] for c in classes]
        guesses.boxes[i] = devkit_to_xyxy(im.boxes[0]) + rng.normal(0, 8, (MAX_GUESSES, 4))
    return synsets, images, guesses


def _write_kaggle_solution(path: Path, images: Sequence[LocImage]) -> None:
    """Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString`` with ``WNID xmin ymin xmax ymax`` per box."""
    with open(path, "w") as f:
        f.write("ImageId,PredictionString\n")
        for im in images:
            f.write(
                im.name
                + ","
                + " ".join(f"{w} " + " ".join(str(int(v)) for v in b) for w, b in zip(im.box_wnids, im.boxes))
                + "\n"
            )


def _write_devkit_xml_folder(xml_dir: Path, images: Sequence[LocImage]) -> None:
    """One devkit annotation XML per image (size and boxes only) in ``xml_dir``."""
    xml_dir.mkdir(parents=True, exist_ok=True)
    for im in images:
        objs = "".join(
            f"<object><name>{w}</name><bndbox><xmin>{int(b[0])}</xmin><ymin>{int(b[1])}</ymin>"
            f"<xmax>{int(b[2])}</xmax><ymax>{int(b[3])}</ymax></bndbox></object>"
            for w, b in zip(im.box_wnids, im.boxes)
        )
        (xml_dir / f"{im.name}.xml").write_text(
            f"<annotation><size><width>{im.width}</width><height>{im.height}</height></size>{objs}</annotation>"
        )


@dataclass
class LocEvalTimings:
    """What :func:`run_loc_eval_benchmark` measured.

    Attributes:
        seconds: wall seconds per step, in run order, named as printed (``"read Kaggle solution csv"``,
            ..., :data:`LOC_EVALUATE_STEP`, ``"read devkit XML folder"`` when timed, ``"localize: ... mode"``).
        metrics: :func:`~restransfer.evaluation.imagenet_loc.evaluate_localization`'s result for the devkit
            submission (the Kaggle CSV gives the same).
        machine: processor (or architecture) and Python version.
    """

    seconds: Dict[str, float]
    metrics: Dict[str, float]
    machine: str

    def as_json(self) -> Dict[str, Union[float, str]]:
        """The step timings and ``"machine"`` in one flat dict."""
        return {**self.seconds, "machine": self.machine}


def run_loc_eval_benchmark(
    num_images: int = 50000,
    num_classes: int = 1000,
    detections_per_image: int = 100,
    *,
    xml: bool = False,
    seed: int = 0,
) -> LocEvalTimings:
    """Generate a set (:func:`synthetic_loc_eval_set`), write the Kaggle solution, a devkit text and a Kaggle
    CSV submission (with ``xml`` also the devkit XML folder) into a temporary folder, then time reading each,
    the evaluation with 2% of the images blacklisted, and the three localization modes over
    ``detections_per_image`` detections of random classes and scores per image (all on the first box).

    Raises:
        RuntimeError: the two submission formats evaluate differently (a bug of their readers or writers).
    """
    rng = np.random.default_rng(seed)
    synsets, images, guesses = synthetic_loc_eval_set(num_images, num_classes, seed=rng)
    n, k = num_images, num_classes
    names = [im.name for im in images]
    seconds: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        solution = tmp / "LOC_val_solution.csv"
        _write_kaggle_solution(solution, images)
        write_devkit_submission(tmp / "sub.txt", guesses, synsets)
        write_kaggle_submission(tmp / "sub.csv", guesses, names)

        gt_images = _timed(seconds, "read Kaggle solution csv", lambda: read_kaggle_solution(solution, synsets))
        gt = _timed(seconds, "pack ground truth", lambda: pack_ground_truth(gt_images, synsets))
        sub = _timed(seconds, "read devkit submission txt", lambda: read_devkit_submission(tmp / "sub.txt", synsets, n))
        sub_csv = _timed(
            seconds, "read Kaggle submission csv", lambda: read_kaggle_submission(tmp / "sub.csv", synsets, gt.names)
        )
        blacklist = np.sort(rng.choice(n, n // 50, replace=False))
        metrics = _timed(seconds, LOC_EVALUATE_STEP, lambda: evaluate_localization(gt, sub, blacklist=blacklist))
        csv_metrics = evaluate_localization(gt, sub_csv, blacklist=blacklist)
        if csv_metrics != metrics:
            raise RuntimeError(
                f"the devkit submission evaluates to {metrics}, the same guesses as a Kaggle CSV to {csv_metrics}"
            )
        if xml:
            xml_dir = tmp / "Annotations" / "CLS-LOC" / "val"
            _write_devkit_xml_folder(xml_dir, images)
            _timed(seconds, "read devkit XML folder", lambda: read_devkit_annotations(xml_dir, synsets))

    det = detections_per_image
    preds = [
        {
            "image_id": i + 1,
            "boxes": np.tile(devkit_to_xyxy(im.boxes[:1]), (det, 1)).astype(np.float32),
            "scores": rng.random(det).astype(np.float32),
            "labels": rng.integers(1, k + 1, det),
        }
        for i, im in enumerate(images)
    ]
    lut = {j + 1: w for j, w in enumerate(synsets.wnids)}
    size_of = {i + 1: (im.width, im.height) for i, im in enumerate(images)}
    scores = rng.random((n, k), dtype=np.float32)
    _timed(seconds, "localize: detector mode", lambda: detector_guesses(preds, lut))
    _timed(seconds, "localize: classifier mode", lambda: classifier_guesses(preds, scores, lut, size_of))
    _timed(
        seconds,
        "localize: gt_class mode",
        lambda: gt_class_guesses(preds, {i + 1: im.labels for i, im in enumerate(images)}, lut, size_of),
    )
    machine = f"{platform.processor() or platform.machine()}, {platform.python_version()}"
    return LocEvalTimings(seconds=seconds, metrics=metrics, machine=machine)
