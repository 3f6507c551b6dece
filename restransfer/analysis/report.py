"""``report.html``: one self-contained page next to ``metrics.json`` after every evaluation.

It holds the metrics tables, a per-category table (click a heading to sort), the plots of
:mod:`.detection_plots` and a gallery of predictions (:mod:`.gallery`), all images embedded as base64 data
URIs: the file opens from disk in any browser, no server or neighbouring files needed.

* :func:`write_coco_report`: COCO protocol (training's final evaluation, ``tools/eval_coco.py``);
* :func:`write_det_report`: ImageNet-DET (``tools/eval_imagenet_det.py``);
* :func:`write_loc_report`: ImageNet localization (``tools/eval_imagenet_loc.py``).

Each takes the ground truth and detections as COCO data; with ``image_root`` (the test images) the gallery
is drawn, without it left out. :func:`report_images` lists the images a report embeds.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..fileio import atomic_write_text
from .coco_errors import CURVES, ErrorAnalysis, analyze_coco_errors
from .detection_plots import (
    coco_pr_curves,
    confusion_matrix,
    plot_class_ap,
    plot_confusion_matrix,
    plot_error_breakdown,
    plot_localization_errors,
    plot_pr_curves,
)
from .gallery import draw_gallery, select_examples

__all__ = [
    "write_coco_report",
    "write_det_report",
    "write_loc_report",
    "localization_error_split",
    "report_images",
    "render_report",
]

PathLike = Union[str, os.PathLike]
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# pycocotools' per-image matching (which the breakdown and the gallery need) is far slower than the evaluation
# engine; larger sets are analysed on this many evenly spaced images
MAX_ANALYSED_IMAGES = 500

_STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}table.sortable th{cursor:pointer}
.plots img{max-width:100%;margin:6px 12px 6px 0;vertical-align:top}.note{color:#666;font-size:13px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{margin:0;width:260px;font-size:12px}
.gallery img{width:256px;border:1px solid #bbb}"""

_SORT_JS = """document.querySelectorAll('table.sortable th').forEach(function(th){
th.addEventListener('click',function(){
var t=th.closest('table'),b=t.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th),
asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';var rows=Array.prototype.slice.call(b.rows);
rows.sort(function(x,y){var p=x.cells[i].textContent,q=y.cells[i].textContent,a=parseFloat(p),c=parseFloat(q);
if(isNaN(a)&&isNaN(c))return asc?p.localeCompare(q):q.localeCompare(p);if(isNaN(a))return 1;if(isNaN(c))return -1;
return asc?a-c:c-a;});rows.forEach(function(r){b.appendChild(r);});});});"""


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.2f}"
    return html.escape(str(v))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], sortable: bool = False) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}">'


def render_report(title: str, sections: Sequence[Tuple[str, str]], subtitle: str = "") -> str:
    """The page: ``sections`` are ``(heading, html body)``."""
    parts = [
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(subtitle)}</p>' if subtitle else "",
    ]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append(f"<script>{_SORT_JS}</script></body></html>\n")
    return "".join(parts)


def _write(path: PathLike, text: str) -> Path:
    path = Path(path)
    atomic_write_text(path, text)
    return path


def report_images(path: PathLike) -> List[Tuple[str, bytes]]:
    """``(mime type, decoded bytes)`` of every image a report embeds; an image referenced by another kind of
    address (a file, a URL) raises ValueError, so a report that passes is complete by itself."""
    text = Path(path).read_text(encoding="utf-8")
    out = []
    for src in re.findall(r'<img[^>]*\ssrc="([^"]*)"', text):
        m = re.fullmatch(r"data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)", src)
        if m is None:
            raise ValueError(f"{path}: image {src[:80]!r} is not embedded")
        out.append((m.group(1), base64.b64decode(m.group(2), validate=True)))
    return out


