"""COCO box and mask evaluation: the numbers of pycocotools' ``COCOeval``, from one of two engines.

* ``"pycocotools"``: the reference implementation.
* ``"faster_coco_eval"``: a C++ re-implementation (package ``faster-coco-eval``) that the tests check
  against pycocotools to 1e-9 on generated data with crowd regions, every area range and more
  detections than ``maxDets``. ``engine="auto"`` uses it when it is installed.

Metrics are percentages with full float precision::

    {"bbox": {"AP": .., "AP50": .., "AP75": .., "APs": .., "APm": .., "APl": ..,
              "per_category": {name: AP, ...}},
     "segm": {...}}

Where pycocotools reports -1 ("undefined": no ground truth in that area range, or a category without
ground truth) the value is NaN; :func:`write_metrics` stores NaN as JSON ``null``. Every category of
the ground truth appears in ``per_category``, NaN when it has no ground truth. An empty results list
is an error unless ``allow_empty`` (a model that detected nothing): then every defined metric is 0,
as pycocotools computes it.

Before either engine runs, the ground truth and the results are checked, so that both engines
refuse the same inputs with the same ``ValueError`` (a :class:`~restransfer.errors.DataError`) naming the
file, the entry index, the annotation id and the image: a ground truth without an ``annotations`` list;
image, category or annotation ids that are not integers or that repeat (a duplicated annotation would
count twice); boxes with an Infinity or NaN value; with segm, polygons with fewer than 3 points and
malformed RLEs (the checks of :mod:`restransfer.data.coco_checks`; training skips such annotations, and
keeps the first of duplicated ids, instead); results that are not
compressed RLE masks, with a non-finite score, or whose image or category ids the ground truth lacks
(:func:`~restransfer.data.coco_checks.check_ground_truth`, :func:`~restransfer.data.coco_checks.check_results`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from restransfer.boxes import xyxy_to_xywh
from restransfer.data.coco_checks import check_ground_truth, check_results, load_coco_json
from restransfer.data.json_io import read_json
from restransfer.errors import DataError
from restransfer.evaluation.metrics_file import write_json, write_metrics
from restransfer.rle import encode_masks

# the one metrics/results writer (strict JSON, NaN -> null), under this module's names too
write_json_atomic = write_json

__all__ = [
    "ENGINES",
    "SUMMARY_KEYS",
    "default_engine",
    "evaluate_coco",
    "evaluate_predictions",
    "load_results",
    "predictions_to_coco_results",
    "masks_to_rle",
    "format_metrics_table",
    "write_metrics",
    "write_json_atomic",
]

ENGINES = ("pycocotools", "faster_coco_eval")
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]
IOU_TYPES = ("bbox", "segm")

logger = logging.getLogger(__name__)

CocoLike = Union[COCO, str, os.PathLike, Mapping[str, Any]]


def default_engine() -> str:
    """``"faster_coco_eval"`` when importable, else ``"pycocotools"``."""
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "faster_coco_eval"


def _gt_dataset(coco_gt: CocoLike) -> Dict[str, Any]:
    """The ground-truth json as a dict (read and validated from a file, taken from a COCO, or given)."""
    if isinstance(getattr(coco_gt, "dataset", None), dict):  # pycocotools or faster_coco_eval COCO
        return coco_gt.dataset
    if isinstance(coco_gt, Mapping):
        return dict(coco_gt)
    path = Path(coco_gt)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    return load_coco_json(path).dataset


def load_results(results: Union[Sequence[Dict[str, Any]], str, os.PathLike]) -> List[Dict[str, Any]]:
    """A COCO results list, read from a json file (errors name it) or given."""
    if isinstance(results, (str, os.PathLike)):
        path = results
        results = read_json(path, "results file")
        if not isinstance(results, list):
            raise DataError(f"{path}: a COCO results file is a list of detections, got {type(results).__name__}")
    return list(results)


def _results_for(results: List[Dict[str, Any]], iou_type: str) -> List[Dict[str, Any]]:
    """Shallow copies of ``results`` as the COCO API should see them for ``iou_type``.

    ``loadRes`` writes ``id``/``area`` into the dicts, hence the copies. For masks the box is removed:
    with a box present, ``loadRes`` takes the box area as the instance area, which would put
    detections in the wrong small/medium/large range (detectron2 does the same).
    """
    if iou_type == "segm":
        return [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]


def _run_cocoeval(
    gt_data: Dict[str, Any],
    results: List[Dict[str, Any]],
    iou_type: str,
    engine: str,
    image_ids: Optional[Sequence[int]],
):
    """Evaluate and accumulate; returns ``(stats (12,), precision [T, R, K, A, M], cat_ids (K,))``."""
    if engine == "pycocotools":
        coco_cls, eval_cls = COCO, COCOeval
    elif engine == "faster_coco_eval":
        from faster_coco_eval import COCO as FCOCO  # noqa: N811
        from faster_coco_eval import COCOeval_faster

        coco_cls, eval_cls = FCOCO, COCOeval_faster
    else:
        raise ValueError(f"engine {engine!r}: choose one of {', '.join(ENGINES)} or auto")
    with contextlib.redirect_stdout(io.StringIO()):  # both engines print progress
        gt = coco_cls()
        # ``_prepare`` of both engines writes an "ignore" flag into the ground-truth dicts.
        gt.dataset = copy.copy(gt_data)
        gt.dataset["annotations"] = [dict(a) for a in gt_data.get("annotations", [])]
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:
            # loadRes cannot build an empty result set in pycocotools: make it by hand, so that
            # categories with ground truth score 0 as COCOeval defines it.
            dt = coco_cls()
            dt.dataset = {
                "images": list(gt_data["images"]),
                "categories": copy.deepcopy(gt_data["categories"]),
                "annotations": [],
            }
            dt.createIndex()
        ev = eval_cls(gt, dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12], dtype=np.float64), np.asarray(ev.eval["precision"]), list(ev.params.catIds)


def _percent(value: float) -> float:
    return float(value) * 100.0 if value >= 0 else math.nan


def evaluate_coco(
    coco_gt: CocoLike,
    results: Union[Sequence[Dict[str, Any]], str, os.PathLike],
    iou_types: Iterable[str] = ("bbox",),
    engine: str = "auto",
    image_ids: Optional[Sequence[int]] = None,
    *,
    allow_empty: bool = False,
    gt_name: Optional[str] = None,
    results_name: Optional[str] = None,
) -> Dict[str, Dict[str, Any]]:
    """COCO metrics of ``results`` against ``coco_gt``.

    Args:
        coco_gt: a pycocotools ``COCO``, a path to the annotation json, or its dict.
        results: COCO results (list of ``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}``
            and/or ``"segmentation"``: compressed RLE), or a path to such a json.
        iou_types: any of ``"bbox"``, ``"segm"``.
        engine: ``"pycocotools"``, ``"faster_coco_eval"`` or ``"auto"`` (see :func:`default_engine`).
        image_ids: evaluate on these images only (default: every image of ``coco_gt``).
        allow_empty: score an empty ``results`` (0 where there is ground truth) instead of raising.
        gt_name: names the ground truth in errors (default: its path, or "ground truth").
        results_name: names the results in errors (default: their path, or "results").

    Raises:
        DataError: broken ground truth or results (see the module docstring), naming the entry.

    Returns:
        ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl": float %, "per_category": {name: float %}}}``;
        NaN where pycocotools reports -1 (no ground truth to measure against).
    """
    engine = default_engine() if engine == "auto" else engine
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: choose one of {', '.join(ENGINES)} or auto")
    iou_types = list(iou_types)
    bad_type = next((t for t in iou_types if t not in IOU_TYPES), None)
    if bad_type is not None:
        raise ValueError(f"iou type {bad_type!r}: choose from {', '.join(IOU_TYPES)}")
    if gt_name is None:
        gt_name = str(coco_gt) if isinstance(coco_gt, (str, os.PathLike)) else "ground truth"
    if results_name is None:
        results_name = str(results) if isinstance(results, (str, os.PathLike)) else "results"
    gt_data = _gt_dataset(coco_gt)
    results = load_results(results)
    check_ground_truth(gt_data, gt_name, iou_types, image_ids)
    check_results(results, results_name, iou_types, gt_data, allow_empty)
    names = {c["id"]: str(c["name"]) for c in gt_data["categories"]}
    metrics: Dict[str, Dict[str, Any]] = {}
    for iou_type in iou_types:
        stats, precision, cat_ids = _run_cocoeval(gt_data, _results_for(results, iou_type), iou_type, engine, image_ids)
        out: Dict[str, Any] = {key: _percent(stats[i]) for i, key in enumerate(SUMMARY_KEYS)}
        per_category = {}
        for k, cat_id in enumerate(cat_ids):
            # All IoU thresholds and recalls, area "all", the largest maxDets (as detectron2).
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_category[names[cat_id]] = float(np.mean(p)) * 100.0 if p.size else math.nan
        out["per_category"] = per_category
        metrics[iou_type] = out
    return metrics


# ----------------------------------------------------------------------------- predictions -> results


def masks_to_rle(masks: Any, threshold: float = 0.5) -> List[Dict[str, Any]]:
    """Binarise mask probabilities and encode them as COCO compressed RLE.

    Args:
        masks: (N, 1, H, W) or (N, H, W) probabilities (torch tensor or numpy) at image size; also
            accepts binary masks.
        threshold: a pixel is in the mask when its probability is > ``threshold``.

    Returns:
        N dicts ``{"size": [H, W], "counts": str}`` (json-ready), encoded one mask at a time
        (:func:`restransfer.rle.encode_masks`); detectors' outputs are better encoded box by box
        before they reach full size (:func:`restransfer.models.postprocess.paste_masks_binary`).
    """
    return encode_masks(masks, threshold)


def predictions_to_coco_results(
    predictions: Iterable[Mapping[str, Any]], label_to_cat_id: Mapping[int, int]
) -> List[Dict[str, Any]]:
    """Per-image predictions -> the COCO results list.

    Args:
        predictions: dicts with ``image_id`` (int), ``boxes`` (N, 4) internal xyxy, ``scores`` (N,),
            ``labels`` (N,) in 1..K, optionally ``masks``: N COCO RLE dicts (see :func:`masks_to_rle`).
        label_to_cat_id: label -> category id of the annotation file.

    Returns:
        One dict per detection: ``image_id``, ``category_id`` (original id), ``bbox`` [x, y, w, h],
        ``score`` and, with masks, ``segmentation`` (RLE with ``counts`` as str).
    """
    out: List[Dict[str, Any]] = []
    for pred in predictions:
        boxes = xyxy_to_xywh(np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)).tolist()
        scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1).tolist()
        labels = np.asarray(pred["labels"]).reshape(-1).tolist()
        masks = pred.get("masks")
        if not len(boxes) == len(scores) == len(labels) or (masks is not None and len(masks) != len(boxes)):
            raise ValueError(
                f"prediction for image {pred['image_id']}: boxes, scores, labels and masks "
                f"must have one entry per detection"
            )
        image_id = int(pred["image_id"])
        for k, (box, score, label) in enumerate(zip(boxes, scores, labels)):
            try:
                cat_id = label_to_cat_id[int(label)]
            except KeyError:
                raise DataError(
                    f"prediction for image {image_id}: label {label} has no category id "
                    f"(labels run 1..{len(label_to_cat_id)}); model.num_classes must match the "
                    f"annotation file's categories"
                ) from None
            r = {"image_id": image_id, "category_id": int(cat_id), "bbox": box, "score": score}
            if masks is not None:
                rle = masks[k]
                counts = rle["counts"]
                r["segmentation"] = {
                    "size": [int(s) for s in rle["size"]],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
                }
            out.append(r)
    return out


# --------------------------------------------------------------------------------------- output


def _fmt(v: float, width: int) -> str:
    return f"{'nan' if math.isnan(v) else f'{v:.2f}':>{width}}"


def format_metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Human-readable tables (values rounded to 2 decimals) of :func:`evaluate_coco`'s output, as one string."""
    lines: List[str] = []
    for iou_type, m in metrics.items():
        lines.append(f"{iou_type} AP (%):")
        lines.append("".join(f"{k:>8}" for k in SUMMARY_KEYS))
        lines.append("".join(_fmt(m[k], 8) for k in SUMMARY_KEYS))
        per_cat = m.get("per_category") or {}
        if per_cat:
            width = max(8, max(len(n) for n in per_cat) + 1)
            cols = 3
            items = list(per_cat.items())
            lines.append(f"per-category {iou_type} AP (%):")
            lines.append(("".join(f"{'category':<{width}}{'AP':>8}  " for _ in range(min(cols, len(items))))).rstrip())
            for row in range(0, len(items), cols):
                cells = [f"{name:<{width}}{_fmt(ap, 8)}  " for name, ap in items[row : row + cols]]
                lines.append("".join(cells).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def evaluate_predictions(
    dataset: Any,
    predictions: Sequence[Mapping[str, Any]],
    *,
    iou_types: Optional[Sequence[str]] = None,
    engine: str = "auto",
    metrics_path: Optional[Union[str, os.PathLike]] = None,
    results_path: Optional[Union[str, os.PathLike]] = None,
) -> Dict[str, Dict[str, Any]]:
    """Evaluate a model's predictions on a :class:`~restransfer.data.coco.CocoDataset`.

    Converts ``predictions`` with the dataset's ``label_to_cat_id``, evaluates against
    ``dataset.coco`` on the dataset's images (those whose files were found; ``iou_types`` defaults
    to bbox, plus segm when predictions carry masks) and writes the COCO results json and the
    metrics json when paths are given.
    """
    results = predictions_to_coco_results(predictions, dataset.label_to_cat_id)
    if iou_types is None:
        iou_types = ("bbox", "segm") if any("masks" in p for p in predictions) else ("bbox",)
    if results_path is not None:
        write_json_atomic(results, results_path)
    if not results:
        logger.warning(
            "the model detected nothing on the %d test images; every metric with ground truth is 0",
            len(dataset.image_ids),
        )
    json_path = getattr(dataset, "json_path", None)
    metrics = evaluate_coco(
        dataset.coco,
        results,
        iou_types,
        engine=engine,
        image_ids=dataset.image_ids,
        allow_empty=True,
        gt_name=str(json_path) if json_path is not None else None,
    )
    if metrics_path is not None:
        write_metrics(metrics, metrics_path)
    return metrics
