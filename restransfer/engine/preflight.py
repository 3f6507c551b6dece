"""The pre-flight check: everything a training run needs, checked before its first iteration.

A run that trains for days and then finds its test set missing, its ground truth broken, its categories
in another order than the training set's, or its output folder full has wasted those days. The trainers
call :func:`check_detection_run` or :func:`check_classification_run` once the model is built (so
``model.weights`` and ``model.backbone.weights`` have been read and fitted by the build) and before the
first iteration. Short of running the model on the test set, it

* builds the test dataset with the checks evaluation applies (COCO json parsed and validated, ground truth
  checked as the COCO evaluator checks it, ``image_root`` present and holding the json's images; for
  classification the layout's reader with the training classes),
* decodes a sample of test images spread over the set (never all of them),
* requires the test categories to be the training set's (same names, same order),
* resolves the evaluator and when it runs,
* writes and removes a probe file in ``output_dir`` and checks that the disk there has room for a
  checkpoint of this model.

Any problem is raised as the toolkit's input error naming the key and the file (``error: ...`` from the
tools). Under torch.distributed the main process checks and every process raises the same error. On
success one line is logged::

    pre-flight: test set val.json: 200 images, 3 classes (circle, triangle, square), evaluator coco (bbox, segm)
    at the end (metrics.json, report.html); output_dir has 40.2 GB free (checkpoint ~90 MB); no pretrained
    weights; 0.4 s

:func:`log_dataset_entries` logs the dataset entries as the config resolved them, and
:func:`resume_config_changes` / :func:`write_run_config` handle ``--resume`` with settings that differ from
the checkpoint's: the differing keys are logged (and recorded in ``log.jsonl`` by
:meth:`PreflightReport.record`), ``config.yaml`` keeps the run's original config and
``config.resumed-<iteration>.yaml`` holds the new one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..data.build import build_test_dataset
from ..data.coco_checks import check_ground_truth
from ..data.image_io import read_image
from ..distributed import all_gather_object, is_main_process
from ..errors import DataError, InputError
from ..evaluation import evaluator as registry
from ..fileio import atomic_write_bytes, atomic_write_text
from ..yaml_config import dump_config

logger = logging.getLogger(__name__)

__all__ = [
    "PreflightReport",
    "check_detection_run",
    "check_classification_run",
    "log_dataset_entries",
    "resume_config_changes",
    "write_run_config",
    "free_bytes",
    "SAMPLE_IMAGES",
]

SAMPLE_IMAGES = 8  # test images decoded by the check, spread over the set
# A checkpoint holds the weights and SGD's momentum (one more copy); the atomic write needs the file's size
# again for its temporary beside the previous checkpoint: free space for 3x the model's state is asked.
_CHECKPOINT_COPIES = 2
_NEEDED_COPIES = 3
_PROBE = ".preflight-probe"
# settings that live in the optimizer's param groups and the scheduler's base_lrs, which a resume restores
_RESTORED_WITH_OPTIMIZER = (
    "solver.base_lr",
    "solver.momentum",
    "solver.weight_decay",
    "solver.weight_decay_norm",
    "solver.weight_decay_bias",
)


@dataclass
class PreflightReport:
    """What the pre-flight found (on the main process; other processes get an empty report).

    ``test_set`` is classification's built test set, which its trainer keeps for the evaluations (a detection
    test set is not kept: its evaluations build their own, on every process)."""

    test_name: Optional[str] = None
    num_test_images: int = 0
    class_names: List[str] = field(default_factory=list)
    evaluator: str = ""
    schedule: str = ""
    outputs: str = ""
    output_dir: str = ""
    free_bytes: int = 0
    checkpoint_bytes: int = 0
    weights: str = ""
    seconds: float = 0.0
    resumed_from: Optional[str] = None
    config_changes: Dict[str, Tuple[Any, Any]] = field(default_factory=dict)
    test_set: Any = None

    def summary(self) -> str:
        """The one-line summary logged at the start of training."""
        if self.test_name is None:
            test = "no test set (data.test is not set): nothing is evaluated"
        else:
            test = (
                f"test set {self.test_name}: {self.num_test_images} images, {len(self.class_names)} classes "
                f"({_shown(self.class_names)}), evaluator {self.evaluator} {self.schedule} ({self.outputs})"
            )
        return (
            f"pre-flight: {test}; output_dir has {_size(self.free_bytes)} free (checkpoint "
            f"~{_size(self.checkpoint_bytes)}); {self.weights}; {self.seconds:.1f} s"
        )

    def record(self, writer: Any, iteration: int) -> None:
        """Record a resume's config changes in ``log.jsonl`` through the run's ``MetricsWriter`` (nothing
        when the run is not resumed with changed settings)."""
        if self.config_changes:
            writer.write(
                iteration,
                {
                    "resumed_from": self.resumed_from,
                    "config_changes": {
                        k: {"checkpoint": old, "now": new} for k, (old, new) in self.config_changes.items()
                    },
                },
            )


# ------------------------------------------------------------------------------------------- entry points


def check_detection_run(
    cfg: DictConfig, model: nn.Module, class_names: Sequence[str], found: Optional[Tuple[Path, Dict[str, Any]]] = None
) -> PreflightReport:
    """Check a detection training run before its first iteration (see the module docstring).

    Args:
        cfg: the run's config.
        model: the built detector (its weights loaded), for the checkpoint size.
        class_names: the training set's class names (labels 1..K).
        found: ``(path, state)`` of the checkpoint the run resumes from (``start_run``), or None.

    Raises:
        DataError, ConfigError, OSError: the first problem found, on every process.
    """
    check_test_set = None
    if cfg.data.test is not None:
        check_test_set = functools.partial(
            _detection_test_set,
            lambda: build_test_dataset(cfg),
            class_names,
            iou_types=("bbox", "segm") if cfg.model.arch == "mask_rcnn" else ("bbox",),
            data_format=cfg.data.test.format,
            evaluator=OmegaConf.select(cfg, "test.evaluator", default=None),
            eval_period=cfg.test.eval_period,
            max_iter=cfg.solver.max_iter,
            report_mode=OmegaConf.select(cfg, "test.report", default="final"),
        )
    return _run(model, class_names, found, check_test_set, cfg, cfg.model.backbone.weights)


def check_classification_run(
    cfg: DictConfig,
    net: nn.Module,
    class_names: Sequence[str],
    found: Optional[Tuple[Path, Dict[str, Any]]],
    build_test_set: Callable[[], Any],
) -> PreflightReport:
    """Check a classification training run before its first iteration; ``report.test_set`` is the built test
    set (main process; None elsewhere or without ``data.test``).

    ``build_test_set()`` builds ``data.test`` with the training classes (the classification layer's reader:
    a dataset with ``images``, paths or decoded arrays); the other arguments are :func:`check_detection_run`'s.
    """
    test = cfg.data.test
    check_test_set = None
    if test is not None:
        check_test_set = functools.partial(
            _classification_test_set,
            build_test_set,
            image_root=test.image_root,
            name=Path(str(test.labels or test.image_root)).name,
            crops=cfg.test.crops,
            eval_period=cfg.test.eval_period,
            max_iter=cfg.solver.max_iter,
        )
    return _run(net, class_names, found, check_test_set, cfg, None)


def _run(
    model: nn.Module,
    class_names: Sequence[str],
    found: Optional[Tuple[Path, Dict[str, Any]]],
    check_test_set: Optional[Callable[[PreflightReport], None]],
    cfg: DictConfig,
    backbone_weights: Optional[str],
) -> PreflightReport:
    """``check_test_set`` (None: no test set), the output folder and the resume (the settings of ``cfg``
    that differ from the checkpoint's) on the main process; an error is raised on every process.
    ``model.weights`` and ``backbone_weights`` (``model.backbone.weights``) are named in the summary."""
    output_dir, weights = Path(cfg.output_dir), cfg.model.weights

    def main() -> PreflightReport:
        start = time.perf_counter()
        report = PreflightReport(class_names=list(class_names))
        if check_test_set is not None:
            check_test_set(report)
        _check_output_dir(output_dir, model, report)
        report.weights = _weights(found, weights, backbone_weights)
        if found is not None:
            report.resumed_from = Path(found[0]).name
            report.config_changes = resume_config_changes(cfg, found[1])
        report.seconds = time.perf_counter() - start
        logger.info("%s", report.summary())
        return report

    return _on_main_process(main) or PreflightReport()


def _on_main_process(fn: Callable[[], Any]) -> Any:
    """``fn()`` on the main process (None elsewhere); an exception it raises is raised on every process, so
    that none is left waiting for the others (as the output folder's lock does)."""
    result, error = None, None
    if is_main_process():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every process
            error = e
    shared = all_gather_object(None if error is None else _portable(error))[0]
    if error is not None:
        raise error
    if shared is not None:
        raise shared
    return result


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (to reach the other processes), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"the pre-flight check failed on the main process: {type(error).__name__}: {error}")


# ------------------------------------------------------------------------------------------- test sets


def _as_data_error(key: str, e: Exception) -> Exception:
    """A reader's input error named by the config key it came from (``data.test: ...``): the toolkit's own
    types keep their type, an OSError becomes a DataError."""
    if isinstance(e, InputError):
        if str(e).startswith(key):
            return e
        try:
            return type(e)(f"{key}: {e}")
        except Exception:  # noqa: BLE001 - a type whose constructor takes other arguments: kept as it is
            return e
    if isinstance(e, OSError) and e.strerror and e.filename:
        return DataError(f"{key}: {e.filename}: {e.strerror}")
    return DataError(f"{key}: {e}")


def _detection_test_set(
    build_test_set: Callable[[], Any],
    class_names: Sequence[str],
    report: PreflightReport,
    *,
    iou_types: Sequence[str],
    data_format: str,
    evaluator: Optional[str],
    eval_period: int,
    max_iter: int,
    report_mode: str,
) -> None:
    """Build the test set (``build_test_set()``) and check it against the training ``class_names``; the
    summary names the ``evaluator`` (``test.evaluator``), when it runs and what it writes."""
    try:
        dataset = build_test_set()
        # the checks the COCO evaluator applies to the ground truth before it runs
        check_ground_truth(dataset.coco.dataset, str(dataset.json_path), iou_types, dataset.image_ids)
    except (InputError, OSError) as e:  # a bare ValueError is a bug: it propagates as one
        raise _as_data_error("data.test", e) from None
    n_json = len(dataset.coco.imgs)
    # the key that places the images: a VOC entry names its devkit root, a COCO entry its image folder
    root_key = "data.test.root" if data_format == "voc" else "data.test.image_root"
    if len(dataset) == 0:
        first = next(iter(dataset.coco.imgs.values()), {}).get("file_name", "")
        raise DataError(
            f"{root_key}: {dataset.image_root} holds none of the {n_json} images of "
            f"{dataset.json_path}"
            + (f" (the first is {first!r})" if first else "")
            + f"; set {root_key} to the folder the annotations' file names are relative to"
        )
    _check_sample(
        [(dataset.image_path(i), _json_size(dataset, i)) for i in _sample(len(dataset))], root_key, dataset.image_root
    )
    _check_categories(list(dataset.class_names), list(class_names), str(dataset.json_path))
    report.test_name, report.num_test_images = dataset.name, len(dataset)
    report.evaluator = _detection_evaluator(evaluator, data_format, iou_types)
    report.schedule = _schedule(eval_period, max_iter)
    report.outputs = f"metrics.json, report {report_mode}"


def _json_size(dataset: Any, index: int) -> Tuple[int, int]:
    info = dataset.coco.imgs[dataset.image_ids[index]]
    return int(info["height"]), int(info["width"])


def _check_categories(test: List[str], train: List[str], test_file: str) -> None:
    if test == train:
        return
    if sorted(test) == sorted(train):
        problem = (
            f"has the training classes in another order ({_shown(test)} by category id, training: {_shown(train)})"
        )
    else:
        extra = [n for n in test if n not in train]
        missing = [n for n in train if n not in test]
        parts = ([f"classes the training set lacks: {_shown(extra)}"] if extra else []) + (
            [f"no {_shown(missing)} of the training set"] if missing else []
        )
        problem = f"has {len(test)} classes where the training set has {len(train)}: " + "; ".join(parts)
    raise DataError(
        f"data.test: {test_file} {problem}. A predicted label is scored as the test json's category "
        "at the same position, so the test categories must be the training json's: the same names in "
        "the same id order (the ids themselves may differ). Fix the test json's categories or choose "
        "the test set that belongs to data.train"
    )


def _detection_evaluator(name: Optional[str], data_format: str, iou_types: Sequence[str]) -> str:
    """The evaluator the run's evaluations use, by ``test.evaluator`` (``name``) through the evaluation registry: a name
    it does not know is a ConfigError now rather than after training; ``auto`` is the one registered for
    ``data.test.format``, else COCO's, which training's evaluation runs on any COCO-format json (as before
    the key existed, and while no protocol is registered)."""
    name = name or "auto"
    if name == "auto":
        try:
            name = registry.evaluator_for_format(data_format)
        except InputError:
            name = "coco"
    elif registry.evaluator_names():
        registry.evaluator_factory(name)  # a ConfigError naming the registered ones
    return f"{name} ({', '.join(iou_types)})" if name == "coco" else str(name)


def _classification_test_set(
    build_test_set: Callable[[], Any],
    report: PreflightReport,
    *,
    image_root: str,
    name: str,
    crops: str,
    eval_period: int,
    max_iter: int,
) -> None:
    """Build the test set (``build_test_set()``) of ``image_root`` and check a sample of its images; the summary
    calls it ``name`` and says when the ``crops`` testing runs."""
    try:
        dataset = build_test_set()
    except (InputError, OSError) as e:  # a bare ValueError is a bug: it propagates as one
        raise _as_data_error("data.test", e) from None
    if len(dataset) == 0:
        raise DataError(f"data.test: {image_root}: no test images")
    if not isinstance(dataset.images, np.ndarray):  # CIFAR batches are decoded already
        _check_sample([(dataset.images[i], None) for i in _sample(len(dataset))], "data.test.image_root", image_root)
    report.test_name = name
    report.num_test_images = len(dataset)
    report.evaluator = "top-1/top-5 error"
    report.schedule = f"{crops} at the end"
    if 0 < eval_period < max_iter:
        report.schedule = f"center crop {_every(eval_period)}, " + report.schedule
    report.outputs = "metrics.json"
    report.test_set = dataset


def _sample(n: int, k: int = SAMPLE_IMAGES) -> List[int]:
    """Up to ``k`` indices spread evenly over ``range(n)``, first and last included."""
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist())) if n else []


