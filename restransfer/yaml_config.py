"""YAML configs against a typed schema: ``_base_`` inheritance, ``key.sub=value`` overrides, key checks.

A schema is a tree of dataclasses turned into an OmegaConf structured config, so every key has a type and
a documented default. :func:`load_structured` reads a file (and its bases), applies command-line overrides
and returns the merged config; unknown keys and wrong types are errors that name the file, the line, the
key and the closest valid key. A config file, and each ``_base_``, is a path (a base's relative to its file)
or, where no such file exists, the name of a config packaged with the toolkit (:mod:`restransfer.model_zoo`).
``restransfer.config`` holds the detection schema; any other tool with a
schema of its own (classification, say) loads it through the same function.

How a later value combines with an earlier one (a child file over its ``_base_``, an override over the
file), the same in both places:

* mappings merge key by key (``solver: {base_lr: 0.01}`` keeps the base's other solver keys);
* lists and plain values replace;
* a dataset entry (the schema's ``items``: ``data.train`` entries, ``data.test``) is replaced whole:
  ``data.test={json: a.json, image_root: imgs}`` keeps none of the base entry's keys (no ``generate``,
  ``name`` or ``labels`` left over from another dataset). One key of an entry is changed by naming it:
  ``data.test.image_root=imgs``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .fileio import atomic_write_text
from .model_zoo import find_config

__all__ = [
    "ConfigError",
    "structured_defaults",
    "load_structured",
    "read_config_tree",
    "dump_config",
    "resolve_path",
    "COMPILE_SETTINGS",
    "compile_setting",
    "channels_last_setting",
]

COMPILE_SETTINGS = ("auto", "true", "false")  # solver.compile, test.compile and solver.channels_last


def structured_defaults(schema: type) -> DictConfig:
    """The full config tree of a dataclass schema with its defaults, in struct mode (unknown keys are errors)."""
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    return cfg


# ---------------------------------------------------------------------------------- YAML with lines


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key as ``{dotted.key: line}``."""


def _load_yaml_with_lines(path: Path) -> Tuple[Dict[str, Any], Dict[str, int]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # a ValueError naming no file: the config's own error says which
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); a config is a UTF-8 YAML file"
        ) from None
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    lines: Dict[str, int] = {}

    def walk(n: yaml.Node, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")

    walk(node, "")
    return data, lines


# ------------------------------------------------------------------------------------ key validation


def _schema_keys(node: Any, prefix: str = "") -> List[str]:
    keys: List[str] = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            child = node._get_node(k)
            if isinstance(child, DictConfig) and not child._is_none():
                keys.extend(_schema_keys(child, full + "."))
    return keys


def _field_names(item_schema: type) -> List[str]:
    return [f.name for f in dataclasses.fields(item_schema)]


class _Keys:
    """The valid dotted keys of a schema; ``items`` maps list keys (``data.train``) and optional mapping keys
    (``data.test``) to the dataclass of their entries."""

    def __init__(self, schema: type, items: Mapping[str, type]):
        self.items = {key: _field_names(s) for key, s in items.items()}
        # where a new value replaces the entry whole rather than merging into it (see the module docstring)
        self.entries = frozenset(items)
        self.valid = _schema_keys(structured_defaults(schema))
        for key, names in self.items.items():  # optional entries (None by default) still have known sub-keys
            self.valid += [f"{key}.{n}" for n in names if f"{key}.{n}" not in self.valid]

    def suggest(self, key: str) -> str:
        close = difflib.get_close_matches(key, self.valid, n=1, cutoff=0.5)
        if not close:
            # compare the last component among siblings
            parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
            siblings = [v for v in self.valid if v.startswith(parent) and "." not in v[len(parent) :]]
            close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.0)
        return f"; did you mean {close[0]}?" if close else ""

    def check(self, data: Any, where: str, lines: Dict[str, int], prefix: str = "") -> None:
        """Raise ConfigError for the first key of ``data`` that the schema does not know."""
        if not isinstance(data, dict):
            return
        for k, v in data.items():
            if prefix == "" and k == "_base_":
                continue
            key = f"{prefix}{k}"
            line = lines.get(key)
            loc = f"{where}, line {line}: " if line else f"{where}: "
            if key not in self.valid:
                raise ConfigError(f"{loc}{key}: unknown key{self.suggest(key)}")
            if isinstance(v, dict):
                self.check(v, where, lines, key + ".")
            elif isinstance(v, list) and key in self.items:
                names = self.items[key]
                for i, item in enumerate(v):
                    for sub in item if isinstance(item, dict) else ():
                        if sub not in names:
                            close = difflib.get_close_matches(sub, names, n=1, cutoff=0.4)
                            hint = f"; did you mean {key}[{i}].{close[0]}?" if close else ""
                            raise ConfigError(f"{loc}{key}[{i}].{sub}: unknown key{hint}")


# ---------------------------------------------------------------------------------------- merging


