"""The configs that ship inside the package, addressed by name.

The YAML files live in ``restransfer/configs/`` (the clone's ``configs/`` is a link to that folder), so a
wheel install has them too. A config is named by its path under that folder without ``.yaml``:
``coco_faster_rcnn_r101``, ``demo_shapes_mask_rcnn_r18``, ``torchvision/faster_rcnn_r50_fpn``. Wherever a config
file is taken (the tools' CONFIG argument, :func:`restransfer.config.load_config`, a ``_base_`` entry), an
existing file wins and a packaged name is the fallback, so ``configs/coco_mask_rcnn_r101_fpn.yaml`` works
from the clone and outside it alike, as in detectron2's ``model_zoo.get_config_file``::

    from restransfer.model_zoo import get_config_file, list_configs
    get_config_file("coco_mask_rcnn_r101_fpn")  # .../restransfer/configs/coco_mask_rcnn_r101_fpn.yaml
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import yaml

from .errors import ConfigError

__all__ = [
    "CONFIG_DIR",
    "ConfigEntry",
    "list_configs",
    "config_names",
    "get_config_file",
    "find_config",
    "config_summary",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_SUFFIXES = (".yaml", ".yml")
# a full stop that ends a sentence (not the one of "et al.")
_SENTENCE_END = re.compile(r"(?<!\bal)\.(?=\s+[A-Z(]|$)")


@dataclass(frozen=True)
class ConfigEntry:
    """One packaged config: its ``name`` (``torchvision/faster_rcnn_r50_fpn``), ``path`` and one-line
    ``summary`` (see :func:`config_summary`)."""

    name: str
    path: Path
    summary: str


def config_names() -> List[str]:
    """The names of the packaged configs, sorted (those in sub-folders after the top-level ones)."""
    if not CONFIG_DIR.is_dir():
        return []
    paths = [p for p in CONFIG_DIR.rglob("*") if p.suffix in _SUFFIXES and p.is_file()]
    names = [p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in paths]
    return sorted(names, key=lambda n: (n.count("/"), n))


def list_configs() -> List[ConfigEntry]:
    """Every packaged config with its summary, in :func:`config_names` order."""
    return [ConfigEntry(name, _packaged_path(name), config_summary(_packaged_path(name))) for name in config_names()]


def _packaged_path(name: str) -> Path:
    for suffix in _SUFFIXES:
        path = CONFIG_DIR / f"{name}{suffix}"
        if path.is_file():
            return path
    raise KeyError(name)


def _as_name(text: str) -> Optional[str]:
    """The packaged name that ``text`` can stand for: ``NAME``, ``NAME.yaml``, ``configs/NAME.yaml`` (the
    clone's path); None for anything else (an absolute path, ``..``)."""
    text = text.replace(os.sep, "/")
    if text.startswith("./"):
        text = text[2:]
    if text.startswith("configs/"):
        text = text[len("configs/") :]
    for suffix in _SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    if not text or text.startswith("/") or ".." in text.split("/"):
        return None
    return text


def get_config_file(name: str) -> Path:
    """The path of the packaged config ``name`` (``coco_faster_rcnn_r101``; ``.yaml`` and a leading
    ``configs/`` are accepted too).

    Raises:
        ConfigError: no packaged config has that name; the message lists the close ones.
    """
    key = _as_name(str(name))
    if key is not None:
        try:
            return _packaged_path(key)
        except KeyError:
            pass
    raise ConfigError(f"{name}: no packaged config of that name{_close_names(key or str(name))}")


def _close_names(key: str) -> str:
    names = config_names()
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    listing = "`restransfer configs` lists them"
    return f"; did you mean {', '.join(close)}? ({listing})" if close else f" ({listing})"


def find_config(
    path: os.PathLike | str,
    relative_to: Optional[os.PathLike | str] = None,
    base_of: Optional[os.PathLike | str] = None,
) -> Path:
    """The config file that ``path`` names: an existing file (a relative path under ``relative_to`` when
    given, else under the working directory), otherwise the packaged config of that name.

    Args:
        base_of: the file whose ``_base_`` names ``path``, for the error message.

    Raises:
        ConfigError: neither exists; the message says where the file was looked for and lists close
        packaged names.
    """
    given = Path(path)
    candidate = Path(relative_to) / given if relative_to is not None else given
    if candidate.is_file():
        return candidate
    key = None if given.is_absolute() else _as_name(str(path))
    if key is not None:
        try:
            return _packaged_path(key)
        except KeyError:
            pass
    where = os.path.abspath(candidate) + (f" (a _base_ of {base_of})" if base_of is not None else "")
    if candidate.is_dir():
        raise ConfigError(f"{where}: is a folder; give a YAML config file or a packaged config's name")
    hint = f", nor a packaged config's name{_close_names(key)}" if key is not None else ""
    raise ConfigError(f"config file not found: {where}{hint}")


def config_summary(path: os.PathLike | str) -> str:
    """One line that says what a config is: its own ``description:`` when it has one, else the first
    sentence of its leading comment, up to a colon."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("description"), str) and data["description"].strip():
        return data["description"].strip()
    comment: List[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    summary = " ".join(c for c in comment if c)
    end = _SENTENCE_END.search(summary)
    if end:
        summary = summary[: end.start() + 1]
    return summary.split(": ", 1)[0].strip().rstrip(".")