def _gallery(analysis: ErrorAnalysis, gt_data: Mapping[str, Any], image_root: Optional[PathLike]) -> str:
    if image_root is None:
        return '<p class="note">No gallery: the test images were not given.</p>'
    items = draw_gallery(analysis, select_examples(analysis), gt_data["images"], image_root)
    if not items:
        return '<p class="note">No examples to show.</p>'
    figs = "".join(
        f"<figure>{_img(it.jpeg, it.caption, 'image/jpeg')}<figcaption>{html.escape(it.caption)}</figcaption></figure>"
        for it in items
    )
    return (
        '<p class="note">White: ground truth of the class; coloured: detections (IoU 0.5 matches of the '
        f'COCO evaluation).</p><div class="gallery">{figs}</div>'
    )


def _plots(images: Sequence[Tuple[bytes, str]]) -> str:
    return '<div class="plots">' + "".join(_img(data, alt) for data, alt in images) + "</div>"


def _subtitle(metrics_path: Path) -> str:
    return f"{metrics_path.parent} - {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _counts(
    gt_data: Mapping[str, Any], results: Sequence[Mapping[str, Any]], image_ids: Optional[Iterable[int]]
) -> Tuple[Dict, Dict]:
    wanted = set(int(i) for i in image_ids) if image_ids is not None else None
    n_gt: Dict[int, int] = {}
    n_dt: Dict[int, int] = {}
    for a in gt_data["annotations"]:
        if (wanted is None or a["image_id"] in wanted) and not a.get("iscrowd", 0):
            n_gt[a["category_id"]] = n_gt.get(a["category_id"], 0) + 1
    for r in results:
        n_dt[r["category_id"]] = n_dt.get(r["category_id"], 0) + 1
    return n_gt, n_dt


def _sample(
    gt_data: Mapping[str, Any], results: Sequence[Mapping[str, Any]], image_ids: Optional[Iterable[int]]
) -> Tuple[List[int], List[Mapping[str, Any]], str]:
    """At most :data:`MAX_ANALYSED_IMAGES` evenly spaced images of the set, their detections and a note saying
    so (empty when the set is small enough to analyse whole)."""
    ids = sorted(int(i) for i in (image_ids if image_ids is not None else [im["id"] for im in gt_data["images"]]))
    if len(ids) <= MAX_ANALYSED_IMAGES:
        return ids, list(results), ""
    step = len(ids) / MAX_ANALYSED_IMAGES
    kept = [ids[int(i * step)] for i in range(MAX_ANALYSED_IMAGES)]
    keep = set(kept)
    note = (
        f'<p class="note">The curves, the breakdown and the gallery cover {len(kept)} evenly spaced images of '
        f"the {len(ids)} evaluated, to keep the report cheap; the metrics and the per-category AP cover all of "
        f"them, and tools/analyze_coco.py analyses the whole set.</p>"
    )
    return kept, [r for r in results if r["image_id"] in keep], note


def _detection_sections(
    gt_data: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    image_ids: Optional[Iterable[int]],
    image_root: Optional[PathLike],
    iou_types: Sequence[str],
    breakdown: bool,
) -> Tuple[List[Tuple[str, str]], Dict[str, ErrorAnalysis], str]:
    """Error breakdown, PR curves, confusion matrix and gallery; the analyses by iou type; the sampling note."""
    sampled_ids, sampled, note = _sample(gt_data, results, image_ids)
    if not sampled:
        return [("Analysis", '<p class="note">The model detected nothing: no curves or examples.</p>')], {}, ""
    # the full breakdown (three evaluations) for the first iou type only, to keep the report cheap;
    # tools/analyze_coco.py draws it for masks
    analyses = {
        t: analyze_coco_errors(
            gt_data, sampled, t, image_ids=sampled_ids, sizes=False, breakdown=breakdown and t == iou_types[0]
        )
        for t in iou_types
    }
    plots = []
    for t, a in analyses.items():
        if breakdown and t == iou_types[0]:
            plots.append((plot_error_breakdown(a, None, areas=(0,)), f"error breakdown {t}"))
        plots.append(
            (plot_pr_curves(coco_pr_curves(a), f"{t} precision-recall per class (IoU 0.5)"), f"precision-recall {t}")
        )
    matrix, names = confusion_matrix(gt_data, results, image_ids)
    plots.append((plot_confusion_matrix(matrix, names), "confusion matrix"))
    legend = (
        (
            '<p class="note">Error breakdown as cocoapi\'s analyze(): C75/C50 = PR at IoU .75/.5, Loc = IoU .1, '
            "Sim = similar-class confusions removed, Oth = all class confusions removed, BG = background false "
            "positives removed, FN = every error removed; [area] in the legend.</p>"
        )
        if breakdown
        else ""
    )
    first = analyses[iou_types[0]]
    return (
        [("Plots", note + legend + _plots(plots)), ("Gallery", _gallery(first, gt_data, image_root))],
        analyses,
        note,
    )