def _check_sample(items: Sequence[Tuple[Any, Optional[Tuple[int, int]]]], key: str, root: Any) -> None:
    """Decode each ``(path, (height, width) or None)``; an error when none decodes as described, a warning
    naming those that do not (evaluation reads them as black images)."""
    bad: List[str] = []
    for path, size in items:
        try:
            image = read_image(path)
        except OSError as e:
            bad.append(str(e))
            continue
        if size is not None and tuple(image.shape[:2]) != size:
            bad.append(
                f"{path}: decoded size {image.shape[1]}x{image.shape[0]} differs from the json's {size[1]}x{size[0]}"
            )
    if bad and len(bad) == len(items):
        raise DataError(
            f"{key}: {root}: none of the {len(items)} test images sampled can be used ({bad[0]}); "
            "check that image_root is the folder of this test set's images"
        )
    for problem in bad:
        logger.warning("pre-flight: %s (a sampled test image; evaluation counts it as unreadable)", problem)


def _schedule(eval_period: int, max_iter: int) -> str:
    return f"{_every(eval_period)} and at the end" if 0 < eval_period < max_iter else "at the end"


def _every(period: int) -> str:
    return "every iteration" if period == 1 else f"every {period} iterations"


# ---------------------------------------------------------------------------------- output folder, weights


