"""Typed configuration: YAML files with ``_base_`` inheritance and ``key.sub=value`` overrides.

The schema is a tree of dataclasses turned into an OmegaConf structured config, so every key has a
type and a documented default. :func:`load_config` reads a file (and its bases), applies command-line
overrides and returns the validated config. Unknown keys and wrong types are errors that name the
file, the line, the key and the closest valid key.

Each component reads the config in exactly one builder (``build_model(cfg)``, ``build_dataset(...)``,
...); modules themselves take explicit keyword arguments.
"""
from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["load_config", "dump_config", "default_config", "ConfigError", "Config", "resolve_path"]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says where and what to do."""


# --------------------------------------------------------------------------------------------- schema


@dataclass
class BackboneConfig:
    depth: int = 50  # 18, 34, 50, 101, 152
    style: str = "pytorch"  # "pytorch" (stride in the 3x3) or "caffe" (stride in the first 1x1, MSRA)
    norm: str = "frozen_bn"  # frozen_bn, bn, syncbn, gn
    freeze_at: int = 2  # 0: nothing frozen; 1: stem; k>=2: stem and res2..res<k>
    weights: Optional[str] = None  # file, torchvision://resnet101 or timm://<name>
    residual: bool = True  # False builds the plain (no shortcut) counterpart


@dataclass
class AnchorConfig:
    # C4: one feature map, all sizes on it. FPN: one size per level (P2..P6).
    sizes: List[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    aspect_ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])


@dataclass
class RPNConfig:
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    score_thresh: float = 0.0


@dataclass
class RoIHeadsConfig:
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    pooler_resolution: int = 7  # FPN box head; C4 pools 14x14 on res4 (see c4_pooler_resolution)
    c4_pooler_resolution: int = 14
    sampling_ratio: int = 2
    fpn_representation_size: int = 1024  # two-FC box head width
    mask_pooler_resolution: int = 14
    mask_conv_dim: int = 256
    class_agnostic_box_reg: bool = False


@dataclass
class ModelConfig:
    arch: str = "faster_rcnn"  # faster_rcnn, mask_rcnn
    head: str = "c4"  # c4, fpn
    num_classes: int = 80  # foreground classes; label 0 is background
    weights: Optional[str] = None  # full detector checkpoint (ours or torchvision's)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn_out_channels: int = 256
    fpn_extra_block: bool = True  # P6 by max-pool for the RPN
    # None: taken from the backbone weights' pixel convention (RGB ImageNet mean/std, or MSRA BGR)
    pixel_mean: Optional[List[float]] = None
    pixel_std: Optional[List[float]] = None
    channel_order: Optional[str] = None  # "RGB" or "BGR"
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)


@dataclass
class DatasetSpec:
    json: Optional[str] = None  # COCO-format annotation file
    image_root: Optional[str] = None  # folder the json's file_name entries are relative to
    format: str = "coco"  # coco, imagenet_det, imagenet_loc
    name: Optional[str] = None  # shown in logs and reports
    generate: Optional[str] = None  # "shapes": create the synthetic set here when missing


@dataclass
class DataConfig:
    train: List[DatasetSpec] = field(default_factory=list)
    test: Optional[DatasetSpec] = None
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    filter_empty: bool = True  # drop training images without objects
    with_masks: Optional[bool] = None  # None: when the model predicts masks
    allow_outside_root: bool = False  # accept image file_names that are absolute or climb out with ..


@dataclass
class InputConfig:
    min_size_train: List[int] = field(default_factory=lambda: [800])
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    hflip_prob: float = 0.5
    color_jitter: float = 0.0  # strength of brightness/contrast/saturation jitter; 0 disables
    size_divisibility: int = 32


@dataclass
class SolverConfig:
    base_lr: float = 0.02
    max_iter: int = 90000
    # images per optimizer step in total, over all processes: the unit of the schedule (base_lr, max_iter,
    # steps and warmup mean the same on any number of processes)
    ims_per_batch: int = 16
    # images one process computes per forward/backward; None: ims_per_batch / number of processes. Gradients
    # are accumulated over ims_per_batch / (processes x ims_per_device) micro-steps per optimizer step.
    ims_per_device: Optional[int] = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    weight_decay_bias: Optional[float] = None  # None: same as weight_decay
    lr_schedule: str = "step"  # step, cosine
    steps: List[int] = field(default_factory=lambda: [60000, 80000])
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    clip_grad_norm: float = 0.0  # 0 disables
    precision: str = "fp32"  # fp32, bf16, fp16 (fp16 only on CUDA), auto (fp16 on CUDA, bf16 on CPUs with native bf16)
    channels_last: bool = False  # NHWC activations: faster oneDNN/cuDNN convolutions, same results up to rounding
    checkpoint_period: int = 5000
    keep_last: int = 3


@dataclass
class TestConfig:
    eval_period: int = 0  # iterations between evaluations during training; 0: only at the end
    precision: str = "fp32"  # fp32, bf16, fp16
    ims_per_batch: int = 1
    optimize: bool = True  # BN folding, channels_last and friends at inference


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    output_dir: str = "output"
    device: str = "cpu"  # cpu, cuda, cuda:1, auto
    seed: int = 0
    log_period: int = 20
    description: str = ""


def default_config() -> DictConfig:
    """The full config tree with defaults, in struct mode (unknown keys are errors)."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    return cfg