def write_coco_report(
    metrics_path: PathLike,
    metrics: Mapping[str, Mapping[str, Any]],
    gt_data: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    image_root: Optional[PathLike] = None,
    image_ids: Optional[Sequence[int]] = None,
    title: str = "COCO evaluation",
) -> Path:
    """``report.html`` beside ``metrics_path`` for :func:`restransfer.evaluation.coco.evaluate_coco`'s ``metrics``
    of ``results`` (COCO results list) on ``gt_data`` (the annotation json's dict)."""
    metrics_path = Path(metrics_path)
    iou_types = [t for t in ("bbox", "segm") if t in metrics]
    summary = _table(["iou type"] + list(COCO_KEYS), [[t] + [metrics[t].get(k) for k in COCO_KEYS] for t in iou_types])
    plots, analyses, sampled = _detection_sections(gt_data, results, image_ids, image_root, iou_types, breakdown=True)
    n_gt, n_dt = _counts(gt_data, results, image_ids)
    headers = ["category", "objects", "detections"] + [f"{t} AP" for t in iou_types]
    a = analyses.get(iou_types[0]) if iou_types else None
    if a is not None:
        headers += [f"{iou_types[0]} {c}" for c in CURVES[:-1]]
    rows = []
    for k, cat in enumerate(gt_data["categories"]):
        row = [cat["name"], n_gt.get(cat["id"], 0), n_dt.get(cat["id"], 0)]
        row += [metrics[t].get("per_category", {}).get(str(cat["name"])) for t in iou_types]
        if a is not None:
            areas = a.areas(a.cat_ids.index(cat["id"]))
            row += [areas[c] for c in CURVES[:-1]]
        rows.append(row)
    sections = [
        ("Metrics (%)", summary),
        ("Per category (%; click a heading to sort)", sampled + _table(headers, rows, True)),
    ]
    html_text = render_report(title, sections + plots, _subtitle(metrics_path))
    return _write(metrics_path.with_name("report.html"), html_text)


def write_det_report(
    metrics_path: PathLike,
    metrics: Mapping[str, Any],
    class_names: Mapping[str, str],
    curves: Sequence[Tuple[str, np.ndarray, np.ndarray]],
    num_pos: Mapping[str, int],
    gt_data: Optional[Mapping[str, Any]] = None,
    results: Sequence[Mapping[str, Any]] = (),
    *,
    image_root: Optional[PathLike] = None,
    image_ids: Optional[Sequence[int]] = None,
    title: str = "ImageNet-DET evaluation",
    summary: Optional[Mapping[str, Any]] = None,
    key_header: Optional[str] = "wnid",
) -> Path:
    """``report.html`` for a devkit protocol's ``metrics`` (ImageNet-DET's ``{"mAP", "AP": {wnid: AP}, "coco":
    {...}}``, PASCAL VOC's): ``class_names`` maps the class keys of ``AP`` (``key_header``: WNIDs) to names,
    ``curves`` are the devkit's ``(key, recall, precision)`` per class, ``num_pos`` the positives per key (None
    ``key_header``: the keys are the class names, no column of their own);
    ``gt_data``/``results`` the same set as COCO data for the confusion matrix and the gallery (left out
    without ``gt_data``, as when evaluating devkit files). ``summary``: the metrics table's columns (default
    the devkit mAP and the ``coco`` numbers)."""
    metrics_path = Path(metrics_path)
    coco = metrics.get("coco") or {}
    if summary is None:
        summary = {"mAP (devkit)": metrics.get("mAP"), **{f"COCO {k}": v for k, v in coco.items()}}
    summary_table = _table(list(summary), [list(summary.values())])
    ap = metrics.get("AP", {})
    rows = [[w, class_names.get(w, w), num_pos.get(w, 0), v][key_header is None :] for w, v in ap.items()]
    named_ap = {f"{class_names.get(w, w)}": v for w, v in ap.items()}
    plots = [
        (plot_class_ap(named_ap), "AP per class"),
        (
            plot_pr_curves(
                [(class_names.get(w, w), r, p) for w, r, p in curves], "precision-recall per class (devkit)"
            ),
            "precision-recall",
        ),
    ]
    more = (
        _detection_sections(gt_data, results, image_ids, image_root, ["bbox"], breakdown=False)[0]
        if gt_data is not None
        else []
    )
    sections = [
        ("Metrics (%)", summary_table),
        (
            "Per class (%; click a heading to sort)",
            _table([key_header, "class", "positives", "AP"][key_header is None :], rows, True),
        ),
        ("AP and precision-recall", _plots(plots)),
    ] + more
    return _write(metrics_path.with_name("report.html"), render_report(title, sections, _subtitle(metrics_path)))


