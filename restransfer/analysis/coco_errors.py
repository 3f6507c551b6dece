"""The COCO error breakdown of the original cocoapi ``analyze()`` (Hoiem et al.'s diagnosis, as drawn by
``CocoEval.analyze`` in MATLAB and MMDetection's ``coco_error_analysis.py``), computed with pycocotools.

Seven precision-recall curves per category and object size, each removing one more kind of error:

* ``C75``, ``C50``: PR at IoU .75 and .5 (their areas are COCO's AP75 and AP50);
* ``Loc``: PR at IoU .1 (localization errors removed; duplicate detections still count as errors);
* ``Sim``: PR at IoU .1 after ground truth of the other categories of the same supercategory is relabelled
  to the analysed one as ignored (crowd) regions: detections on similar objects no longer count;
* ``Oth``: the same with every other category relabelled: no class confusion counts;
* ``BG``: background false positives removed too (precision 1 wherever ``Oth`` is positive);
* ``FN``: every error removed (precision 1).

Without supercategories (none given, or empty) ``Sim`` equals ``Oth``. Areas are means of precision over
COCO's 101 recall thresholds and the categories with ground truth in that size range, as
``COCOeval.summarize`` computes AP; they never decrease from ``C75`` to ``FN``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.coco_checks import check_ground_truth, check_results, load_coco_json
from ..errors import DataError
from ..evaluation.coco import load_results

__all__ = ["CURVES", "AREAS", "ErrorAnalysis", "analyze_coco_errors", "read_results", "read_ground_truth"]

CURVES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
AREAS = ("all", "small", "medium", "large")
MATCH_IOU = 0.5  # the threshold of the gallery's and the PR curves' matches (index 1 of the main evaluation)


def read_ground_truth(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """A COCO annotation json as a dict, read and validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    return load_coco_json(path).dataset


