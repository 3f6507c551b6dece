"""Detection plots: the error breakdown in cocoapi's stacked-area style, per-class precision-recall curves,
the confusion matrix (IoU >= 0.5, with a background row and column), per-class AP bars and the
localization error split. Every function returns the PNG bytes and writes them to ``path`` when given."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from pycocotools import mask as mask_utils

from ..fileio import atomic_write_text
from .coco_errors import AREAS, CURVES, ErrorAnalysis
from .figures import literal_text, plt, save_figure

__all__ = [
    "plot_error_breakdown",
    "write_error_plots",
    "plot_pr_curves",
    "coco_pr_curves",
    "confusion_matrix",
    "plot_confusion_matrix",
    "plot_class_ap",
    "plot_localization_errors",
    "safe_name",
    "unique_file_stems",
    "write_analysis",
]

PathLike = Optional[Union[str, os.PathLike]]

# the cocoapi colours: C75 and C50 white (here light greys, to tell them apart), Loc blue, Sim red, Oth green,
# BG purple, FN orange
_COLOURS = [
    (1.0, 1.0, 1.0),
    (0.9, 0.9, 0.9),
    (0.31, 0.51, 0.74),
    (0.75, 0.31, 0.30),
    (0.36, 0.90, 0.38),
    (0.50, 0.39, 0.64),
    (1.0, 0.6, 0.0),
]
# stems of the other files write_analysis puts beside the per-category plots
_OTHER_STEMS = ("overall", "pr_curves")


_MAX_STEM = 80  # characters of a category name kept in a file name (file systems allow 255 bytes)


def safe_name(name: str) -> str:
    """A file-name-safe form of a category name: letters, digits, ``_.-``, at most 80 characters, not
    starting with a dot. Different names can give the same form; :func:`unique_file_stems` tells them apart."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")[:_MAX_STEM] or "category"


def unique_file_stems(names: Sequence[str], reserved: Sequence[str] = ()) -> List[str]:
    """A distinct file-name-safe stem per name (:func:`safe_name`), also on case-insensitive file systems:
    names whose safe forms collide (``a/b`` and ``a?b``, ``Cat`` and ``cat``, or a name equal to one of
    ``reserved``) each get a suffix from a hash of the full name, so a stem never depends on the other names'
    order."""
    stems = [safe_name(n) for n in names]
    taken: Dict[str, int] = {}
    for stem in stems:
        taken[stem.lower()] = taken.get(stem.lower(), 0) + 1
    for stem in reserved:
        taken[stem.lower()] = taken.get(stem.lower(), 0) + 1
    out: List[str] = []
    used = {stem.lower() for stem in reserved}
    for name, stem in zip(names, stems):
        if taken[stem.lower()] > 1:
            stem = f"{stem}-{hashlib.sha1(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
        while stem.lower() in used:  # the same name twice, or a hashed stem equal to another name's
            stem += "_"
        used.add(stem.lower())
        out.append(stem)
    return out


@literal_text
def plot_error_breakdown(
    analysis: ErrorAnalysis, category: Optional[int] = None, path: PathLike = None, areas: Sequence[int] = (0, 1, 2, 3)
) -> bytes:
    """One panel per object size: the seven curves stacked, each band labelled ``[area] curve`` (area as a
    fraction, as cocoapi prints it); ``category`` None is the average over all categories."""
    title = "overall" if category is None else analysis.names[category]
    size = (5.0, 4.2) if len(areas) == 1 else (3.4 * len(areas), 3.2)
    fig, axes = plt.subplots(1, len(areas), figsize=size, squeeze=False)
    rs = analysis.recall_thresholds
    for ax, a in zip(axes[0], areas):
        curves = analysis.curves(category, a)
        values = analysis.areas(category, a)
        below = np.zeros_like(rs)
        for i, name in enumerate(CURVES):
            v = values[name]
            ax.plot(rs, curves[i], color="black", linewidth=0.5)
            ax.fill_between(
                rs, below, curves[i], color=_COLOURS[i], label=f"[{'n/a' if v is None else f'{v / 100:.3f}'}] {name}"
            )
            below = curves[i]
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("recall")
        ax.set_title(f"{analysis.iou_type}-{title}-{AREAS[a]}", fontsize=9)
        ax.legend(loc="lower left", fontsize=7)
    axes[0][0].set_ylabel("precision")
    fig.tight_layout()
    return save_figure(fig, path)