# ---------------------------------------------------------------------------------- YAML with lines


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key as ``{dotted.key: line}``."""


def _load_yaml_with_lines(path: Path) -> Tuple[Dict[str, Any], Dict[str, int]]:
    text = path.read_text(encoding="utf-8")
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

    def walk(n, prefix: str) -> None:
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


_DATASET_KEYS = [f.name for f in DatasetSpec.__dataclass_fields__.values()]


def _all_keys() -> List[str]:
    keys = _schema_keys(default_config())
    keys += [f"data.test.{k}" for k in _DATASET_KEYS]
    return keys


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not close:
        # compare the last component among siblings
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        siblings = [v for v in valid if v.startswith(parent) and "." not in v[len(parent):]]
        close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.0)
    return f"; did you mean {close[0]}?" if close else ""


def _check_keys(data: Any, valid: Sequence[str], where: str, lines: Dict[str, int], prefix: str = "") -> None:
    """Raise ConfigError for the first key of ``data`` that the schema does not know."""
    if not isinstance(data, dict):
        return
    for k, v in data.items():
        if prefix == "" and k == "_base_":
            continue
        key = f"{prefix}{k}"
        if key not in valid:
            line = lines.get(key)
            loc = f"{where}, line {line}: " if line else f"{where}: "
            raise ConfigError(f"{loc}{key}: unknown key{_suggest(key, valid)}")
        if isinstance(v, dict):
            _check_keys(v, valid, where, lines, key + ".")
        elif isinstance(v, list) and key == "data.train":
            for i, item in enumerate(v):
                if isinstance(item, dict):
                    for sub in item:
                        if sub not in _DATASET_KEYS:
                            line = lines.get(key)
                            loc = f"{where}, line {line}: " if line else f"{where}: "
                            close = difflib.get_close_matches(sub, _DATASET_KEYS, n=1, cutoff=0.4)
                            hint = f"; did you mean {key}[{i}].{close[0]}?" if close else ""
                            raise ConfigError(f"{loc}{key}[{i}].{sub}: unknown key{hint}")


# ---------------------------------------------------------------------------------------- merging


def _deep_merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_with_bases(path: Path, valid: Sequence[str], chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(f"{path}: _base_ inheritance forms a cycle: {cycle}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (a _base_ of {chain[-1]})" if chain else ""))
    data, lines = _load_yaml_with_lines(path)
    bases = data.pop("_base_", None)
    _check_keys(data, valid, str(path), lines)
    merged: Dict[str, Any] = {}
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"{path}: _base_ must be a path or a list of paths relative to the file")
        for b in bases:
            merged = _deep_merge(merged, _read_with_bases(path.parent / b, valid, chain + (path,)))
    return _deep_merge(merged, data)


def _parse_override(item: str, valid: Sequence[str]) -> Tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. model.backbone.depth=50")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {e}") from None
    if key not in valid:
        raise ConfigError(f"override {item!r}: {key}: unknown key{_suggest(key, valid)}")
    return key, value


def _nest(key: str, value: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def _merge_into_schema(data: Dict[str, Any], where: str) -> DictConfig:
    cfg = default_config()
    try:
        return OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{where}: {key}: {msg}" if key else f"{where}: {msg}") from None


def load_config(path: Optional[os.PathLike | str] = None, overrides: Iterable[str] = ()) -> DictConfig:
    """Load a YAML config (with its ``_base_`` chain) and apply ``key.sub=value`` overrides.

    Args:
        path: the YAML file; ``None`` starts from the defaults.
        overrides: strings like ``"model.backbone.depth=50"`` or ``"solver.steps=[1000,2000]"``; values
            are parsed as YAML (``"data.test={json: a.json, image_root: imgs}"`` works too).

    Returns:
        A struct-mode ``DictConfig`` with every key of :class:`Config`; reading or setting an unknown
        key raises.

    Raises:
        ConfigError: unknown keys (with the closest valid key), wrong types, missing files.
    """
    valid = _all_keys()
    data: Dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        data = _read_with_bases(Path(path), valid)
        where = str(path)
    cfg = _merge_into_schema(data, where)
    for item in overrides:
        key, value = _parse_override(item, valid)
        try:
            cfg = OmegaConf.merge(cfg, _nest(key, value))
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {key}: {str(e).splitlines()[0]}") from None
    _validate_choices(cfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


_CHOICES = {
    "model.arch": ("faster_rcnn", "mask_rcnn"),
    "model.head": ("c4", "fpn"),
    "model.backbone.depth": (18, 34, 50, 101, 152),
    "model.backbone.style": ("pytorch", "caffe"),
    "model.backbone.norm": ("frozen_bn", "bn", "syncbn", "gn"),
    "solver.lr_schedule": ("step", "cosine"),
    "solver.precision": ("fp32", "bf16", "fp16", "auto"),
    "test.precision": ("fp32", "bf16", "fp16"),
}


def _validate_choices(cfg: DictConfig) -> None:
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    if cfg.model.channel_order not in (None, "RGB", "BGR"):
        raise ConfigError(f"model.channel_order: {cfg.model.channel_order!r} is not one of RGB, BGR")
    if not 0 <= cfg.model.backbone.freeze_at <= 5:
        raise ConfigError(f"model.backbone.freeze_at: {cfg.model.backbone.freeze_at} must be between 0 and 5")
    if cfg.model.num_classes < 1:
        raise ConfigError(f"model.num_classes: {cfg.model.num_classes} must be at least 1")
    for name in ("pixel_mean", "pixel_std"):
        v = cfg.model[name]
        if v is not None and len(v) != 3:
            raise ConfigError(f"model.{name}: expected 3 values, got {len(v)}")
    _validate_solver(cfg.solver)


def _validate_solver(s: DictConfig) -> None:
    for key in ("ims_per_batch", "ims_per_device", "max_iter", "base_lr"):
        if s[key] is not None and not s[key] > 0:  # ims_per_device may be None (auto)
            raise ConfigError(f"solver.{key}: {s[key]} must be greater than 0")
    for key in ("warmup_iters", "checkpoint_period", "keep_last"):
        if s[key] < 0:
            raise ConfigError(f"solver.{key}: {s[key]} must be 0 or more")
    if s.ims_per_device is not None and s.ims_per_batch % s.ims_per_device:
        raise ConfigError(f"solver.ims_per_device: {s.ims_per_device} does not divide solver.ims_per_batch="
                          f"{s.ims_per_batch} (images per optimizer step = processes x ims_per_device x accumulation "
                          "steps); choose a divisor, e.g. solver.ims_per_device=1")
    for step in (s.steps if s.lr_schedule == "step" else ()):
        if not 0 < step <= s.max_iter:
            raise ConfigError(f"solver.steps: {step} is outside 1..solver.max_iter ({s.max_iter}); a learning-rate "
                              f"step beyond the last iteration never happens. Steps are optimizer steps of "
                              "solver.ims_per_batch images")


def dump_config(cfg: DictConfig, path: Optional[os.PathLike | str] = None) -> str:
    """The resolved config as YAML; written atomically to ``path`` when given. Loads back identically."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return text


def resolve_path(p: Optional[str]) -> Optional[str]:
    """Expand ``~`` and ``$VARS``; relative dataset paths resolve under ``$RESTRANSFER_DATASETS``
    when that is set and the path starts with ``datasets/``."""
    if p is None:
        return None
    p = os.path.expandvars(os.path.expanduser(p))
    root = os.environ.get("RESTRANSFER_DATASETS")
    if root and not os.path.isabs(p) and (p == "datasets" or p.startswith("datasets/")):
        p = os.path.join(root, p[len("datasets/"):]) if p != "datasets" else root
    return p
