"""``restransfer eval CONFIG --weights CKPT [CKPT ...] [options] [key=value ...]``: evaluate a checkpoint on the
config's test set with that set's protocol.

CONFIG comes first (a YAML file or a packaged config's name): it picks the tool, whose options, messages and exit
status then apply:

* a classification config: :mod:`.eval_cls` (top-1/top-5 error; ``--crops``, ``--scales``);
* a detection config, by its evaluator (``test.evaluator``; ``auto``: the one registered for
  ``data.test.format``): ``coco`` -> :mod:`.eval_coco` (``--iou-type``, ``--engine``), ``imagenet_det`` ->
  :mod:`.eval_imagenet_det` (``--blacklist``, ``--no-coco``), ``imagenet_loc`` -> :mod:`.eval_imagenet_loc`
  (``--mode``, ``--classifier-scores``, ``--classifier-weights``, ...);
* any other registered protocol (``voc``, a user's own): :func:`main_protocol` below, which runs
  :func:`restransfer.engine.evaluate.evaluate` with that evaluator and writes ``metrics.json`` and
  ``report.html`` (PASCAL VOC: ``test.voc_metric=voc2007|area`` chooses the AP rule).

The results-file modes of those tools (``--gt``/``--results``, ``--submission``) are run through the tools
themselves (``tools/eval_coco.py``, ...). A failure ends with ``error: ...`` and exit status 2 (``--debug``
shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Optional, Sequence

from ..cli import EVAL_MEMORY_HINT, add_weights_argument, deferred_module, imported, note_output, split_weights
from ..config import load_config
from ..errors import ConfigError
from ..evaluation.evaluator import evaluator_for_format
from . import eval_coco, eval_imagenet_det, eval_imagenet_loc
from .train import config_kind, override_arguments

# imported once the arguments and the config are checked (cli.deferred_module)
eval_cls = deferred_module("restransfer.commands.eval_cls")
engine_evaluate = deferred_module("restransfer.engine.evaluate")

__all__ = ["PROTOCOL_TOOLS", "select", "main", "main_protocol", "MEMORY_HINT"]

MEMORY_HINT = EVAL_MEMORY_HINT

# evaluator name -> the tool with that protocol's own options; other evaluators go through main_protocol
PROTOCOL_TOOLS = {"coco": eval_coco, "imagenet_det": eval_imagenet_det, "imagenet_loc": eval_imagenet_loc}

_USAGE = "usage: restransfer eval CONFIG --weights CKPT [CKPT ...] [options] [key=value ...]"


def _evaluator_name(config: str, overrides: Sequence[str]) -> str:
    cfg = load_config(config, overrides)
    if cfg.data.test is None:
        raise ConfigError(
            f"{config}: data.test is not set, so there is nothing to evaluate; give one, e.g. "
            "'data.test={json: val.json, image_root: images}'"
        )
    name = cfg.test.evaluator
    return evaluator_for_format(cfg.data.test.format) if name == "auto" else name


def select(argv: Sequence[str]) -> ModuleType:
    """The evaluation tool for the config that ``argv`` starts with (see the module docstring)."""
    if not argv or argv[0].startswith("-"):
        return sys.modules[__name__]  # main() prints the usage
    config, overrides = argv[0], override_arguments(argv[1:])
    if config_kind(config, overrides) == "classification":
        return imported(eval_cls)
    name = _evaluator_name(config, overrides)
    return PROTOCOL_TOOLS.get(name, sys.modules[__name__])


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        if any(a in ("-h", "--help") for a in argv):
            print(f"{_USAGE}\n\n{__doc__}")
            return 0
        print(_USAGE, file=sys.stderr)
        print("error: give CONFIG first: it chooses the evaluation protocol", file=sys.stderr)
        return 2
    tool = select(argv)
    return (main_protocol if tool is sys.modules[__name__] else tool.main)(argv)


def main_protocol(argv: Optional[Sequence[str]] = None) -> int:
    """The config's model on its test set through its evaluator (``test.evaluator``); for the protocols without
    a tool of their own."""
    p = argparse.ArgumentParser(
        description="Evaluate a checkpoint on the config's test set with the evaluator "
        "registered for it (test.evaluator; auto: by data.test.format)."
    )
    p.add_argument("config", help="YAML config or packaged config name whose data.test set is evaluated")
    add_weights_argument(p, "checkpoint to evaluate (default: model.weights)")
    p.add_argument("--output", help="metrics.json path (default: output_dir/metrics.json)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_intermixed_args(argv)
    args.weights, args.overrides = split_weights(args.weights, args.overrides)
    cfg = load_config(args.config, args.overrides)
    if not args.weights and not cfg.model.weights:
        p.error("give --weights CKPT (or model.weights=CKPT): there is no trained model to evaluate")
    note_output("--output" if args.output else "output_dir", args.output or cfg.output_dir)
    run = engine_evaluate.evaluate(cfg, args.weights, metrics_path=args.output, echo=True, report=True)
    if run is not None:
        path = getattr(run.evaluator, "metrics_path", None)
        if path is not None:
            print(f"metrics: {path}")
        if run.report is not None:
            print(f"report: {run.report}")
    return 0
