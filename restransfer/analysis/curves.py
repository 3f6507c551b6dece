"""Training curves from output folders: the loss terms, the learning rate and the periodic and final AP over
iterations (or images seen), several runs overlaid.

Each run is an ``output_dir`` of training: ``log.jsonl`` (one json object per logged iteration, plus the
``bbox/AP``-style records of the periodic evaluation) and, when the final evaluation ran, ``metrics.json``,
whose AP values appear as the last point of the AP panels. A resumed run appends to ``log.jsonl``; the last
record of an iteration wins.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.json_io import parse_json, read_json
from ..errors import ConfigError, DataError
from .figures import literal_text, plt, save_figure

__all__ = ["Run", "read_run", "available_keys", "default_keys", "smooth", "plot_runs"]

PathLike = Union[str, os.PathLike]
X_AXES = {"iteration": "iteration", "images": "images_seen"}
_NOT_PLOTTED = {"iteration", "images_seen", "time", "data_time"}


@dataclass
class Run:
    """One output folder: ``name``, ``series`` (key -> (iterations, images seen, values), sorted by iteration)
    and ``final`` (``"bbox/AP"``-style keys of ``metrics.json`` -> value at the last iteration)."""

    name: str
    path: Path
    series: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    final: Dict[str, Tuple[float, float, float]] = field(default_factory=dict)


def _final_metrics(path: Path, last_iter: float, last_images: float) -> Dict[str, Tuple[float, float, float]]:
    """``{"bbox/AP": (iteration, images, value), ...}`` from a COCO ``metrics.json``; other protocols'
    metrics (and a missing file) give nothing."""
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file():
        return {}
    metrics = read_json(metrics_path, "metrics file")
    out = {}
    for iou_type in ("bbox", "segm"):
        m = metrics.get(iou_type) if isinstance(metrics, dict) else None
        for key in ("AP", "AP50"):
            if isinstance(m, dict) and isinstance(m.get(key), (int, float)):
                out[f"{iou_type}/{key}"] = (last_iter, last_images, float(m[key]))
    return out


def read_run(output_dir: PathLike, name: Optional[str] = None) -> Run:
    """Read one training output folder.

    Raises:
        FileNotFoundError: the folder or its ``log.jsonl`` is missing.
        DataError: a line that is not UTF-8 text or not a json object with an ``iteration`` (named by file and
            line), or a log without any logged value.
    """
    path = Path(output_dir)
    log = path / "log.jsonl"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such output folder; give the output_dir of a training run")
    if not log.is_file():
        raise FileNotFoundError(
            f"{path} has no log.jsonl: give the output_dir of a training run (train_det.py "
            f"writes log.jsonl there from the first logged iteration)"
        )
    records: Dict[str, Dict[float, Tuple[float, float]]] = {}
    last_iter, last_images = 0.0, 0.0
    with open(log, "rb") as f:  # bytes: a damaged line is named by its number, not by a decoder's offset
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{log}: line {lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                    f"{e.start + 1}); the log is damaged: remove or repair that line"
                ) from None
            if not line.strip():
                continue
            rec = parse_json(line, log, line=lineno)
            if not isinstance(rec, dict) or not isinstance(rec.get("iteration"), (int, float)):
                raise DataError(f"{log}: line {lineno}: a log record is a json object with an 'iteration'")
            it = float(rec["iteration"])
            images = float(rec.get("images_seen", math.nan))
            if it >= last_iter:
                last_iter, last_images = it, images
            for key, value in rec.items():
                if key not in _NOT_PLOTTED and isinstance(value, (int, float)) and not isinstance(value, bool):
                    records.setdefault(key, {})[it] = (images, float(value))
    if not records:
        raise DataError(f"{log}: no logged values; the run has not reached its first logged iteration")
    run = Run(name or path.resolve().name, path)
    for key, by_iter in records.items():
        its = np.array(sorted(by_iter), dtype=np.float64)
        run.series[key] = (its, np.array([by_iter[i][0] for i in its]), np.array([by_iter[i][1] for i in its]))
    run.final = _final_metrics(path, last_iter, last_images)
    return run


def available_keys(runs: Sequence[Run]) -> List[str]:
    """Every key some run can plot: its logged values and its final metrics."""
    keys: List[str] = []
    for run in runs:
        for key in list(run.series) + list(run.final):
            if key not in keys:
                keys.append(key)
    return keys


def default_keys(runs: Sequence[Run]) -> List[str]:
    """The loss terms (``total_loss`` first), ``lr`` and the AP keys."""
    keys = available_keys(runs)
    losses = sorted((k for k in keys if "loss" in k), key=lambda k: (k != "total_loss", k))
    aps = sorted(k for k in keys if "/AP" in k)
    return losses + (["lr"] if "lr" in keys else []) + aps


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points (fewer at the ends), so the curve does not lag."""
    if window <= 1 or len(values) < 2:
        return values.astype(np.float64)
    c = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    idx = np.arange(len(values))
    lo = np.maximum(idx - window // 2, 0)
    hi = np.minimum(idx + (window - 1) // 2 + 1, len(values))
    return (c[hi] - c[lo]) / (hi - lo)


def _unique_names(paths: Sequence[Path]) -> List[str]:
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]
    return names


@literal_text
def plot_runs(
    output_dirs: Sequence[PathLike],
    output: PathLike,
    *,
    keys: Optional[Sequence[str]] = None,
    x: str = "iteration",
    window: int = 5,
) -> Dict[str, Dict[str, int]]:
    """Plot ``keys`` (default :func:`default_keys`) of every run into one PNG, a panel per key.

    Loss curves are drawn smoothed (``window`` logged points) with the raw values faint behind (the learning
    rate as logged); AP panels
    show the periodic evaluations and, as a star, the final ``metrics.json``. ``x`` is ``iteration`` or
    ``images`` (images seen). Returns ``{key: {run name: points drawn}}``.

    Raises:
        ConfigError: an unknown key (the message lists the available ones) or x axis.
    """
    if x not in X_AXES:
        raise ConfigError(f"x axis {x!r}: choose one of {', '.join(X_AXES)}")
    paths = [Path(p) for p in output_dirs]
    if not paths:
        raise ConfigError("give at least one output folder")
    runs = [read_run(p, n) for p, n in zip(paths, _unique_names(paths))]
    have = available_keys(runs)
    keys = list(keys) if keys else default_keys(runs)
    unknown = [k for k in keys if k not in have]
    if unknown:
        raise ConfigError(f"key {unknown[0]!r} is in no run's log.jsonl or metrics.json; available: {', '.join(have)}")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    drawn: Dict[str, Dict[str, int]] = {k: {} for k in keys}
    xi = 0 if x == "iteration" else 1
    right = max(
        [float(np.nanmax(v[xi])) for run in runs for v in run.series.values() if np.isfinite(v[xi]).any()]
        + [f[xi] for run in runs for f in run.final.values() if np.isfinite(f[xi])]
        + [1.0]
    )
    for ax, key in zip(axes.flat, keys):
        for r, run in enumerate(runs):
            colour = colours(r % 10)
            n = 0
            if key in run.series:
                xs, vals = run.series[key][xi], run.series[key][2]
                if "/AP" in key:
                    ax.plot(xs, vals, "o-", color=colour, markersize=3, label=run.name)
                elif "loss" not in key:  # the learning rate and other exact values: no smoothing
                    ax.plot(xs, vals, color=colour, linewidth=1.5, label=run.name)
                else:
                    ax.plot(xs, vals, color=colour, alpha=0.25, linewidth=0.8)
                    ax.plot(xs, smooth(vals, window), color=colour, linewidth=1.5, label=run.name)
                n += len(vals)
            if key in run.final:
                fx = run.final[key][xi]
                ax.plot(
                    [fx],
                    [run.final[key][2]],
                    "*",
                    color=colour,
                    markersize=10,
                    label=None if n else f"{run.name} (final)",
                )
                n += 1
            if n:
                drawn[key][run.name] = n
        ax.set_title(key, fontsize=10)
        ax.set_xlim(0, right * 1.03)
        ax.set_xlabel("images seen" if x == "images" else "iteration")
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        elif "loss" in key and all(np.all(run.series[key][2] > 0) for run in runs if key in run.series):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.tight_layout()
    save_figure(fig, output, dpi=90)
    return drawn
