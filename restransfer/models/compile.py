"""``torch.compile`` on the part of a model where the time goes: ``solver.compile`` and ``test.compile``.

:func:`compile_model` compiles, in place, a detector's backbone (the ResNet and its FPN, or the C4 trunk), every
backbone of a :class:`~restransfer.models.system.DetectionSystem`, or a model without a backbone (a classifier)
as a whole. The rest of a detector stays eager: the RPN head (its sparse backward), RoIAlign (its parallel CPU
kernels and backward), the box and mask heads, NMS and the post-processing. Those parts work on data-dependent
numbers of anchors, proposals and regions: compiled too, the demo's Mask R-CNN took 24 graphs with graph breaks
at RoIAlign's thread pool and about five times the backbone's compile time, for no faster step.

* Compiled with ``nn.Module.compile``, so parameter names and state dicts do not change (checkpoints are the
  same with and without); a copy of a compiled module (``copy.deepcopy``, the EMA average) runs eagerly.
* ``dynamic=True``: the graph takes symbolic image sizes, so images of any size (multi-scale training, a test
  set's aspect ratios) run one graph; the padding to ``input.size_divisibility`` does not need to bound them.
  :func:`compile_events` counts what was compiled, for the benchmark and the tests to check that.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch._dynamo.utils import counters  # torch's own counts (read only), imported with torch

from ..devices import compile_decision, compile_setting

__all__ = ["compile_model", "apply_compile_setting", "compiled_modules", "compile_events"]

logger = logging.getLogger(__name__)


def _targets(model: nn.Module) -> List[str]:
    """Names of the modules :func:`compile_model` compiles in ``model`` (``""``: the model itself)."""
    names = [name for name, _ in model.named_modules() if name.rpartition(".")[2] == "backbone"]
    # an ensemble's detectors each have one; a backbone inside another backbone is compiled with it
    names = [n for n in names if not any(n.startswith(f"{o}.") for o in names if o != n)]
    return names or [""]


def compile_model(model: nn.Module, *, dynamic: bool = True, **options: Any) -> List[str]:
    """Compile ``model``'s backbone(s), or ``model`` itself when it has none, in place.

    Args:
        model: a :class:`~restransfer.models.Detector`, a ``DetectionSystem`` (each detector's backbone) or any
            module (compiled whole: a classifier).
        dynamic: symbolic input sizes (one graph for every image size) instead of a graph per size.
        options: more ``torch.compile`` arguments (``mode``, ``backend``, ...).

    Returns:
        The names of the compiled modules (``"backbone"``, ``"detectors.0.backbone"``, ..., or ``""`` for the
        model itself). Compiling happens at the first call, not here.
    """
    names = _targets(model)
    for name in names:
        module = model.get_submodule(name) if name else model
        if module._compiled_call_impl is None:  # compiling twice would wrap the compiled call again
            module.compile(dynamic=dynamic, **options)
    return names


def apply_compile_setting(
    model: nn.Module,
    setting: object,
    device: torch.device,
    *,
    key: str,
    precision: Optional[str] = None,
    steps: Optional[int] = None,
) -> bool:
    """Compile ``model`` (:func:`compile_model`) when ``setting`` (``auto``, ``true`` or ``false``, the config
    ``key`` that gave it) says so on ``device`` (:func:`restransfer.devices.compile_decision`; ``precision`` and
    ``steps``: a training run's resolved precision and length, which ``auto`` weighs); returns whether it did."""
    given = compile_setting(setting, key)
    on, why = compile_decision(given, device, key=key, precision=precision, steps=steps)
    if on:
        names = compile_model(model)
        logger.info(
            "%s=%s: torch.compile on %s (dynamic shapes; compiled at the first call)%s",
            key,
            given,
            ", ".join(n or type(model).__name__ for n in names),
            f": {why}" if why else "",
        )
    elif given == "auto":
        logger.info("%s=auto: eager on %s (%s)", key, device.type, why)
    return on


def compiled_modules(model: nn.Module) -> List[str]:
    """Names of the modules of ``model`` that are compiled (``nn.Module.compile``)."""
    return [name for name, m in model.named_modules() if m._compiled_call_impl is not None]


def compile_events() -> Dict[str, int]:
    """torch.compile's process-wide counts so far: ``frames`` (Python frames compiled, a recompilation
    included), ``graphs`` (graphs compiled), ``graph_breaks``. Differences over a run say what it compiled."""
    return {
        "frames": int(counters["frames"].get("ok", 0)),
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }
