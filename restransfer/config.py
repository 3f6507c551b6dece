"""The detection config: its typed schema and the checks of its values.

The schema is a tree of dataclasses, so every key has a type and a documented default. :func:`load_config`
reads a file (and its ``_base_`` chain) through :mod:`restransfer.yaml_config`, applies command-line
overrides and returns the validated config. Unknown keys and wrong types are errors that name the file,
the line, the key and the closest valid key.

Each component reads the config in exactly one builder (``build_model(cfg)``, ``build_dataset(...)``,
...); modules themselves take explicit keyword arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf

from .yaml_config import (
    ConfigError,
    channels_last_setting,
    compile_setting,
    dump_config,
    load_structured,
    resolve_path,
    structured_defaults,
)

__all__ = [
    "load_config",
    "dump_config",
    "default_config",
    "ConfigError",
    "Config",
    "RunSettings",
    "resolve_path",
    "CLASSIFIER_ARCHS",
]

# model.arch of the classification configs (classification/config.py): what tells the commands that a config
# trains a classifier, read before any model code is imported
CLASSIFIER_ARCHS = ("imagenet", "cifar")


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
    pre_nms_top_n_train: int = 2000  # proposals kept per level (FPN) or image (C4) before NMS
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000  # proposals per image after NMS
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7  # anchors at IoU >= this with a ground-truth box are positives
    bg_iou_thresh: float = 0.3  # and below this negatives; in between they are ignored
    batch_size_per_image: int = 256  # anchors sampled per image for the losses
    positive_fraction: float = 0.5
    score_thresh: float = 0.0


@dataclass
class RoIHeadsConfig:
    fg_iou_thresh: float = 0.5  # proposals at IoU >= this with a ground-truth box are foreground
    bg_iou_thresh: float = 0.5  # and below this background
    batch_size_per_image: int = 512  # proposals sampled per image for the losses
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
    # the paper's global context: the whole image pooled as one RoI, its feature concatenated with each region's
    global_context: bool = False


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
    format: str = "coco"  # coco, imagenet_det, imagenet_loc, voc
    name: Optional[str] = None  # shown in logs and reports
    generate: Optional[str] = None  # "shapes" (json entries), "voc_shapes" (voc entries): create the set when missing
    # format voc: the VOCdevkit folder, the year (its VOC<year> folder) and the image set (ImageSets/Main/<split>.txt)
    root: Optional[str] = None
    year: Optional[int] = None
    split: Optional[str] = None
    classes: Optional[List[str]] = None  # format voc: class names in label order; None: the devkit's 20


@dataclass
class DataConfig:
    train: List[DatasetSpec] = field(default_factory=list)
    test: Optional[DatasetSpec] = None
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    filter_empty: bool = True  # drop training images without objects
    with_masks: Optional[bool] = None  # None: when the model predicts masks
    allow_outside_root: bool = False  # accept image file_names that are absolute or climb out with ..
    # images with more pixels are skipped with a warning, judged before decoding (Pillow's bomb guard is ~89M)
    max_image_pixels: int = 100_000_000
    voc_use_difficult: bool = False  # train on VOC's difficult objects too (evaluation never counts them)


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
class EmaConfig:
    # an exponential moving average of the weights (engine.hooks.ModelEMA): evaluation and the saved "model"
    # use it, the raw weights stay in the checkpoint for resume
    enabled: bool = False
    decay: float = 0.9998


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
    # NHWC activations (same results up to rounding): auto, true, false. auto turns them on where the benchmarks
    # measured them faster: bf16 training on CPUs with AMX (restransfer.devices.channels_last_decision)
    channels_last: str = "auto"
    # torch.compile the backbone (dynamic shapes): auto, true, false. auto compiles where the README's benchmark
    # shows the compile time paid back over a run of this length (restransfer.devices.resolve_compile)
    compile: str = "auto"
    checkpoint_period: int = 5000
    keep_last: int = 3
    ema: EmaConfig = field(default_factory=EmaConfig)


@dataclass
class TestAugConfig:
    min_sizes: List[int] = field(default_factory=list)  # test scales (short side); empty: input.min_size_test only
    max_size: Optional[int] = None  # long-side cap at every scale; None: input.max_size_test
    flip: bool = False  # add each scale's horizontal mirror
    merge: str = "union"  # union (NMS + box voting over the views) or maxout (C4: pyramid RoI pooling, max)


@dataclass
class TestConfig:
    eval_period: int = 0  # iterations between evaluations during training; 0: only at the end
    precision: str = "fp32"  # fp32, bf16, fp16
    ims_per_batch: int = 1
    optimize: bool = True  # BN folding, channels_last and friends at inference
    compile: str = "auto"  # torch.compile the backbone at inference: auto, true, false (as solver.compile)
    # the ResNet paper's system (appendix B): score the regressed boxes again, NMS the union, box voting
    box_refinement: bool = False
    refinement_nms: float = 0.3
    box_voting_iou: float = 0.5  # a kept box averages its class's boxes overlapping it at IoU >= this
    aug: TestAugConfig = field(default_factory=TestAugConfig)
    # the evaluation protocol: auto picks the one registered for data.test.format (coco, imagenet_det,
    # imagenet_loc, ...), or name one (restransfer.evaluation.evaluator.evaluator_names())
    evaluator: str = "auto"
    # report.html: final (evaluations that are not test.eval_period's), always, never
    report: str = "final"
    # PASCAL VOC AP: voc2007 (11-point) or area (VOC2010+); None: by data.test.year (2007: voc2007)
    voc_metric: Optional[str] = None


@dataclass
class RunSettings:
    """The keys of a run that every tool's config shares (detection, classification)."""

    output_dir: str = "output"
    device: str = "cpu"  # cpu, cuda, cuda:1, auto
    seed: int = 0
    log_period: int = 20
    description: str = ""