def free_bytes(path: os.PathLike | str) -> int:
    """Free bytes on the file system of ``path`` for this user (the probe the check uses)."""
    return shutil.disk_usage(path).free


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _check_output_dir(out: Path, model: nn.Module, report: PreflightReport) -> None:
    probe = out / _PROBE
    try:
        atomic_write_bytes(probe, b"restransfer pre-flight: this folder takes files\n")
        probe.unlink()
    except OSError as e:  # the message is the one line the tools print (no errno: no generic wording)
        raise OSError(f"output_dir: {out} is not writable ({e.strerror or e}); choose another output_dir=...") from None
    model_bytes = _state_bytes(model)
    report.output_dir = str(out)
    report.checkpoint_bytes = _CHECKPOINT_COPIES * model_bytes
    report.free_bytes = free_bytes(out)
    needed = _NEEDED_COPIES * model_bytes
    if report.free_bytes < needed:
        raise OSError(
            f"output_dir: {out} has {_size(report.free_bytes)} free but a checkpoint of this model needs "
            f"about {_size(needed)} (weights and optimizer state, {_size(report.checkpoint_bytes)}, plus "
            "room for the temporary file it is written to); free space there or choose another "
            "output_dir=..."
        )


def _weights(found: Optional[Tuple[Path, Dict[str, Any]]], weights: Optional[str], backbone: Optional[str]) -> str:
    """Which weights the built model holds (read and fitted by the model build, before the pre-flight):
    the resumed checkpoint's, ``model.weights``, ``model.backbone.weights``, or none."""
    if found is not None:
        return f"weights from {Path(found[0]).name} (resumed)"
    if weights:
        return f"model.weights {weights} loaded"
    if backbone:
        return f"model.backbone.weights {backbone} loaded"
    return "no pretrained weights"


