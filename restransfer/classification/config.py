"""The classification config (``tools/train_cls.py``, ``tools/eval_cls.py``): its typed schema, the checks of
its values, and the one builder that turns ``cfg.model`` into a network.

Loaded through :func:`restransfer.yaml_config.load_structured`, so ``_base_`` chains, ``key=value``
overrides and unknown-key errors with file and line behave as in the detection config. ``solver`` is the
detection solver schema: ``ims_per_batch`` is the total batch per optimizer step over all processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, List, Optional

from omegaconf import DictConfig
from torch import nn

from ..backbone import PixelConvention, ResNet
from ..backbone.resnet import DEPTHS
from ..config import CLASSIFIER_ARCHS, RunSettings, SolverConfig, validate_max_image_pixels, validate_solver
from ..data.classifier_transforms import CROPS
from ..yaml_config import ConfigError, load_structured
from .checkpoint import load_classifier_state, read_classifier_weights
from .cifar import CifarResNet

__all__ = ["ClsConfig", "ClsDataSpec", "load_cls_config", "build_classifier", "FORMATS", "ARCHS", "CROPS"]

FORMATS = ("imagefolder", "imagenet_val", "cifar10")
ARCHS = CLASSIFIER_ARCHS


@dataclass
class ClsDataSpec:
    image_root: Optional[str] = None  # imagefolder: root/<class>/*; imagenet_val: the val images; cifar10: the batches
    format: str = "imagefolder"  # imagefolder, imagenet_val, cifar10
    labels: Optional[str] = None  # imagenet_val: the devkit ground truth txt or Kaggle's LOC_val_solution.csv
    synsets: Optional[str] = None  # imagenet_val with the devkit ground truth: map_clsloc.txt (its ids)
    split: str = "train"  # cifar10: train (data_batch_1..5) or test (test_batch)
    generate: Optional[str] = None  # "shapes": write the generated imagefolder set here when it is missing


@dataclass
class ClsDataConfig:
    train: List[ClsDataSpec] = field(default_factory=list)
    test: Optional[ClsDataSpec] = None
    num_workers: int = 2
    allow_outside_root: bool = False  # read images and class folders that resolve outside image_root
    # images with more pixels are skipped with a warning, judged from the file header before decoding
    max_image_pixels: int = 100_000_000


@dataclass
class ClsModelConfig:
    arch: str = "imagenet"  # imagenet: restransfer.backbone.ResNet; cifar: the 6n+2 networks of section 4.2
    depth: int = 101  # imagenet: 18/34/50/101/152; cifar: 6n+2 (20, 32, 44, 56, 110, ...)
    residual: bool = True  # False: the plain counterpart (no shortcuts)
    num_classes: int = 1000
    style: str = "pytorch"  # imagenet arch: where a bottleneck puts its stride (pytorch: 3x3, caffe: 1x1)
    weights: Optional[str] = None  # initial weights: a train_cls checkpoint (or any ResNet weights for imagenet)


@dataclass
class ClsInputConfig:
    # scale augmentation: the shorter side is drawn from [scale_min, scale_max] (0 disables; cifar pads instead)
    scale_min: int = 256
    scale_max: int = 480
    crop: int = 224  # training crop (and the center / 10-crop test crop)
    pad: int = 0  # cifar: zero padding before the random crop (the paper's 4)
    hflip_prob: float = 0.5
    lighting: float = 0.1  # std of the AlexNet PCA colour augmentation; 0 disables
    test_size: int = 256  # shorter side before the center / 10-crop test crops
    # per-channel mean/std in 0..255 units of RGB images (the pixel convention the checkpoint carries)
    pixel_mean: List[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: List[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])


@dataclass
class ClsTestConfig:
    crops: str = "center"  # center, 10crop, fcn
    scales: List[int] = field(default_factory=lambda: [224, 256, 384, 480, 640])  # fcn: shorter sides
    ims_per_batch: int = 32
    eval_period: int = 0  # iterations between test-error evaluations during training; 0: only at the end


@dataclass
class ClsConfig(RunSettings):
    """The classification tools' config (train_cls, eval_cls, degradation)."""

    model: ClsModelConfig = field(default_factory=ClsModelConfig)
    data: ClsDataConfig = field(default_factory=ClsDataConfig)
    input: ClsInputConfig = field(default_factory=ClsInputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: ClsTestConfig = field(default_factory=ClsTestConfig)
    output_dir: str = "output/cls"


def load_cls_config(path: Optional[os.PathLike | str] = None, overrides: Iterable[str] = ()) -> DictConfig:
    """Load a classification YAML config (with its ``_base_`` chain) and ``key=value`` overrides.

    Raises:
        ConfigError: unknown keys (with file, line and the closest valid key), wrong types or invalid values.
    """
    cfg = load_structured(ClsConfig, path, overrides, items={"data.train": ClsDataSpec, "data.test": ClsDataSpec})
    validate(cfg)
    return cfg


def _choice(key: str, value: Any, choices: Collection[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def validate(cfg: DictConfig) -> None:
    """Value checks that the schema's types cannot express; :class:`ConfigError` names the key."""
    m = cfg.model
    _choice("model.arch", m.arch, ARCHS)
    if m.arch == "imagenet":
        _choice("model.depth", m.depth, tuple(DEPTHS))
    elif m.depth < 8 or (m.depth - 2) % 6:
        raise ConfigError(
            f"model.depth: {m.depth} is not 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), the depths of the cifar arch"
        )
    _choice("model.style", m.style, ("pytorch", "caffe"))
    if m.num_classes < 2:
        raise ConfigError(f"model.num_classes: {m.num_classes} must be at least 2")
    _choice("test.crops", cfg.test.crops, CROPS)
    validate_max_image_pixels(cfg.data.max_image_pixels)
    for i, spec in enumerate(list(cfg.data.train) + ([cfg.data.test] if cfg.data.test is not None else [])):
        key = f"data.train[{i}]" if i < len(cfg.data.train) else "data.test"
        _choice(f"{key}.format", spec.format, FORMATS)
        if not spec.image_root:
            raise ConfigError(f"{key}.image_root is not set; give the folder of the images (or CIFAR batches)")
        if spec.format == "imagenet_val" and not spec.labels:
            raise ConfigError(
                f"{key}.labels is not set: format imagenet_val needs the devkit ground truth "
                "(ILSVRC2015_clsloc_validation_ground_truth.txt, with synsets=map_clsloc.txt) or "
                "Kaggle's LOC_val_solution.csv"
            )
        _choice(f"{key}.split", spec.split, ("train", "test"))
        if spec.generate not in (None, "shapes"):
            raise ConfigError(f"{key}.generate: {spec.generate!r} is not one of shapes, null")
    i = cfg.input
    if i.crop < 1 or i.test_size < i.crop:
        raise ConfigError(f"input.test_size ({i.test_size}) must be at least input.crop ({i.crop}) and crop >= 1")
    if i.scale_min and not (i.crop <= i.scale_min <= i.scale_max):
        raise ConfigError(
            f"input.scale_min/scale_max ({i.scale_min}, {i.scale_max}): need crop ({i.crop}) <= "
            "scale_min <= scale_max, or scale_min=0 to disable scale augmentation"
        )
    for name in ("pixel_mean", "pixel_std"):
        if len(i[name]) != 3:
            raise ConfigError(f"input.{name}: expected 3 values, got {len(i[name])}")
    validate_solver(cfg.solver)
    _choice("solver.precision", cfg.solver.precision, ("fp32", "bf16", "fp16", "auto"))


def build_classifier(cfg: DictConfig, weights: Optional[str] = None) -> nn.Module:
    """The network of ``cfg.model`` with BatchNorm after every convolution, trainable throughout. Both archs
    have ``classify(x) -> (B, num_classes)`` logits, a ``pixel_convention`` and ``class_names``.

    ``weights`` (a ``train_cls`` checkpoint, or ResNet ImageNet weights for the imagenet arch) are read first and
    loaded: the network is built with the convention they carry and the checkpoint's class names
    (:func:`~restransfer.classification.checkpoint.read_classifier_weights`); without them the convention is
    ``cfg.input``'s and ``class_names`` is None."""
    m = cfg.model
    source = read_classifier_weights(weights, m.arch) if weights else None
    conv = (
        source.convention
        if source is not None and source.convention is not None
        else PixelConvention("RGB", tuple(cfg.input.pixel_mean), tuple(cfg.input.pixel_std), m.style)
    )
    names = source.class_names if source is not None else None
    if m.arch == "cifar":
        model: nn.Module = CifarResNet(
            m.depth, residual=m.residual, num_classes=m.num_classes, pixel_convention=conv, class_names=names
        )
    else:
        model = ResNet(
            m.depth,
            style=m.style,
            norm="bn",
            freeze_at=0,
            num_classes=m.num_classes,
            residual=m.residual,
            pixel_convention=conv,
            class_names=names,
        )
    if source is not None:
        load_classifier_state(model, source)
    return model