@dataclass
class Config(RunSettings):
    """The detection tools' config (train_det, the eval_* tools, benchmark, ablation, the Predictor)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)


def default_config() -> DictConfig:
    """The full config tree with defaults, in struct mode (unknown keys are errors)."""
    return structured_defaults(Config)


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
    cfg = load_structured(Config, path, overrides, items={"data.train": DatasetSpec, "data.test": DatasetSpec})
    _validate_choices(cfg)
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
    "test.aug.merge": ("union", "maxout"),
    "test.report": ("final", "always", "never"),
    "test.voc_metric": (None, "voc2007", "area"),
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
    validate_solver(cfg.solver)
    validate_max_image_pixels(cfg.data.max_image_pixels)
    _validate_test(cfg.test, cfg.model.head)


def validate_max_image_pixels(value: int) -> None:
    """``data.max_image_pixels`` (detection and classification) must be positive."""
    if value < 1:
        raise ConfigError(
            f"data.max_image_pixels: {value} must be at least 1 (the default, 100000000, is 100 megapixels)"
        )


def _validate_test(t: DictConfig, head: str) -> None:
    compile_setting(t.compile, "test.compile")
    for key in ("refinement_nms", "box_voting_iou"):
        if not 0 < t[key] <= 1:
            raise ConfigError(f"test.{key}: {t[key]} must be an IoU in (0, 1]")
    if any(s <= 0 for s in t.aug.min_sizes) or (t.aug.max_size is not None and t.aug.max_size <= 0):
        raise ConfigError(
            f"test.aug: sizes must be positive (min_sizes={list(t.aug.min_sizes)}, max_size={t.aug.max_size})"
        )
    if t.aug.merge == "maxout":
        if head != "c4":
            raise ConfigError(
                f"test.aug.merge: maxout pools res4 features of a scale pyramid for the C4 head; "
                f"model.head is {head}: use test.aug.merge=union"
            )
        if len(t.aug.min_sizes) < 2 or t.aug.flip:
            raise ConfigError(
                "test.aug.merge: maxout needs a pyramid of two or more test.aug.min_sizes (the "
                "paper's [200,400,600,800,1000]) and test.aug.flip=false"
            )


def validate_solver(s: DictConfig) -> None:
    """Value checks of ``solver`` (detection and classification share the schema)."""
    compile_setting(s.compile, "solver.compile")
    channels_last_setting(s.channels_last, "solver.channels_last")
    if not 0.0 <= s.ema.decay < 1.0:
        raise ConfigError(
            f"solver.ema.decay: {s.ema.decay} must be in [0, 1) (e.g. 0.9998: the average spans "
            "about 1 / (1 - decay) = 5000 steps)"
        )
    for key in ("ims_per_batch", "ims_per_device", "max_iter", "base_lr"):
        if s[key] is not None and not s[key] > 0:  # ims_per_device may be None (auto)
            raise ConfigError(f"solver.{key}: {s[key]} must be greater than 0")
    for key in ("warmup_iters", "checkpoint_period", "keep_last"):
        if s[key] < 0:
            raise ConfigError(f"solver.{key}: {s[key]} must be 0 or more")
    if s.ims_per_device is not None and s.ims_per_batch % s.ims_per_device:
        raise ConfigError(
            f"solver.ims_per_device: {s.ims_per_device} does not divide solver.ims_per_batch="
            f"{s.ims_per_batch} (images per optimizer step = processes x ims_per_device x accumulation "
            "steps); choose a divisor, e.g. solver.ims_per_device=1"
        )
    for step in s.steps if s.lr_schedule == "step" else ():
        if not 0 < step <= s.max_iter:
            raise ConfigError(
                f"solver.steps: {step} is outside 1..solver.max_iter ({s.max_iter}); a learning-rate "
                f"step beyond the last iteration never happens. Steps are optimizer steps of "
                "solver.ims_per_batch images"
            )