# ----------------------------------------------------------------------------------- logging, resuming


def log_dataset_entries(cfg: DictConfig) -> None:
    """Log every ``data.train`` entry and ``data.test`` as the config resolved them (a command-line entry
    replaces the file's whole, so this is what the run reads)."""
    entries = [(f"data.train[{i}]", spec) for i, spec in enumerate(cfg.data.train)]
    entries.append(("data.test", cfg.data.test))
    for key, spec in entries:
        if spec is None:
            logger.info("%s: not set (no evaluation)", key)
            continue
        values = {k: v for k, v in OmegaConf.to_container(spec, resolve=True).items() if v is not None}
        logger.info("%s: %s", key, yaml.safe_dump(values, default_flow_style=True, width=10**6).strip())


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """``{dotted key: value}`` of a nested mapping (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def resume_config_changes(cfg: DictConfig, state: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """``{dotted key: (checkpoint's value, this run's value)}`` for every setting that differs between the
    checkpoint ``state``'s saved config and ``cfg`` (empty when the checkpoint carries no config)."""
    saved = state.get("config")
    if not isinstance(saved, str):
        return {}
    try:
        old = yaml.safe_load(saved)
    except yaml.YAMLError:
        return {}
    if not isinstance(old, dict):
        return {}
    before, now = _flatten(old), _flatten(OmegaConf.to_container(cfg, resolve=True))
    missing = "(not set)"
    pairs = {k: (before.get(k, missing), now.get(k, missing)) for k in list(now) + [k for k in before if k not in now]}
    return {k: (old, new) for k, (old, new) in pairs.items() if old != new}


