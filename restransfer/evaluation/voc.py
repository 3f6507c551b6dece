"""PASCAL VOC detection evaluation, identical to the devkit's ``VOCevaldet.m`` (with ``VOCap.m``).

The rules, per class, as the devkit applies them:

* Detections of the class are sorted by decreasing confidence with MATLAB's ``sort(-confidence)``, which is
  stable: equal confidences keep the order in which the detections appear (the results file's line order;
  for a model's predictions, images in image-set order and each image's detections in the model's order,
  which is the order :func:`restransfer.evaluation.voc_io.write_results` writes).
* Overlap on inclusive pixel boxes (:func:`restransfer.boxes.inclusive_iou`, ``+1`` widths): boxes overlap
  only when ``iw > 0`` and ``ih > 0``; ``ov = iw * ih / ua`` with ``ua`` the union, detection first.
* Each detection takes the ground-truth object *of its class in its image* with the highest overlap (all of
  them, matched or not, difficult or not; on equal overlaps the first in XML order, since the devkit keeps
  a maximum only when ``ov > ovmax``). If ``ovmax >= 0.5`` (the devkit's ``>=``; the widely copied Python
  ``voc_eval.py`` tests ``ovmax > thresh``, strict, and so drops a detection at exactly 0.5): a difficult
  object makes the detection neither true nor false positive; an object not yet detected makes it a true
  positive (and detected); an object already detected makes it a false positive (a duplicate). Below 0.5
  (or no overlapping object) it is a false positive.
* ``npos`` counts the class's non-difficult objects; ``rec = tp / npos``, ``prec = tp ./ (fp + tp)`` over
  the cumulative counts.
* AP, ``voc2007`` (the VOC 2007 devkit, the ResNet paper's Table 7): 11-point interpolated, the mean over
  ``t = 0:0.1:1`` of ``max(prec(rec >= t))`` (0 when no point reaches ``t``). MATLAB builds ``0:0.1:1``
  from both ends (``k * 0.1`` up to 0.5, ``1 - k * 0.1`` above), so the thresholds above 0.5 are the
  doubles nearest 0.6, 0.7, ...: a recall of exactly 0.7 counts at ``t = 0.7``, where ``voc_eval.py``'s
  ``np.arange(0.0, 1.1, 0.1)`` (0.7000000000000001) misses it. :data:`ELEVEN_POINTS` holds MATLAB's values.
* AP, ``area`` (VOC 2010+ ``VOCap.m``): precision made monotone from the right, summed over the recall
  steps. The envelope takes MATLAB's ``max``, which passes over NaN (``0/0`` precision where only
  ignored detections precede).

Beside mAP@.5, ``mAP_50_95`` is the same protocol (same matching, same AP rule) averaged over the IoU
thresholds 0.50:0.05:0.95 (COCO's thresholds, ``np.linspace(0.5, 0.95, 10)``), then over classes.

A class without positives has no AP (NaN; the devkit's ``rec`` would be ``0/0``): it is left out of the
means and listed in the metrics. A class with positives but no detections has AP 0. One case differs
from the devkit on purpose: a class whose every detection hits a difficult object has all-NaN precision,
where the devkit's 11-point loop returns NaN; here it is AP 0, like a class without detections.

The matching is vectorised: because each detection takes its best object whether or not that object is
already detected, the best object and its overlap are one grouped maximum over all (detection, object)
pairs of the same image and class, computed once for every threshold; a detection is then a true positive
when it is the earliest-ranked non-ignored hit on its object.

Files (the devkit's results files and XML ground truth) are in :mod:`restransfer.evaluation.voc_io`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..boxes import inclusive_iou
from ..errors import ConfigError
from .devkit_records import ClassAPResult, mean_over_classes
from .evaluator import DatasetEvaluator, register_evaluator
from .metrics_file import write_metrics
from .voc_io import VocDetections, VocGroundTruth, ground_truth_from_coco, predictions_to_detections, write_results

__all__ = [
    "METRICS",
    "ELEVEN_POINTS",
    "IOU_THRESHOLDS",
    "VocGroundTruth",
    "VocDetections",
    "VocEvalResult",
    "default_metric",
    "matlab_colon",
    "voc_ap",
    "best_overlaps",
    "evaluate_voc",
    "metrics_dict",
    "format_table",
    "VOCEvaluator",
]

METRICS = ("voc2007", "area")
MIN_OVERLAP = 0.5
# COCO's IoU thresholds for the AP averaged over .5:.95
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)


def matlab_colon(a: float, d: float, b: float) -> np.ndarray:
    """MATLAB's ``a:d:b`` for ``d > 0`` when ``b`` is (close to) ``a + n * d``: the first half ``a + k * d``, the
    second half ``b - k * d``, the middle ``(a + b) / 2`` (MathWorks' description of the colon operator)."""
    n = int(np.floor((b - a) / d + 1e-10))
    v = np.empty(n + 1)
    k = np.arange(n // 2 + 1)
    v[k] = a + k * d
    v[n - k] = b - k * d
    if n % 2 == 0:
        v[n // 2] = (a + b) / 2
    return v


# t = 0:0.1:1 in the VOC 2007 devkit's 11-point AP
ELEVEN_POINTS = matlab_colon(0.0, 0.1, 1.0)


def default_metric(year: Optional[Union[int, str]]) -> str:
    """The AP rule of a VOC year's devkit: ``voc2007`` for 2007, ``area`` otherwise (2010+ and unknown)."""
    return "voc2007" if str(year) == "2007" else "area"


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str = "area") -> float:
    """AP of one class from its ``recall``/``precision`` (M,) in rank order; M = 0 gives 0.

    ``voc2007``: the 11-point mean (``ap = ap + p / 11`` in the devkit's order); ``area``: ``VOCap.m``.
    NaN precisions are passed over as MATLAB's ``max`` does.
    """
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if metric == "voc2007":
        # max(prec(rec >= t)): rec never decreases, so that is the suffix maximum from the first rec >= t
        env = np.fmax.accumulate(prec[::-1])[::-1] if len(prec) else prec
        first = np.searchsorted(rec, ELEVEN_POINTS, side="left")
        ap = 0.0
        for i in first.tolist():
            p = env[i] if i < len(env) else 0.0
            ap = ap + (0.0 if np.isnan(p) else p) / 11
        return float(ap)
    if metric != "area":
        raise ValueError(f"metric {metric!r}: use one of {', '.join(METRICS)}")
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.fmax.accumulate(np.concatenate(([0.0], prec, [0.0]))[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


# ----------------------------------------------------------------------------------------- records


@dataclass
class VocEvalResult(ClassAPResult):
    """What :func:`evaluate_voc` computed, AP as fractions (NaN for classes without positives).

    ``ap`` (K,) at IoU 0.5 (``mean_ap``: mAP@.5 over the classes with positives); ``num_pos`` (K,);
    ``recall``/``precision``: per class, the curves at IoU 0.5 over the class's detections in rank order;
    ``tp``/``fp`` (N,) bool at IoU 0.5 in detection order (both False: a difficult match, ignored);
    ``ap_by_threshold`` (T, K) at ``iou_thresholds``; ``ap_50_95`` (K,) their mean; ``metric`` the AP rule."""

    ap_by_threshold: np.ndarray
    iou_thresholds: np.ndarray
    metric: str
    ap_50_95: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.ap_50_95 = self.ap_by_threshold.mean(axis=0) if len(self.ap_by_threshold) else self.ap.copy()

    @property
    def mean_ap_50_95(self) -> float:
        return mean_over_classes(self.ap_50_95)


# ---------------------------------------------------------------------------------------- matching


def best_overlaps(gt: VocGroundTruth, dets: VocDetections) -> Tuple[np.ndarray, np.ndarray]:
    """Each detection's highest overlap with an object of its class in its image, and that object.

    Returns:
        ``ovmax`` (N,) float64 (-inf when no such object overlaps it) and ``jmax`` (N,) int64 object index
        into ``gt`` (-1 when none; the first in XML order among equal overlaps).
    """
    n = len(dets)
    ovmax = np.full(n, -np.inf)
    jmax = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(gt.labels) == 0:
        return ovmax, jmax
    k1 = gt.num_classes + 1
    gt_key = gt.obj_image.astype(np.int64) * k1 + gt.labels
    det_key = dets.image.astype(np.int64) * k1 + dets.labels
    gt_idx = np.argsort(gt_key, kind="stable")  # stable: XML order inside an (image, class) group
    sorted_keys = gt_key[gt_idx]
    lo = np.searchsorted(sorted_keys, det_key, side="left")
    cnt = np.searchsorted(sorted_keys, det_key, side="right") - lo
    # every (detection, object) pair of the same image and class, detection-major, objects in XML order
    starts = np.cumsum(cnt) - cnt
    pair_det = np.repeat(np.arange(n), cnt)
    pair_gt = gt_idx[lo[pair_det] + np.arange(len(pair_det)) - starts[pair_det]]
    iou = inclusive_iou(dets.boxes[pair_det], gt.boxes[pair_gt])  # -1 where the boxes do not overlap
    iou[iou < 0] = -np.inf
    has = np.flatnonzero(cnt > 0)
    if len(has) == 0:
        return ovmax, jmax
    ovmax[has] = np.maximum.reduceat(iou, starts[has])
    at_max = np.flatnonzero((iou == ovmax[pair_det]) & np.isfinite(iou))
    owner = pair_det[at_max]
    first = at_max[np.concatenate(([True], owner[1:] != owner[:-1]))] if len(at_max) else at_max
    jmax[pair_det[first]] = pair_gt[first]
    return ovmax, jmax


def _ranking(dets: VocDetections) -> np.ndarray:
    """Detection indices by class, then decreasing score, ties in detection order (MATLAB's stable sort)."""
    return np.lexsort((-dets.scores, dets.labels))


def evaluate_voc(
    gt: VocGroundTruth,
    dets: VocDetections,
    metric: str = "area",
    iou_thresholds: Optional[Sequence[float]] = IOU_THRESHOLDS,
) -> VocEvalResult:
    """Evaluate ``dets`` against ``gt`` as ``VOCevaldet.m`` does, at IoU 0.5 and at each of ``iou_thresholds``
    (None or empty: 0.5 only; ``ap_50_95`` is then the AP at 0.5).

    Raises:
        ValueError: an unknown metric, or a detection of an unknown image or class or with a non-finite
            score or box.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: use one of {', '.join(METRICS)}")
    dets.check(gt)
    k = gt.num_classes
    n = len(dets)
    num_pos = gt.num_positives()
    ovmax, jmax = best_overlaps(gt, dets)
    order = _ranking(dets)
    bounds = np.searchsorted(dets.labels[order], np.arange(1, k + 2))
    hit_difficult = np.zeros(n, dtype=bool)
    matched = jmax >= 0
    hit_difficult[matched] = gt.difficult[jmax[matched]]

    def at(threshold: float, curves: bool):
        hit = ovmax >= threshold
        ignored = hit & hit_difficult
        cand = order[(hit & ~hit_difficult)[order]]  # candidate true positives in rank order
        tp = np.zeros(n, dtype=bool)
        if len(cand):
            _, first = np.unique(jmax[cand], return_index=True)  # the earliest-ranked hit on each object
            tp[cand[first]] = True
        fp = ~tp & ~ignored
        ap = np.full(k, np.nan)
        recs, precs = [], []
        tp_r, fp_r = tp[order], fp[order]
        for c in range(k):
            seg = slice(bounds[c], bounds[c + 1])
            ctp = np.cumsum(tp_r[seg], dtype=np.float64)
            cfp = np.cumsum(fp_r[seg], dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                rec = ctp / num_pos[c]
                prec = ctp / (cfp + ctp)
            if num_pos[c] > 0:
                ap[c] = voc_ap(rec, prec, metric)
            if curves:
                recs.append(rec)
                precs.append(prec)
        return ap, recs, precs, tp, fp

    ap, recall, precision, tp, fp = at(MIN_OVERLAP, True)
    thresholds = np.asarray([] if iou_thresholds is None else iou_thresholds, dtype=np.float64)
    by_t = (
        np.stack([ap if t == MIN_OVERLAP else at(float(t), False)[0] for t in thresholds])
        if len(thresholds)
        else np.zeros((0, k))
    )
    return VocEvalResult(
        ap=ap,
        ap_by_threshold=by_t,
        iou_thresholds=thresholds,
        num_pos=num_pos,
        recall=recall,
        precision=precision,
        tp=tp,
        fp=fp,
        metric=metric,
    )


# ------------------------------------------------------------------------------------------ metrics


def _percent(v: float) -> Optional[float]:
    return None if np.isnan(v) else float(v) * 100.0


def metrics_dict(result: VocEvalResult, class_names: Sequence[str]) -> Dict[str, Any]:
    """``metrics.json``'s content, percentages at full precision::

        {"mAP", "AP": {class: AP@.5}, "mAP_50_95", "AP_50_95": {class: ..}, "metric": "voc2007" | "area",
         "num_positives": {class: n}, "classes_without_positives": [class, ...]}

    A class without positives maps to None (JSON null) and is left out of both means.
    """
    names = list(class_names)
    return {
        "mAP": _percent(result.mean_ap),
        "AP": {c: _percent(a) for c, a in zip(names, result.ap.tolist())},
        "mAP_50_95": _percent(result.mean_ap_50_95),
        "AP_50_95": {c: _percent(a) for c, a in zip(names, result.ap_50_95.tolist())},
        "metric": result.metric,
        "num_positives": {c: int(n) for c, n in zip(names, result.num_pos.tolist())},
        "classes_without_positives": [c for c, n in zip(names, result.num_pos.tolist()) if n == 0],
    }


def format_table(metrics: Mapping[str, Any]) -> str:
    """A table for people from :func:`metrics_dict`'s output, rounded."""
    lines = [f"{'class':<16} {'positives':>9} {'AP@.5':>7} {'AP@.5:.95':>9}"]
    for c, ap in metrics["AP"].items():
        ap2 = metrics["AP_50_95"].get(c)
        lines.append(
            f"{c[:16]:<16} {metrics['num_positives'].get(c, 0):>9} "
            f"{'n/a' if ap is None else f'{ap:.2f}':>7} {'n/a' if ap2 is None else f'{ap2:.2f}':>9}"
        )
    lines.append("-" * 44)
    rule = "11-point, VOC2007" if metrics["metric"] == "voc2007" else "area, VOC2010+"
    for key, label in (("mAP", f"mAP@.5 ({rule})"), ("mAP_50_95", "mAP@.5:.95")):
        v = metrics[key]
        lines.append(f"{label:<34} {'n/a' if v is None else f'{v:.2f}':>9}")
    missing = metrics["classes_without_positives"]
    if missing:
        lines.append(f"({len(missing)} classes without positives are left out of the means: {', '.join(missing)})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- evaluator


class VOCEvaluator(DatasetEvaluator):
    """The VOC protocol as an :class:`~restransfer.evaluation.evaluator.Evaluator`: every process's predictions
    gathered on the main one in image-set order and scored by :func:`evaluate_voc`; the devkit's results files
    and ``metrics.json`` written.

    Args:
        dataset: the test dataset whose ``coco.dataset`` dict carries VOC's ground truth (a
            :class:`~restransfer.data.voc_dataset.VocDataset`, or a json of ``datasets/prepare_voc.py``; see
            :func:`~restransfer.evaluation.voc_io.ground_truth_from_coco`), over its ``image_ids``.
        output_dir: where ``metrics.json`` and the results files go (``results/VOC<year>/Main/comp4_det_<image
            set>_<class>.txt``, the layout the evaluation server takes); None: no files.
        metrics_path: ``metrics.json``'s path instead.
        voc_metric: ``voc2007`` or ``area`` (``test.voc_metric``); None: :func:`default_metric` of the dataset's
            year (its ``year``, or its images' ``voc_year``).
        iou_thresholds: the thresholds of ``mAP_50_95``.
        options: other protocols' options, ignored.

    After :meth:`evaluate` (main process): ``result`` (:class:`VocEvalResult`), ``ground_truth``, ``detections``
    (what was scored) and ``metrics``. ``log.jsonl`` gets ``voc/mAP`` and ``voc/mAP_50_95``; the best model is
    kept by ``voc/mAP``.
    """

    name = "voc"
    main_metric = "voc/mAP"

    def configure(
        self,
        *,
        voc_metric: Optional[str] = None,
        iou_thresholds: Optional[Sequence[float]] = IOU_THRESHOLDS,
        **options: Any,
    ) -> None:
        dataset = self.dataset
        data = dataset.coco.dataset
        year = getattr(dataset, "year", None)
        if year is None:
            years = {str(im["voc_year"]) for im in data["images"] if im.get("voc_year") is not None}
            year = years.pop() if len(years) == 1 else None
        metric = voc_metric or default_metric(year)
        if metric not in METRICS:
            raise ConfigError(f"test.voc_metric: {metric!r} is not one of {', '.join(METRICS)}")
        self.metric = metric
        self.ground_truth = ground_truth_from_coco(data, dataset.image_ids)
        self.iou_thresholds = iou_thresholds
        self.image_set = getattr(dataset, "split", None) or "test"
        self.results_dir = self.output_dir / "results" / f"VOC{year or ''}" / "Main" if self.output_dir else None
        self.result: Optional[VocEvalResult] = None
        self.detections: Optional[VocDetections] = None

    def compute(self, predictions: List[Dict[str, Any]]) -> Dict[str, Any]:
        dets = predictions_to_detections(predictions, self.ground_truth)
        if self.results_dir is not None:
            write_results(self.results_dir, self.ground_truth, dets, image_set=self.image_set)
        self.detections = dets
        self.result = evaluate_voc(self.ground_truth, dets, self.metric, self.iou_thresholds)
        self.metrics = metrics_dict(self.result, self.ground_truth.class_names)
        if self.metrics_path is not None:
            write_metrics(self.metrics, self.metrics_path)
        return self.metrics

    def format(self, metrics: Mapping[str, Any]) -> str:
        return format_table(metrics)


register_evaluator("voc", VOCEvaluator, formats=("voc",))
