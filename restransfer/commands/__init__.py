"""The ``restransfer`` command (installed with the package) and the code of the tools in ``tools/``.

    restransfer train CONFIG [--resume | --restart] [--eval-only] [key=value ...]
    restransfer eval CONFIG --weights CKPT [CKPT ...] [options] [key=value ...]
    restransfer predict CONFIG --weights CKPT --input IMAGE_OR_DIR --output DIR [--threshold T] [key=value ...]
    restransfer export CONFIG --weights CKPT --format onnx|torchscript --output FILE [--size H W] [--verify]
    restransfer analyze CONFIG --weights CKPT --output DIR [--iou-type bbox|segm] [key=value ...]
    restransfer configs [NAME ...] [--path]

CONFIG is a YAML file or the name of a packaged config (``restransfer configs`` lists them). ``train`` trains a
detector or a classifier and ``eval`` runs the test set's protocol (COCO, ImageNet-DET, ImageNet localization,
PASCAL VOC, classification error), as the config says. ``restransfer COMMAND --help`` shows a command's options
(``restransfer train CONFIG --help`` and ``restransfer eval CONFIG --help`` those of the tool the config picks).

Each command is a module here with ``main(argv) -> exit status``; ``tools/<name>.py`` runs the same code as a
script (``python tools/train_det.py configs/coco_faster_rcnn_r101.yaml``). A failure ends with ``error: ...`` and
exit status 2; ``--debug`` shows the traceback (see :func:`restransfer.cli.run_tool`).
"""

from __future__ import annotations

import difflib
import importlib
import sys
from types import ModuleType
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..cli import run_tool

__all__ = ["COMMANDS", "Command", "main"]


class Command(NamedTuple):
    module: str  # restransfer.commands.<module>: main(argv), MEMORY_HINT, optionally select(argv) -> tool module
    summary: str


COMMANDS: Dict[str, Command] = {
    "train": Command("train", "train a detector or a classifier from a config"),
    "eval": Command("evaluate", "evaluate a checkpoint on the config's test set with its protocol"),
    "predict": Command("demo", "run a detector on images: drawn PNGs and predictions.json"),
    "export": Command("export", "export a detector to ONNX or TorchScript"),
    "analyze": Command("analyze_coco", "COCO error analysis (PR curves, error breakdown) of a model or results file"),
    "configs": Command("configs", "list the packaged configs, or print one"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
    return (
        "usage: restransfer [--debug] COMMAND [ARGS ...]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nrestransfer COMMAND --help shows a command's options; --debug shows the traceback of a failure."
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("restransfer")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "unknown (not installed)"


def _tool(module: ModuleType, argv: List[str]) -> Tuple[Optional[ModuleType], int]:
    """``(the module that runs argv, 0)``: ``module`` itself, or the tool its ``select`` picks by the config;
    ``(None, exit status)`` when that choice failed (run_tool has then reported why)."""
    select = getattr(module, "select", None)
    if select is None:
        return module, 0
    chosen: List[ModuleType] = []
    code = run_tool(lambda args: chosen.append(select(args)) or 0, argv)
    return (chosen[0], 0) if code == 0 and chosen else (None, code)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``restransfer [--debug] COMMAND ARGS``: returns the exit status (the console script exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))
    head, rest = args[:first], args[first:]  # options before the command
    if "--version" in head:
        print(f"restransfer {_version()}")
        return 0
    if "-h" in head or "--help" in head:
        print(_usage())
        return 0
    if not rest:
        print(_usage(), file=sys.stderr)
        return 2
    name, sub_argv = rest[0], head + rest[1:]  # --debug before the command applies to it
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; choose one of {', '.join(COMMANDS)}"
        print(
            f"usage: restransfer [--debug] COMMAND [ARGS ...]\nerror: unknown command {name!r}{hint}", file=sys.stderr
        )
        return 2
    if argv is None:
        sys.argv[0] = f"restransfer {name}"  # argparse's usage lines then read "usage: restransfer train ..."
    tool, code = _tool(importlib.import_module(f"{__name__}.{COMMANDS[name].module}"), sub_argv)
    if tool is None:
        return code
    hint = getattr(tool, "MEMORY_HINT", None)
    return run_tool(tool.main, sub_argv, **({"memory_hint": hint} if hint else {}))