def write_run_config(cfg: DictConfig, out: Path, found: Optional[Tuple[Path, Dict[str, Any]]]) -> None:
    """Write ``config.yaml``; a resume whose settings differ from the checkpoint's logs the differing keys,
    leaves ``config.yaml`` with the run's original config (the checkpoint's, when the file is gone) and writes
    this run's to ``config.resumed-<iteration>.yaml``."""
    changes = resume_config_changes(cfg, found[1]) if found is not None else {}
    if not changes:
        dump_config(cfg, out / "config.yaml")
        return
    iteration = int(found[1].get("iteration", 0))
    resumed = out / f"config.resumed-{iteration}.yaml"
    if not (out / "config.yaml").is_file():
        atomic_write_text(out / "config.yaml", found[1]["config"])
    dump_config(cfg, resumed)
    shown = ", ".join(f"{k}: {_value(old)} -> {_value(new)}" for k, (old, new) in changes.items())
    restored = [k for k in changes if k in _RESTORED_WITH_OPTIMIZER]
    note = (
        f" The checkpoint's optimizer and scheduler state are restored, so {', '.join(restored)} keep the "
        "checkpoint's values for the rest of the run."
        if restored
        else ""
    )
    logger.warning(
        "--resume with %d setting(s) that differ from the checkpoint's config (%s): %s. config.yaml "
        "keeps the run's original config; %s holds this one.%s",
        len(changes),
        Path(found[0]).name,
        shown,
        resumed.name,
        note,
    )


# ------------------------------------------------------------------------------------------------ format


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _shown(names: Sequence[str], k: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if unit == "GB" else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"
