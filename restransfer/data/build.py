"""Datasets and DataLoaders from the config: the one place where ``cfg.data`` and ``cfg.input`` are read."""

from __future__ import annotations

import bisect
import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import ConcatDataset, DataLoader

from restransfer.config import resolve_path
from restransfer.data.coco import DATASETS_README, CocoDataset
from restransfer.data.image_io import DEFAULT_MAX_IMAGE_PIXELS
from restransfer.data.samplers import InferenceSampler, TrainingBatchSampler, aspect_ratio_groups, batch_layout
from restransfer.data.shapes import ensure_shapes
from restransfer.data.transforms import TrainAugmentation, build_transforms
from restransfer.data.voc import VOC_CLASSES
from restransfer.data.voc_dataset import VocDataset
from restransfer.data.voc_shapes import DEFAULT_CLASSES as SHAPES_CLASSES
from restransfer.data.voc_shapes import ensure_voc_shapes
from restransfer.devices import resolve_device
from restransfer.errors import ConfigError, DataError

__all__ = [
    "CocoConcatDataset",
    "dataset_from_spec",
    "build_train_dataset",
    "build_test_dataset",
    "build_train_loader",
    "build_test_loader",
    "trivial_batch_collator",
    "uses_masks",
]

logger = logging.getLogger(__name__)

# Annotation files of these formats are COCO json (the ImageNet converters write COCO json).
_COCO_JSON_FORMATS = ("coco", "imagenet_det", "imagenet_loc")


