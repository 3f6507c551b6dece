"""``restransfer train CONFIG [--resume | --restart] [--eval-only] [key=value ...]``: train what the config describes.

A detection config (``model.arch``: faster_rcnn, mask_rcnn) trains through :mod:`.train_det`
(``tools/train_det.py``), a classification config (``model.arch``: imagenet, cifar) through :mod:`.train_cls`
(``tools/train_cls.py``); every option, message and exit status is that tool's. CONFIG is a YAML file or a
packaged config's name (``restransfer configs`` lists them).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Optional, Sequence

import yaml

from ..cli import deferred_module, imported
from ..config import CLASSIFIER_ARCHS
from ..yaml_config import read_config_tree
from . import train_det

# imported when the config is a classifier's (cli.deferred_module)
train_cls = deferred_module("restransfer.commands.train_cls")

__all__ = ["config_kind", "config_argument", "override_arguments", "select", "main"]


def config_kind(config: os.PathLike | str, overrides: Sequence[str] = ()) -> str:
    """``"classification"`` when the config's ``model.arch`` (after its ``_base_`` chain and a ``model.arch=``
    override) is a classifier's (imagenet, cifar), else ``"detection"``."""
    model = read_config_tree(config).get("model")
    arch = model.get("arch") if isinstance(model, dict) else None
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "model.arch":
            try:
                arch = yaml.safe_load(value)
            except yaml.YAMLError:  # the tool's own parsing names the bad override
                pass
    return "classification" if arch in CLASSIFIER_ARCHS else "detection"


def config_argument(argv: Sequence[str]) -> Optional[str]:
    """The first argument that is not an option: CONFIG, where every option before it is a flag."""
    return next((a for a in argv if not a.startswith("-")), None)


def override_arguments(argv: Sequence[str]) -> list:
    """The ``key=value`` arguments (a file whose name holds ``=`` is not one)."""
    return [a for a in argv if "=" in a and not a.startswith("-") and not os.path.exists(a)]


def select(argv: Sequence[str]) -> ModuleType:
    """The training tool for the config in ``argv`` (train_det without one: its parser reports the usage)."""
    config = config_argument(argv)
    if config is None:
        return train_det
    return imported(train_cls) if config_kind(config, override_arguments(argv)) == "classification" else train_det


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return select(argv).main(argv)