def _deep_merge(
    base: Dict[str, Any], update: Dict[str, Any], entries: Iterable[str] = (), prefix: str = ""
) -> Dict[str, Any]:
    """``update`` over ``base``: mappings merge, anything else replaces, and so does a mapping at one of the
    dotted keys ``entries`` (a dataset entry is replaced whole)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(out.get(k), dict) and key not in entries:
            out[k] = _deep_merge(out[k], v, entries, key + ".")
        else:
            out[k] = copy.deepcopy(v)
    return out


def _entry_keys(update: Dict[str, Any], entries: Iterable[str], prefix: str = "") -> List[str]:
    """The dotted keys of ``entries`` that ``update`` (a nested mapping) gives a mapping (a list of entries
    replaces the list anyway)."""
    found: List[str] = []
    for k, v in update.items():
        key = f"{prefix}{k}"
        if key in entries:
            if isinstance(v, dict):
                found.append(key)
        elif isinstance(v, dict):
            found += _entry_keys(v, entries, key + ".")
    return found


def _read_with_bases(path: Path, keys: Optional[_Keys], chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """The file's mapping merged over its ``_base_`` chain (a base: a path relative to the file, or a packaged
    config's name); ``keys``: the schema's keys to check every file against (None: no check)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(f"{path}: _base_ inheritance forms a cycle: {cycle}")
    data, lines = _load_yaml_with_lines(path)
    bases = data.pop("_base_", None)
    if keys is not None:
        keys.check(data, str(path), lines)
    entries = keys.entries if keys is not None else ()
    merged: Dict[str, Any] = {}
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(
                f"{path}: _base_ must be a path relative to the file or a packaged config's name, or a list of them"
            )
        for b in bases:
            base = find_config(b, relative_to=path.parent, base_of=path)
            merged = _deep_merge(merged, _read_with_bases(base, keys, chain + (path,)), entries)
    return _deep_merge(merged, data, entries)


def read_config_tree(path: os.PathLike | str) -> Dict[str, Any]:
    """The mapping of a config file (or packaged config name) merged over its ``_base_`` chain, before any
    schema: for a caller that picks the schema by what the file says."""
    return _read_with_bases(find_config(path), None)


def _parse_override(item: str, keys: _Keys) -> Tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. model.backbone.depth=50")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {e}") from None
    if key not in keys.valid:
        raise ConfigError(f"override {item!r}: {key}: unknown key{keys.suggest(key)}")
    return key, value


def _nest(key: str, value: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def load_structured(
    schema: type,
    path: Optional[os.PathLike | str] = None,
    overrides: Iterable[str] = (),
    items: Optional[Mapping[str, type]] = None,
) -> DictConfig:
    """Load a YAML file (with its ``_base_`` chain) into ``schema`` and apply ``key.sub=value`` overrides.

    Args:
        schema: the root dataclass; every key of the file must be one of its (nested) fields.
        path: the YAML file, or the name of a packaged config (:mod:`restransfer.model_zoo`); ``None``
            starts from the defaults.
        overrides: strings like ``"model.depth=50"`` or ``"solver.steps=[1000,2000]"``; values are parsed
            as YAML (``"data.test={image_root: imgs}"`` works too).
        items: dotted keys whose value is a list of entries or an optional entry, mapped to the entry's
            dataclass, so that a misspelt key inside an entry is named too. A value given for one of these
            keys (in a child file or an override) replaces the entry whole; see the module docstring.

    Returns:
        A struct-mode ``DictConfig``; reading or setting an unknown key raises.
    """
    keys = _Keys(schema, items or {})
    data: Dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        data = _read_with_bases(find_config(path), keys)
        where = str(path)
    try:
        cfg = OmegaConf.merge(structured_defaults(schema), data)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{where}: {key}: {msg}" if key else f"{where}: {msg}") from None
    for item in overrides:
        key, value = _parse_override(item, keys)
        update = _nest(key, value)
        try:
            # an entry is replaced by a value for it (or for a mapping above it); data.test.json=... edits one key
            for entry in _entry_keys(update, [e for e in keys.entries if e == key or e.startswith(key + ".")]):
                OmegaConf.update(cfg, entry, None, merge=False)  # the merge then builds it from the new value alone
            cfg = OmegaConf.merge(cfg, update)
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {key}: {str(e).splitlines()[0]}") from None
    OmegaConf.set_struct(cfg, True)
    return cfg


def dump_config(cfg: DictConfig, path: Optional[os.PathLike | str] = None) -> str:
    """The resolved config as YAML; written atomically to ``path`` when given. Loads back identically."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if path is not None:
        atomic_write_text(path, text)
    return text


def resolve_path(p: Optional[str]) -> Optional[str]:
    """Expand ``~`` and ``$VARS``; relative dataset paths resolve under ``$RESTRANSFER_DATASETS``
    when that is set and the path starts with ``datasets/``."""
    if p is None:
        return None
    p = os.path.expandvars(os.path.expanduser(p))
    root = os.environ.get("RESTRANSFER_DATASETS")
    if root and not os.path.isabs(p) and (p == "datasets" or p.startswith("datasets/")):
        p = os.path.join(root, p[len("datasets/") :]) if p != "datasets" else root
    return p


def _auto_setting(value: object, key: str, auto_means: str) -> str:
    """An ``auto | true | false`` setting as written (YAML hands ``true`` over as a bool, the schema as the
    string ``"True"``) -> ``"auto"``, ``"true"`` or ``"false"``; anything else is a
    :class:`~restransfer.errors.ConfigError` naming ``key`` and saying what ``auto`` does."""
    setting = str(value).strip().lower()
    if setting not in COMPILE_SETTINGS:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(COMPILE_SETTINGS)} ({auto_means})")
    return setting


def compile_setting(value: object, key: str = "compile") -> str:
    """``solver.compile`` / ``test.compile`` -> ``"auto"``, ``"true"`` or ``"false"`` (see :func:`_auto_setting`)."""
    return _auto_setting(
        value, key, "auto compiles where the README's benchmark measured a net gain for a run of that length"
    )


def channels_last_setting(value: object, key: str = "solver.channels_last") -> str:
    """``solver.channels_last`` -> ``"auto"``, ``"true"`` or ``"false"`` (see :func:`_auto_setting`)."""
    return _auto_setting(
        value, key, "auto trains on channels_last where the benchmarks measured it faster: bf16 on CPUs with AMX"
    )