def localization_error_split(
    cls_rank: np.ndarray, loc_rank: np.ndarray, labels: np.ndarray, counted: np.ndarray, k: int = 5
) -> Dict[str, float]:
    """Percent of the counted images (each image's ground-truth classes share it equally) whose first ``k``
    guesses localize the class (``correct``), never name it (``wrong class``) or name it without a box at IoU
    >= 0.5 (``right class, bad box``); the last two add up to the top-``k`` localization error.

    Args:
        cls_rank, loc_rank: (N, L) of :func:`restransfer.evaluation.imagenet_loc.first_correct_guess`.
        labels: (N, L) ground-truth labels, 0 for padding.
        counted: (N,) bool, False for blacklisted images.
    """
    valid = labels > 0
    per_image = np.maximum(valid.sum(1), 1)
    denom = max(int(counted.sum()), 1)

    def share(mask: np.ndarray) -> float:
        return 100.0 * float(((mask & valid).sum(1) / per_image)[counted].sum()) / denom

    return {
        "correct": share(loc_rank < k),
        "wrong class": share(cls_rank >= k),
        "right class, bad box": share((cls_rank < k) & (loc_rank >= k)),
    }


def write_loc_report(
    metrics_path: PathLike,
    metrics: Mapping[str, Any],
    split: Mapping[str, float],
    gt_data: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    image_root: Optional[PathLike] = None,
    image_ids: Optional[Sequence[int]] = None,
) -> Path:
    """``report.html`` for the localization ``metrics`` with the error ``split`` of
    :func:`localization_error_split`; ``gt_data``/``results`` (the detector's boxes as COCO data) feed the
    gallery."""
    metrics_path = Path(metrics_path)
    keys = [
        k
        for k in ("top5_loc_error", "top1_loc_error", "top5_cls_error", "top1_cls_error", "gt_class_loc_error")
        if k in metrics
    ]
    summary = _table(keys, [[metrics[k] for k in keys]])
    sections = [
        ("Metrics (%)", summary),
        (
            "Localization errors (% of images, top-5 guesses)",
            _table(list(split), [list(split.values())])
            + _plots([(plot_localization_errors(split), "localization errors")]),
        ),
    ]
    sampled_ids, sampled, note = _sample(gt_data, results, image_ids) if results else ([], [], "")
    if sampled:
        analysis = analyze_coco_errors(gt_data, sampled, "bbox", image_ids=sampled_ids, breakdown=False, sizes=False)
        sections.append(("Detector gallery", note + _gallery(analysis, gt_data, image_root)))
    return _write(
        metrics_path.with_name("report.html"),
        render_report("ImageNet localization evaluation", sections, _subtitle(metrics_path)),
    )