def write_error_plots(analysis: ErrorAnalysis, out_dir: Union[str, os.PathLike]) -> List[Path]:
    """``overall-<iou_type>.png`` and ``<category>-<iou_type>.png`` for every category, four sizes each; the
    category part is :func:`unique_file_stems`, so no two categories (nor a category named ``overall`` or
    ``pr_curves``, whose files :func:`write_analysis` writes beside them) share a file."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"overall-{analysis.iou_type}.png"]
    plot_error_breakdown(analysis, None, paths[0])
    for k, stem in enumerate(unique_file_stems(analysis.names, _OTHER_STEMS)):
        paths.append(out_dir / f"{stem}-{analysis.iou_type}.png")
        plot_error_breakdown(analysis, k, paths[-1])
    return paths


def coco_pr_curves(analysis: ErrorAnalysis, curve: str = "C50") -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """``(name, recall, precision)`` per category with ground truth, from the analysis' ``curve``."""
    i = CURVES.index(curve)
    rs = analysis.recall_thresholds
    valid = analysis.valid(0)
    return [(name, rs, analysis.precision[i, :, k, 0]) for k, name in enumerate(analysis.names) if valid[k]]


@literal_text
def plot_pr_curves(
    curves: Sequence[Tuple[str, np.ndarray, np.ndarray]], title: str, path: PathLike = None, max_legend: int = 20
) -> bytes:
    """One precision-recall line per class (``(name, recall, precision)``); the legend (with each curve's AP,
    the mean precision) lists at most ``max_legend`` classes, the best first."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    scored = sorted(((float(np.mean(p)) if len(p) else 0.0, n, r, p) for n, r, p in curves), key=lambda c: -c[0])
    cmap = plt.get_cmap("tab20" if len(scored) > 10 else "tab10")
    for j, (ap, name, r, p) in enumerate(scored):
        ax.plot(r, p, linewidth=1.2, color=cmap(j % cmap.N), label=f"{name} [{ap:.3f}]" if j < max_legend else None)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10)
    if scored:
        ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def confusion_matrix(
    gt_data: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    image_ids: Optional[Sequence[int]] = None,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
) -> Tuple[np.ndarray, List[str]]:
    """Counts ``(K + 1, K + 1)``: rows are the ground truth's categories then background, columns the
    detections' categories then background (missed objects).

    Detections scoring at least ``score_threshold`` are matched per image in score order, each to the unmatched
    object with the highest box IoU >= ``iou_threshold`` (an object of its own category first); an unmatched
    detection counts in the background row, an unmatched object in the background column. Crowd regions are
    left out.
    """
    cats = [c["id"] for c in gt_data["categories"]]
    names = [str(c["name"]) for c in gt_data["categories"]]
    index = {c: i for i, c in enumerate(cats)}
    k_n = len(cats)
    wanted = set(int(i) for i in image_ids) if image_ids is not None else {im["id"] for im in gt_data["images"]}
    gts: Dict[int, List[Mapping[str, Any]]] = {}
    for a in gt_data["annotations"]:
        if a["image_id"] in wanted and not a.get("iscrowd", 0):
            gts.setdefault(a["image_id"], []).append(a)
    dets: Dict[int, List[Mapping[str, Any]]] = {}
    for r in results:
        if r["image_id"] in wanted and r["score"] >= score_threshold:
            dets.setdefault(r["image_id"], []).append(r)
    matrix = np.zeros((k_n + 1, k_n + 1), dtype=np.int64)
    for img in wanted:
        g = gts.get(img, [])
        d = sorted(dets.get(img, []), key=lambda r: -r["score"])
        g_lab = np.array([index[a["category_id"]] for a in g], dtype=np.int64)
        taken = np.zeros(len(g), dtype=bool)
        ious = (
            np.asarray(mask_utils.iou([r["bbox"] for r in d], [a["bbox"] for a in g], [0] * len(g)))
            if d and g
            else np.zeros((len(d), len(g)))
        )
        for j, r in enumerate(d):
            label = index[r["category_id"]]
            cand = np.where(~taken & (ious[j] >= iou_threshold))[0] if len(g) else np.zeros(0, dtype=np.int64)
            same = cand[g_lab[cand] == label]
            pool = same if len(same) else cand
            if len(pool):
                best = pool[np.argmax(ious[j, pool])]
                taken[best] = True
                matrix[g_lab[best], label] += 1
            else:
                matrix[k_n, label] += 1
        for i in np.where(~taken)[0]:
            matrix[g_lab[i], k_n] += 1
    return matrix, names


@literal_text
def plot_confusion_matrix(
    matrix: np.ndarray, names: Sequence[str], path: PathLike = None, title: str = "confusion matrix (IoU >= 0.5)"
) -> bytes:
    """The matrix normalized by row (each ground-truth class sums to 1), counts written in the cells when it is
    small enough to read."""
    labels = list(names) + ["background"]
    rows = matrix.sum(1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    size = min(12.0, max(4.0, 0.45 * len(labels) + 2))  # beyond ~20 classes the names shrink instead
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(labels))
    fs = 8 if len(labels) <= 30 else 5
    ax.set_xticks(ticks, labels, rotation=90, fontsize=fs)
    ax.set_yticks(ticks, labels, fontsize=fs)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=10)
    if len(labels) <= 21:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(matrix[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.6 else "black",
                    )
    fig.tight_layout()
    return save_figure(fig, path)


@literal_text
def plot_class_ap(
    ap: Mapping[str, Optional[float]], path: PathLike = None, title: str = "AP per class (%)", max_labels: int = 60
) -> bytes:
    """Horizontal bars of per-class AP, sorted best first; classes without a value are left out. With more than
    ``max_labels`` classes only every n-th name is written."""
    items = sorted(((float(v), k) for k, v in ap.items() if v is not None and np.isfinite(v)), reverse=True)
    n = len(items)
    fig, ax = plt.subplots(figsize=(6, max(2.5, min(0.18 * n + 1, 30))))
    ax.barh(np.arange(n), [v for v, _ in items], color=(0.31, 0.51, 0.74))
    step = max(1, int(np.ceil(n / max_labels)))
    ax.set_yticks(np.arange(0, n, step), [items[i][1] for i in range(0, n, step)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP (%)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


@literal_text
def plot_localization_errors(
    split: Mapping[str, float], path: PathLike = None, title: str = "top-5 localization"
) -> bytes:
    """A stacked bar of the localization outcome in percent: ``correct``, ``wrong class`` (no guess names the
    ground-truth class) and ``right class, bad box`` (a guess names it, none localizes it at IoU >= 0.5)."""
    parts = [
        ("correct", (0.36, 0.80, 0.38)),
        ("wrong class", (0.75, 0.31, 0.30)),
        ("right class, bad box", (1.0, 0.6, 0.0)),
    ]
    fig, ax = plt.subplots(figsize=(6, 1.8))
    left = 0.0
    for name, colour in parts:
        v = float(split.get(name, 0.0))
        ax.barh([0], [v], left=left, color=colour, label=f"{name} {v:.1f}%")
        left += v
    ax.set_xlim(0, 100)
    ax.set_yticks([])
    ax.set_xlabel("% of images")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_analysis(
    out_dir: Union[str, os.PathLike],
    analysis: ErrorAnalysis,
    gt_data: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    image_ids: Optional[Sequence[int]] = None,
) -> List[Path]:
    """What ``tools/analyze_coco.py`` writes into ``out_dir``: ``analysis.json`` (the curves' areas in percent,
    :meth:`ErrorAnalysis.to_json`), the error breakdown PNGs (:func:`write_error_plots`), ``pr_curves-<iou
    type>.png`` (per class, IoU .5) and ``confusion_matrix.png``. Returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "analysis.json"]
    atomic_write_text(paths[0], json.dumps(analysis.to_json(), indent=2) + "\n")
    paths += write_error_plots(analysis, out_dir)
    paths.append(out_dir / f"pr_curves-{analysis.iou_type}.png")
    plot_pr_curves(coco_pr_curves(analysis), f"{analysis.iou_type} precision-recall per class (IoU 0.5)", paths[-1])
    paths.append(out_dir / "confusion_matrix.png")
    matrix, names = confusion_matrix(gt_data, results, image_ids)
    plot_confusion_matrix(matrix, names, paths[-1])
    return paths