class CocoConcatDataset(ConcatDataset):
    """Several :class:`CocoDataset` with the same categories, one after the other.

    Accepts ``dataset[(index, seed)]`` like its parts, and exposes the parts' shared
    ``class_names``, ``label_to_cat_id`` and ``cat_id_to_label``.
    """

    datasets: List[CocoDataset]

    def __init__(self, datasets: Sequence[CocoDataset]):
        super().__init__(datasets)
        first = datasets[0]
        self.class_names = first.class_names
        self.label_to_cat_id = first.label_to_cat_id
        self.cat_id_to_label = first.cat_id_to_label

    def __getitem__(self, key: Union[int, Tuple[int, Optional[int]]]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        if index < 0:
            index += len(self)
        part = bisect.bisect_right(self.cumulative_sizes, index)
        offset = self.cumulative_sizes[part - 1] if part > 0 else 0
        return self.datasets[part][(index - offset, seed)]

    def aspect_ratios(self) -> np.ndarray:
        """Width / height of every image, float64 (len,)."""
        return np.concatenate([d.aspect_ratios() for d in self.datasets])

    @property
    def num_skipped(self) -> int:
        return sum(d.num_skipped for d in self.datasets)

    @property
    def num_dropped_boxes(self) -> int:
        return sum(d.num_dropped_boxes for d in self.datasets)


def trivial_batch_collator(batch: List[Tuple[Any, Any]]) -> Tuple[Tuple[Any, ...], ...]:
    """``[(image, target), ...]`` -> ``((images...), (targets...))``: images keep their own sizes."""
    return tuple(zip(*batch))


def uses_masks(cfg: DictConfig) -> bool:
    """``cfg.data.with_masks``, or when unset, whether the model predicts masks."""
    return bool(cfg.data.with_masks) if cfg.data.with_masks is not None else cfg.model.arch == "mask_rcnn"


def _generate_if_missing(spec: Any, json_path: Path, key: str) -> None:
    if spec.generate is None or json_path.is_file():
        return
    if spec.generate != "shapes":
        raise ConfigError(f"{key}.generate: {spec.generate!r} is not a generator; the one available is 'shapes'")
    root = json_path.parent.parent
    if json_path.parent.name != "annotations" or json_path.name not in ("train.json", "val.json"):
        raise ConfigError(
            f"{key}.json: {json_path}: the shapes generator writes ROOT/annotations/{{train,val}}.json; "
            f"point json at such a path (see {DATASETS_README})"
        )
    logger.info("generating the synthetic shapes set under %s", root)
    ensure_shapes(root)


def _check_generated_layout(spec: Any, json_path: Path, image_root: Path, key: str) -> None:
    expected = json_path.parent.parent / json_path.stem
    if spec.generate is not None and image_root.absolute() != expected.absolute():
        entry = "{json: ..., image_root: ...}"
        whole = f"data.train=[{entry}]" if key.startswith("data.train") else f"{key}={entry}"
        raise ConfigError(
            f"{key}.image_root: {image_root}: the shapes generator puts the images of {json_path.name} "
            f"in {expected}; set image_root to it, or for a dataset of your own give the whole entry "
            f"({whole}: a new entry keeps no generate from the base config) (see {DATASETS_README})"
        )


def dataset_from_spec(
    spec: Any,
    *,
    key: str,
    is_train: bool,
    transforms: Optional[TrainAugmentation],
    with_masks: bool,
    filter_empty: bool,
    allow_outside_root: bool = False,
    max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
    use_difficult: bool = False,
    uint8_images: bool = False,
) -> CocoDataset:
    """A :class:`CocoDataset` from one ``DatasetSpec`` (``json``, ``image_root``, ``format``, ``name``, ``generate``;
    ``format: voc`` reads ``root``, ``year``, ``split`` and ``classes`` instead: a :class:`VocDataset`).

    ``key`` (e.g. ``"data.train[0]"``) names the spec in error messages; ``allow_outside_root`` and
    ``max_image_pixels`` are ``data.allow_outside_root`` and ``data.max_image_pixels`` (see :class:`CocoDataset`),
    ``use_difficult`` is ``data.voc_use_difficult`` (VOC's difficult objects as training targets),
    ``uint8_images`` makes images uint8 (3, H, W) in 0..255 (the training loader's; see :class:`CocoDataset`).
    """
    if spec.format == "voc":
        return _voc_dataset(
            spec,
            key,
            with_masks,
            use_difficult,
            transforms=transforms,
            is_train=is_train,
            filter_empty=filter_empty,
            allow_outside_root=allow_outside_root,
            max_image_pixels=max_image_pixels,
            uint8_images=uint8_images,
        )
    if spec.format not in _COCO_JSON_FORMATS:
        raise ConfigError(
            f"{key}.format: {spec.format!r} is not supported; use one of {', '.join(_COCO_JSON_FORMATS)}, "
            f"voc (ImageNet data is read through its converted COCO json, see {DATASETS_README})"
        )
    if not spec.json or not spec.image_root:
        raise ConfigError(
            f"{key}: needs both json and image_root, e.g. {{json: datasets/coco/annotations/"
            f"instances_val2017.json, image_root: datasets/coco/val2017}} (see {DATASETS_README})"
        )
    json_path, image_root = Path(resolve_path(spec.json)), Path(resolve_path(spec.image_root))
    _generate_if_missing(spec, json_path, key)
    _check_generated_layout(spec, json_path, image_root, key)
    ds = CocoDataset(
        json_path,
        image_root,
        transforms=transforms,
        with_masks=with_masks,
        filter_empty=filter_empty,
        is_train=is_train,
        name=spec.name or None,
        allow_outside_root=allow_outside_root,
        max_image_pixels=max_image_pixels,
        uint8_images=uint8_images,
    )
    logger.info("%s: %s: %d images, %d classes", key, ds.name, len(ds), len(ds.class_names))
    return ds


def _voc_dataset(spec: Any, key: str, with_masks: bool, use_difficult: bool, **options: Any) -> VocDataset:
    """A :class:`VocDataset` of one ``format: voc`` entry (``options``: CocoDataset's keyword arguments)."""
    missing = [k for k in ("root", "year", "split") if spec[k] is None]
    if missing or spec.json or spec.image_root:
        raise ConfigError(
            f"{key}: a format voc entry names root, year and split (and optionally classes), e.g. "
            f"{{format: voc, root: datasets/VOCdevkit, year: 2007, split: trainval}}"
            + (f"; missing: {', '.join(missing)}" if missing else "; json/image_root are for COCO json entries")
            + f" (see {DATASETS_README})"
        )
    if with_masks:
        raise ConfigError(
            f"{key}: PASCAL VOC entries have boxes only; use model.arch=faster_rcnn (or data.with_masks=false)"
        )
    if spec.generate not in (None, "voc_shapes"):
        raise ConfigError(f"{key}.generate: {spec.generate!r}; the generator of format voc entries is 'voc_shapes'")
    root = Path(resolve_path(spec.root))
    classes = tuple(spec.classes) if spec.classes else SHAPES_CLASSES if spec.generate else VOC_CLASSES
    if spec.generate is not None:
        logger.info("generating the VOC-layout shapes set under %s if missing", root)
        ensure_voc_shapes(root, year=spec.year, classes=classes)
    ds = VocDataset(
        root, spec.year, spec.split, classes=classes, use_difficult=use_difficult, name=spec.name or None, **options
    )
    logger.info("%s: %s: %d images, %d classes", key, ds.name, len(ds), len(ds.class_names))
    return ds


def _categories(ds: CocoDataset) -> List[Tuple[int, str]]:
    return [(ds.label_to_cat_id[i + 1], name) for i, name in enumerate(ds.class_names)]


def build_train_dataset(cfg: DictConfig, entries: Optional[Sequence[Any]] = None) -> CocoConcatDataset:
    """All ``cfg.data.train`` datasets (or the dataset ``entries`` given instead, e.g. a generated folder) with
    training augmentation, concatenated.

    Raises:
        ConfigError: ``data.train`` is empty.
        DataError: two of its datasets have different categories, or one of them has no usable image or no
            usable annotation.
    """
    entries = cfg.data.train if entries is None else entries
    if not entries:
        raise ConfigError(
            f"data.train is empty: set it to a list like [{{json: PATH, image_root: DIR}}] (see {DATASETS_README})"
        )
    transforms = build_transforms(
        list(cfg.input.min_size_train),
        cfg.input.max_size_train,
        cfg.input.hflip_prob,
        cfg.input.color_jitter,
        is_train=True,
    )
    datasets = [
        dataset_from_spec(
            spec,
            key=f"data.train[{i}]",
            is_train=True,
            transforms=transforms,
            with_masks=uses_masks(cfg),
            filter_empty=cfg.data.filter_empty,
            allow_outside_root=cfg.data.allow_outside_root,
            max_image_pixels=cfg.data.max_image_pixels,
            use_difficult=cfg.data.voc_use_difficult,
            uint8_images=True,
        )  # the model converts: a quarter of the bytes to move
        for i, spec in enumerate(entries)
    ]
    reference = _categories(datasets[0])
    for ds in datasets[1:]:
        if _categories(ds) != reference:
            raise DataError(
                f"data.train: {datasets[0].json_path} and {ds.json_path} have different categories "
                f"(ids and names must match to be trained together)"
            )
    for ds in datasets:
        if len(ds) == 0:
            raise DataError(f"data.train: {ds.json_path} has no usable training images (under {ds.image_root})")
        if ds.num_targets == 0:
            raise DataError(
                f"data.train: {ds.json_path} has no usable annotations on its {len(ds)} images "
                f"(see the warnings above); a training set needs objects to learn from"
            )
    return CocoConcatDataset(datasets)


def build_test_dataset(cfg: DictConfig) -> CocoDataset:
    """The ``cfg.data.test`` dataset, unaugmented (the model resizes test images itself)."""
    if cfg.data.test is None:
        raise ConfigError(f"data.test is not set: give {{json: PATH, image_root: DIR}} (see {DATASETS_README})")
    return dataset_from_spec(
        cfg.data.test,
        key="data.test",
        is_train=False,
        transforms=build_transforms([], 0, is_train=False),
        with_masks=uses_masks(cfg),
        filter_empty=False,
        allow_outside_root=cfg.data.allow_outside_root,
        max_image_pixels=cfg.data.max_image_pixels,
    )


def _pin_memory(device: str) -> bool:
    """Pinned host memory for loaders that feed a CUDA ``device`` (the config's ``device``)."""
    try:
        return resolve_device(device).type == "cuda"
    except RuntimeError:  # a CUDA device where there is none: the trainer or evaluator reports it
        return False


def _private_generator(seed: int) -> torch.Generator:
    """The generator a DataLoader draws its worker base seed from when an iterator starts.

    Without one it draws from torch's global generator, so starting an iterator (at the beginning,
    after a resume, at each evaluation) would shift the training RNG stream. Augmentation does not
    depend on it: the batch sampler passes explicit per-sample seeds.
    """
    return torch.Generator().manual_seed(int(seed))


def build_train_loader(
    cfg: DictConfig,
    start_iter: int = 0,
    rank: int = 0,
    world_size: int = 1,
    dataset: Optional[CocoConcatDataset] = None,
    batch_size: Optional[int] = None,
    num_workers: Optional[int] = None,
) -> DataLoader:
    """Endless DataLoader of training batches for this process.

    Each batch is ``(images, targets)``: tuples of ``batch_size`` (3, H, W) uint8 tensors (RGB, 0..255: the
    detector converts them, see :class:`~restransfer.models.transform.DetectionTransform`) and target dicts
    (see :class:`CocoDataset`); ``batch_size`` defaults to the images one process computes per forward pass
    (``solver.ims_per_device``, see :func:`restransfer.data.samplers.batch_layout`). Batch ``k`` of the
    loader is the loader's batch number ``start_iter + k`` (with gradient accumulation a training iteration
    takes several); the sequence depends only on ``cfg.seed``, ``rank`` and ``world_size``. ``num_workers``
    overrides ``data.num_workers`` (the loader benchmark's sweep).
    """
    if batch_size is None:
        batch_size = batch_layout(cfg.solver.ims_per_batch, cfg.solver.ims_per_device, world_size).per_device
    dataset = dataset if dataset is not None else build_train_dataset(cfg)
    groups = aspect_ratio_groups(dataset.aspect_ratios()) if cfg.data.aspect_ratio_grouping else None
    sampler = TrainingBatchSampler(
        len(dataset),
        batch_size,
        group_ids=groups,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        start_iter=start_iter,
    )
    workers = int(cfg.data.num_workers if num_workers is None else num_workers)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=trivial_batch_collator,
        persistent_workers=workers > 0,
        pin_memory=_pin_memory(cfg.device),
        generator=_private_generator(cfg.seed + rank),
    )


def build_test_loader(cfg: DictConfig, dataset: CocoDataset, rank: int = 0, world_size: int = 1) -> DataLoader:
    """DataLoader over this process's contiguous shard of ``dataset``, ``cfg.test.ims_per_batch`` per batch."""
    workers = int(cfg.data.num_workers)
    return DataLoader(
        dataset,
        sampler=InferenceSampler(len(dataset), rank, world_size),
        batch_size=cfg.test.ims_per_batch,
        num_workers=workers,
        collate_fn=trivial_batch_collator,
        persistent_workers=workers > 0,
        pin_memory=_pin_memory(cfg.device),
        generator=_private_generator(cfg.seed + rank),
    )