def read_results(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """A COCO results json (a list of detections); errors name the file and line."""
    return load_results(Path(path))


@dataclass
class ErrorAnalysis:
    """The breakdown of one results set.

    Attributes:
        precision: (7, R, K, A) precision of the :data:`CURVES` at COCO's R=101 recall thresholds, for the K
            categories and the A=4 :data:`AREAS` (A=1, "all", without ``sizes``); categories without ground truth
            in a size range hold -1.
        recall_thresholds: (R,).
        cat_ids, names: the K categories' ids and names.
        iou_type: ``bbox`` or ``segm``.
        matches: per category, the main evaluation's per-image records at area "all" (pycocotools'
            ``evalImgs`` entries: ``dtIds``, ``gtIds``, ``dtMatches``/``gtMatches`` at IoU .75/.5/.1,
            ``dtScores``, ``gtIgnore``, ``dtIgnore``), None for images without detections or objects.
        detections, ground_truth: annotation id -> the detection / ground-truth dict the matches refer to.
    """

    precision: np.ndarray
    recall_thresholds: np.ndarray
    cat_ids: List[int]
    names: List[str]
    iou_type: str
    matches: List[List[Optional[Dict[str, Any]]]]
    detections: Dict[int, Dict[str, Any]]
    ground_truth: Dict[int, Dict[str, Any]]

    def valid(self, area: int = 0) -> np.ndarray:
        """(K,) bool: the categories with ground truth in size range ``area``."""
        return self.precision[0, 0, :, area] > -1

    def areas(self, category: Optional[int] = None, area: int = 0) -> Dict[str, Optional[float]]:
        """Each curve's area in percent, over all categories with ground truth (``category`` None) or for
        category index ``category``; None where there is no ground truth to measure against."""
        valid = self.valid(area)
        if category is not None:
            valid = valid & (np.arange(len(valid)) == category)
        if not valid.any():
            return {c: None for c in CURVES}
        return {c: float(self.precision[i][:, valid, area].mean()) * 100.0 for i, c in enumerate(CURVES)}

    def curves(self, category: Optional[int] = None, area: int = 0) -> np.ndarray:
        """(7, R) the curves averaged over the categories with ground truth (or of one category); zeros
        where there is none."""
        valid = self.valid(area)
        if category is not None:
            valid = valid & (np.arange(len(valid)) == category)
        if not valid.any():
            return np.zeros((len(CURVES), len(self.recall_thresholds)))
        return self.precision[:, :, valid, area].mean(axis=2)

    def to_json(self) -> Dict[str, Any]:
        """``{"overall": {curve: %}, "per_area": {size: {curve: %}}, "per_category": {name: {curve: %}}}``."""
        return {
            "overall": self.areas(),
            "per_area": {name: self.areas(area=a) for a, name in enumerate(AREAS) if 0 < a < self.precision.shape[3]},
            "per_category": {name: self.areas(category=k) for k, name in enumerate(self.names)},
        }


def _coco(dataset: Dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _evaluate(
    gt: COCO,
    dt: COCO,
    iou_type: str,
    iou_thrs: Sequence[float],
    img_ids: Sequence[int],
    cat_ids: Optional[Sequence[int]] = None,
    sizes: bool = True,
) -> COCOeval:
    ev = COCOeval(gt, dt, iou_type)
    ev.params.imgIds = list(img_ids)
    if cat_ids is not None:
        ev.params.catIds = list(cat_ids)
    if not sizes:  # area "all" only: a quarter of the per-image work
        ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
    ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
    ev.params.maxDets = [100]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return ev


def _relabelled_precision(
    gt_data: Dict[str, Any],
    dt: COCO,
    cat_ids: Sequence[int],
    relabel: Dict[int, set],
    iou_type: str,
    img_ids: Sequence[int],
    sizes: bool,
) -> np.ndarray:
    """(R, K, A) precision at IoU .1 of every category's detections, where for category ``k`` the ground truth
    of the categories in ``relabel[k]`` counts as ignored (crowd) regions of ``k``: matching them neither helps
    nor hurts.

    cocoapi evaluates each category on its own with its relabelled copy of the ground truth; one evaluation
    gives the same curves when every object is also entered, as a crowd region, in each category that relabels
    it and has a detection in its image (without a detection there, an ignored region changes nothing).
    """
    dt_cats: Dict[int, set] = {}
    for d in dt.dataset["annotations"]:
        dt_cats.setdefault(d["image_id"], set()).add(d["category_id"])
    next_id = max((int(a["id"]) for a in gt_data["annotations"]), default=0) + 1
    anns = []
    for a in gt_data["annotations"]:
        anns.append(dict(a))
        for k in dt_cats.get(a["image_id"], ()):
            if k != a["category_id"] and a["category_id"] in relabel[k]:
                anns.append({**a, "id": next_id, "category_id": k, "iscrowd": 1, "ignore": 1})
                next_id += 1
    gt = _coco({**gt_data, "annotations": anns})
    return _evaluate(gt, dt, iou_type, [0.1], img_ids, cat_ids, sizes).eval["precision"][0, :, :, :, 0]


def analyze_coco_errors(
    gt_data: Dict[str, Any],
    results: List[Dict[str, Any]],
    iou_type: str = "bbox",
    *,
    image_ids: Optional[Sequence[int]] = None,
    breakdown: bool = True,
    sizes: bool = True,
    gt_name: str = "ground truth",
    results_name: str = "results",
) -> ErrorAnalysis:
    """The error breakdown of ``results`` (COCO results list) against ``gt_data`` (the annotation json's dict).

    Args:
        iou_type: ``bbox`` or ``segm``.
        image_ids: evaluate these images only (default every image of the ground truth).
        breakdown: False computes only the main evaluation (``C75``, ``C50``, ``Loc`` and the matches); the
            ``Sim`` and ``Oth`` curves, which re-evaluate every category, then equal ``Loc``.
        sizes: False evaluates area "all" only (A = 1 in :attr:`ErrorAnalysis.precision`), a quarter of the work.
        gt_name, results_name: name the inputs in errors.

    Raises:
        DataError: broken ground truth, an empty results list, or results whose image or category ids the
            ground truth lacks (results of another dataset), naming the entry.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou type {iou_type!r}: choose bbox or segm")
    check_ground_truth(gt_data, gt_name, [iou_type], image_ids)
    if not results:
        raise DataError(
            f"{results_name}: no detections to analyse; give the results of a model that detected something on this set"
        )
    check_results(results, results_name, [iou_type], gt_data, allow_empty=False)
    drop = "segmentation" if iou_type == "bbox" else "bbox"  # loadRes takes a given box's area as the mask's
    gt_data = {**gt_data, "annotations": [dict(a) for a in gt_data["annotations"]]}
    gt = _coco(copy.copy(gt_data))
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results])
    img_ids = sorted(int(i) for i in image_ids) if image_ids is not None else sorted(gt.getImgIds())
    main = _evaluate(gt, dt, iou_type, [0.75, MATCH_IOU, 0.1], img_ids, sizes=sizes)
    cat_ids = list(main.params.catIds)
    first = main.eval["precision"][:, :, :, :, 0]  # (3, R, K, A)
    k_n, a_n = first.shape[2], first.shape[3]
    ps = np.zeros((len(CURVES),) + first.shape[1:])
    ps[:3] = first
    cats = {c["id"]: c for c in gt_data["categories"]}
    has_super = all(cats[c].get("supercategory") for c in cat_ids)
    wanted = set(img_ids)
    evaluated = [a for a in gt_data["annotations"] if a["image_id"] in wanted]
    evaluated_data = {**gt_data, "annotations": evaluated}
    if breakdown:
        others = {k: set(cat_ids) - {k} for k in cat_ids}
        ps[4] = _relabelled_precision(evaluated_data, dt, cat_ids, others, iou_type, img_ids, sizes)
        if has_super:
            similar = {
                k: {c for c in others[k] if cats[c]["supercategory"] == cats[k]["supercategory"]} for k in cat_ids
            }
            ps[3] = _relabelled_precision(evaluated_data, dt, cat_ids, similar, iou_type, img_ids, sizes)
        else:
            ps[3] = ps[4]
    else:
        ps[3] = ps[4] = first[2]
    missing = first[0, 0] == -1  # (K, A): no ground truth of the category in the size range
    ps[ps == -1] = 0
    ps[5] = ps[4] > 0
    ps[6] = 1.0
    ps[:, :, missing] = -1
    records = main.evalImgs
    n_img = len(img_ids)
    # evalImgs runs over categories, then area ranges, then images; keep area "all"
    matches = [records[k * a_n * n_img : k * a_n * n_img + n_img] for k in range(k_n)]
    return ErrorAnalysis(
        precision=ps,
        recall_thresholds=np.asarray(main.params.recThrs),
        cat_ids=cat_ids,
        names=[str(cats[c]["name"]) for c in cat_ids],
        iou_type=iou_type,
        matches=matches,
        detections=dict(dt.anns),
        ground_truth=dict(gt.anns),
    )
