"""The plain-versus-residual study of He et al. (2015), figures 1, 4 and 6: train several networks on the same
data and draw their training error (thin) and test error (bold) against iterations, plain nets and residual
nets side by side.

:func:`plan_runs` turns configs (each run as it is, or crossed with ``depths`` into a plain and a residual
net per depth) into named runs; :func:`run_study` trains them one after the other with
:func:`~restransfer.classification.train.train_classifier` into ``output/<name>/`` (a finished run is not
trained again), reads their ``log.jsonl`` curves and writes ``output/degradation.png``,
``output/curves.json`` and ``output/table.md`` (final training and test errors).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from ..analysis.curves import read_run
from ..analysis.figures import save_figure
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text
from .config import load_cls_config
from .train import train_classifier

logger = logging.getLogger(__name__)

__all__ = ["StudyRun", "plan_runs", "read_curves", "draw_figure", "format_table", "run_study"]


@dataclass
class StudyRun:
    name: str  # e.g. "plain-20", "resnet-56"
    cfg: object  # the loaded classification config, output_dir set to output/<name>


def _run_name(residual: bool, depth: int) -> str:
    return f"{'resnet' if residual else 'plain'}-{depth}"


def plan_runs(
    configs: Sequence[os.PathLike | str],
    output: os.PathLike | str,
    *,
    depths: Sequence[int] = (),
    overrides: Sequence[str] = (),
) -> List[StudyRun]:
    """The runs of a study: every config as it is, or with ``depths`` every config at each depth as a plain
    and a residual net. ``overrides`` (``key=value``) apply to all. Names must differ (``plain-20``, ...)."""
    runs: List[StudyRun] = []
    for path in configs:
        variants = [[f"model.depth={d}", f"model.residual={r}"] for d in depths for r in ("false", "true")] or [[]]
        for extra in variants:
            model = load_cls_config(path, list(overrides) + extra).model
            name = _run_name(model.residual, model.depth)
            if any(r.name == name for r in runs):
                raise ConfigError(f"{path}: a second {name} network in the study; give each depth and kind once")
            # the run's folder is one more override (a JSON string is a YAML one): the loaded config is not edited
            folder = f"output_dir={json.dumps(str(Path(output) / name))}"
            runs.append(StudyRun(name, load_cls_config(path, list(overrides) + extra + [folder])))
    if not runs:
        raise ConfigError("no networks to train: give at least one config")
    return runs


def read_curves(output_dir: os.PathLike | str) -> Dict[str, List[float]]:
    """``{"iteration", "train_error", "test_iteration", "test_error"}`` from a run's ``log.jsonl`` (train: the
    top-1 error in percent on the augmented batches of each logging window; test: center-crop top-1 error)."""
    series = read_run(output_dir).series
    if "train_error" not in series:
        raise DataError(f"{Path(output_dir) / 'log.jsonl'}: no train_error records; was this written by train_cls?")
    train_its, _, train = series["train_error"]
    test_its, _, test = series.get("test/top1_error", ((), (), ()))
    return {
        "iteration": [int(i) for i in train_its],
        "train_error": [float(v) for v in train],
        "test_iteration": [int(i) for i in test_its],
        "test_error": [float(v) for v in test],
    }


def draw_figure(curves: Dict[str, Dict[str, List[float]]], path: os.PathLike | str, title: str = "") -> None:
    """The paper's figure: plain nets (left) and residual nets (right), one colour per depth, training error
    thin and dashed, test error bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    depths = sorted({int(n.split("-")[1]) for n in curves})
    colours = dict(zip(depths, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    for ax, kind, label in ((axes[0], "plain", "plain"), (axes[1], "resnet", "ResNet")):
        for name in sorted((n for n in curves if n.startswith(kind + "-")), key=lambda n: int(n.split("-")[1])):
            c, d = curves[name], int(name.split("-")[1])
            ax.plot(c["iteration"], c["train_error"], "--", lw=1, color=colours[d])
            ax.plot(c["test_iteration"], c["test_error"], "-", lw=2.5, color=colours[d], label=f"{label}-{d}")
        ax.set_xlabel("iterations")
        ax.set_title(f"{label} nets (dashed: training error, bold: test error)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("top-1 error (%)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def format_table(curves: Dict[str, Dict[str, List[float]]], last: int = 3) -> str:
    """Markdown table of final errors: training error as the mean of the ``last`` logged windows, test error
    of the last evaluation."""
    rows = ["| network | final training error (%) | final test error (%) |", "| --- | ---: | ---: |"]
    for name in sorted(curves, key=lambda n: (n.split("-")[0], int(n.split("-")[1]))):
        c = curves[name]
        tail = c["train_error"][-last:]
        test = f"{c['test_error'][-1]:.2f}" if c["test_error"] else "n/a"
        rows.append(f"| {name} | {sum(tail) / len(tail):.2f} | {test} |")
    return "\n".join(rows) + "\n"


def run_study(runs: Sequence[StudyRun], output: os.PathLike | str, *, title: str = "") -> Dict[str, dict]:
    """Train every run (skipping those whose ``model_final.pth`` exists), then write the figure, the curves
    and the table into ``output``; returns the curves by run name."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        if (Path(run.cfg.output_dir) / "model_final.pth").is_file():
            logger.info("%s: already trained in %s", run.name, run.cfg.output_dir)
            continue
        logger.info("training %s into %s", run.name, run.cfg.output_dir)
        train_classifier(run.cfg, resume=True)
    curves = {run.name: read_curves(run.cfg.output_dir) for run in runs}
    draw_figure(curves, out / "degradation.png", title)
    atomic_write_text(out / "curves.json", json.dumps(curves, indent=1) + "\n")
    table = format_table(curves)
    atomic_write_text(out / "table.md", table)
    logger.info("figure %s\n%s", out / "degradation.png", table)
    return curves
