"""Classification data: the readers of the three layouts, the dataset, and the training/test transforms.

Layouts (``format`` of a ``data.train`` / ``data.test`` entry):

* ``imagefolder``: ``image_root/<class>/*.{jpg,jpeg,png,bmp,webp}``; the class is the sub-folder name and
  the classes are the sorted folder names (ImageNet's ``train/<wnid>/*.JPEG`` is one such folder).
* ``imagenet_val``: the flat ImageNet validation folder with its labels, either the devkit ground truth
  (``ILSVRC2015_clsloc_validation_ground_truth.txt`` with ``synsets: map_clsloc.txt``; line ``i`` is the
  ``i``-th image in sorted order) or Kaggle's ``LOC_val_solution.csv``, read by the localization readers.
* ``cifar10``: the CIFAR-10 python batches (``data_batch_1..5`` for ``split: train``, ``test_batch`` for
  ``split: test``, class names from ``batches.meta``), read with the safe unpickler, which refuses an array
  declared larger than its file before allocating it; each batch must be uint8 (N, 3072) with N labels and
  at most :data:`CIFAR_MAX_ROWS` rows.

Bad data is handled as in detection (:mod:`restransfer.data.coco`):

* image files and class folders that resolve outside ``image_root`` (symlinks leading elsewhere, ``..`` in a
  label file's names) are left out with a warning unless ``allow_outside_root`` (``data.allow_outside_root``);
* an image that cannot be read (missing, empty, truncated, not an image, or above ``max_image_pixels`` by
  its header: ``data.max_image_pixels``) is skipped with a warning naming the file, once, and counted
  (``num_skipped``, in shared memory so that DataLoader workers' counts are seen): training takes the next
  readable image, and stops only when none is left; testing leaves it out of the error rates.

Class indices are positions in a class list: the training set's, or the checkpoint's at evaluation, so that
a test folder's classes map to the model's outputs by name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from ..data.classifier_transforms import normalize, resize_shorter
from ..data.ilsvrc import Synsets, read_synsets
from ..data.image_io import DEFAULT_MAX_IMAGE_PIXELS, CorruptImageError, read_image
from ..data.imagenet_loc import read_ground_truth_labels, read_kaggle_solution
from ..errors import ConfigError, DataError, WeightsError
from ..serialization import safe_load_pickle
from ..yaml_config import resolve_path
from .synthetic import ensure_shape_classes

__all__ = [
    "ClassificationDataset",
    "read_imagefolder",
    "read_imagenet_val",
    "read_cifar10",
    "TrainTransform",
    "resize_shorter",
    "normalize",
    "CIFAR10_CLASSES",
    "CIFAR_MAX_ROWS",
    "IMAGE_SUFFIXES",
    "dataset_from_spec",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# A CIFAR-10 batch holds 10,000 images; ten times that is the most a batch file may hold (307 MB of pixels)
CIFAR_MAX_ROWS = 100_000
_CIFAR_ROW = 3 * 32 * 32
_SHOW_NAMES = 5
# AlexNet's PCA colour augmentation: eigenvalues and eigenvectors of the ImageNet RGB covariance in 0..1 units
_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], dtype=np.float32
)

Image = Union[str, np.ndarray]


def _class_index(name: str, class_names: Sequence[str], where: str) -> int:
    try:
        return list(class_names).index(name)
    except ValueError:
        shown = ", ".join(list(class_names)[:5]) + (", ..." if len(class_names) > 5 else "")
        raise DataError(
            f"{where}: class {name!r} is not one of the model's {len(class_names)} classes ({shown}); "
            "the test classes must be named as the training classes"
        ) from None


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _leave_out_outside(num_kept: int, outside: List[str], root: Path) -> None:
    if outside:
        shown = ", ".join(outside[:_SHOW_NAMES]) + (
            f" and {len(outside) - _SHOW_NAMES} more" if len(outside) > _SHOW_NAMES else ""
        )
        logger.warning(
            "%s: %d of %d images resolve outside the image folder (a symlink leading elsewhere, or '..' "
            "in a name) and are left out: %s (set data.allow_outside_root: true to read them)",
            root,
            len(outside),
            num_kept + len(outside),
            shown,
        )


def _walk_images(folder: Path, root_real: str, allow_outside_root: bool, outside: List[str]) -> List[str]:
    """The image files under ``folder`` (sub-folders included, symlinked sub-folders not followed, as
    ``Path.rglob``), in ``rglob``'s sorted order; those resolving outside ``root_real`` go to ``outside``
    unless ``allow_outside_root``. Only symlinks are resolved (one ``realpath`` each), so that a folder of
    a million plain files costs no more than listing it."""
    folder_inside = allow_outside_root or _within(os.path.realpath(folder), root_real)
    found: List[Path] = []
    pending = [str(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            if e.is_dir():
                if not e.is_symlink():
                    pending.append(e.path)
            elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                if not allow_outside_root and not (
                    folder_inside and (not e.is_symlink() or _within(os.path.realpath(e.path), root_real))
                ):
                    outside.append(e.path)
                else:
                    found.append(Path(e.path))
    return [str(p) for p in sorted(found)]


def read_imagefolder(
    root: os.PathLike | str, class_names: Optional[Sequence[str]] = None, *, allow_outside_root: bool = False
) -> Tuple[List[str], np.ndarray, List[str]]:
    """``(image paths, int64 labels, class names)`` of ``root/<class>/*``. Without ``class_names`` the classes
    are the sorted sub-folders; with them, every sub-folder must be one of them. Images that resolve outside
    ``root`` (a symlinked class folder or file leading elsewhere) are left out with a warning unless
    ``allow_outside_root``; their class stays in the class list."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found (expected root/<class>/<image>)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root}: no class sub-folders; the imagefolder layout is root/<class>/<image>")
    names = list(class_names) if class_names is not None else folders
    root_real = os.path.realpath(root)
    paths: List[str] = []
    labels: List[int] = []
    outside: List[str] = []
    for folder in folders:
        label = _class_index(folder, names, str(root / folder))
        files = _walk_images(root / folder, root_real, allow_outside_root, outside)
        paths += files
        labels += [label] * len(files)
    _leave_out_outside(len(paths), outside, root)
    if not paths:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return paths, np.asarray(labels, dtype=np.int64), names


def read_imagenet_val(
    image_root: os.PathLike | str,
    labels: os.PathLike | str,
    class_names: Sequence[str],
    synsets: Optional[os.PathLike | str] = None,
    *,
    allow_outside_root: bool = False,
) -> Tuple[List[str], np.ndarray]:
    """``(image paths, int64 labels)`` of the flat ImageNet validation folder.

    ``labels`` is Kaggle's ``LOC_val_solution.csv`` (``ImageId`` -> ``image_root/<ImageId>.JPEG``) or the
    devkit ground truth text (needs ``synsets``, the ``map_clsloc.txt`` its ids refer to; line ``i`` labels
    the ``i``-th ``*.JPEG`` of ``image_root`` in sorted order). Labels are positions of the WNIDs in
    ``class_names``. Images that resolve outside ``image_root`` (an ``ImageId`` with ``..``, a symlink leading
    elsewhere) are left out with a warning unless ``allow_outside_root``.
    """
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: validation image folder not found")
    if str(labels).lower().endswith(".csv"):
        known = Synsets(tuple(class_names), tuple(class_names), "classes")
        entries = [
            (str(root / f"{im.name}.JPEG"), im.labels) for im in read_kaggle_solution(labels, known, split="val")
        ]
    else:
        if not synsets:
            raise ConfigError(
                f"{labels}: the devkit ground truth holds devkit ids; set synsets: map_clsloc.txt in the "
                "data entry so that they can be turned into WNIDs"
            )
        files = sorted(str(p) for p in root.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        gt = read_ground_truth_labels(labels, read_synsets(synsets), num_images=len(files))
        entries = list(zip(files, gt))
    paths, out, outside = [], [], []
    root_real = os.path.realpath(root)
    for path, wnids in entries:
        if len(set(wnids)) != 1:
            raise DataError(
                f"{labels}: {Path(path).name} has {len(set(wnids))} classes ({', '.join(wnids)}); "
                "classification needs one per image"
            )
        label = _class_index(wnids[0], class_names, f"{labels}: {Path(path).name}")
        if not allow_outside_root and not _within(os.path.realpath(path), root_real):
            outside.append(path)
            continue
        paths.append(path)
        out.append(label)
    _leave_out_outside(len(paths), outside, root)
    return paths, np.asarray(out, dtype=np.int64)


def _cifar_entry(batch: dict, key: str, path: Path):
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise DataError(f"{path}: no {key!r} entry; is this a CIFAR-10 python batch (cifar-10-batches-py)?")


def _load_cifar_pickle(path: Path, max_bytes: int) -> dict:
    """A CIFAR pickle as a dict, through the allow-list unpickler (which refuses an array declared larger than
    the file before allocating it); anything else is a :class:`DataError` naming the file."""
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(
            f"{path}: {size} bytes is more than a CIFAR-10 python file holds (at most {max_bytes}); "
            "image_root must be the extracted cifar-10-batches-py folder"
        )
    try:
        obj = safe_load_pickle(path)
    except WeightsError as e:
        reason = str(e).removeprefix(f"{path}: ")
        raise DataError(f"{path}: not a CIFAR-10 python batch: {reason}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch: expected a dict, found {type(obj).__name__}")
    return obj


def _cifar_classes(path: Path) -> List[str]:
    """The class names of ``batches.meta``: a dict whose ``label_names`` is a list of strings."""
    raw = _cifar_entry(_load_cifar_pickle(path, 1 << 20), "label_names", path)
    if not (isinstance(raw, (list, tuple)) and 2 <= len(raw) <= 1000 and all(isinstance(c, (str, bytes)) for c in raw)):
        shown = repr(raw)[:80]
        raise DataError(
            f"{path}: 'label_names' must be a list of 2 or more class names (strings), got {shown}; "
            "is this the batches.meta of cifar-10-batches-py?"
        )
    try:
        return [c.decode() if isinstance(c, bytes) else c for c in raw]
    except UnicodeDecodeError:
        raise DataError(f"{path}: 'label_names' holds a name that is not UTF-8 text") from None


def _cifar_batch(path: Path, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(uint8 (N, 3072), int64 (N,))`` of one batch file, every shape and label checked."""
    batch = _load_cifar_pickle(path, CIFAR_MAX_ROWS * (_CIFAR_ROW + 64) + (1 << 20))
    data = _cifar_entry(batch, "data", path)
    raw_labels = _cifar_entry(batch, "labels", path)
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _CIFAR_ROW
        and 0 < len(data) <= CIFAR_MAX_ROWS
    ):
        what = (
            f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        )
        raise DataError(
            f"{path}: 'data' must be a uint8 array of shape (N, {_CIFAR_ROW}) with 1 <= N <= "
            f"{CIFAR_MAX_ROWS}, got {what}"
        )
    if not (isinstance(raw_labels, (list, tuple, np.ndarray)) and len(raw_labels) == len(data)):
        what = f"{len(raw_labels)}" if hasattr(raw_labels, "__len__") else f"a {type(raw_labels).__name__}"
        raise DataError(f"{path}: 'labels' must hold one class index per image ({len(data)}), got {what}")
    if isinstance(raw_labels, np.ndarray):
        ok = raw_labels.ndim == 1 and raw_labels.dtype.kind in "iu"
    else:
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw_labels)
    if not ok:
        raise DataError(f"{path}: 'labels' must be integers (class indices)")
    lab = np.asarray(raw_labels, dtype=np.int64)
    bad = np.flatnonzero((lab < 0) | (lab >= num_classes))
    if len(bad):
        raise DataError(f"{path}: label {int(lab[bad[0]])} of image {int(bad[0])} is outside 0..{num_classes - 1}")
    return data, lab


def read_cifar10(root: os.PathLike | str, split: str = "train") -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """``(uint8 images (N, 32, 32, 3) RGB, int64 labels (N,), class names)`` of the CIFAR-10 python batches
    in ``root`` (``data_batch_1..5`` or ``test_batch``), unpickled with the allow-list loader.

    Raises:
        DataError: a batch or ``batches.meta`` that is not what CIFAR-10 holds (see the module docstring),
            naming the file.
    """
    root = Path(root)
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root}: CIFAR-10 batch(es) {', '.join(missing)} not found; image_root must be the "
            "extracted cifar-10-batches-py folder"
        )
    classes = list(CIFAR10_CLASSES)
    if (root / "batches.meta").is_file():
        classes = _cifar_classes(root / "batches.meta")
    images, labels = [], []
    for n in names:
        data, lab = _cifar_batch(root / n, len(classes))
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes


class TrainTransform:
    """The paper's training augmentation on an RGB uint8 image, driven by a seeded generator: the shorter
    side resized to a random size in ``[scale_min, scale_max]`` (0: unchanged), ``pad`` pixels of zeros
    after normalization (CIFAR), a random ``crop`` x ``crop`` window, a horizontal flip, AlexNet's PCA
    colour noise of std ``lighting``, per-channel mean/std normalization. Returns (3, crop, crop) float32."""

    def __init__(
        self,
        *,
        crop: int,
        scale_min: int = 0,
        scale_max: int = 0,
        pad: int = 0,
        hflip_prob: float = 0.5,
        lighting: float = 0.0,
        mean: Sequence[float] = (0, 0, 0),
        std: Sequence[float] = (1, 1, 1),
    ) -> None:
        self.crop, self.scale_min, self.scale_max, self.pad = crop, scale_min, scale_max, pad
        self.hflip_prob, self.lighting, self.mean, self.std = hflip_prob, lighting, tuple(mean), tuple(std)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.scale_min:
            img = resize_shorter(img, int(rng.integers(self.scale_min, self.scale_max + 1)))
        x = (img.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)
        if self.lighting:
            alpha = rng.normal(0.0, self.lighting, size=3).astype(np.float32)
            x = x + (255.0 * _EIGVEC @ (alpha * _EIGVAL)) / np.float32(self.std)
        if self.pad:
            x = np.pad(x, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        h, w = x.shape[:2]
        if h < self.crop or w < self.crop:
            raise ConfigError(
                f"image of {w}x{h} px is smaller than the {self.crop} px training crop; raise "
                "input.scale_min or lower input.crop"
            )
        y0, x0 = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
        x = x[y0 : y0 + self.crop, x0 : x0 + self.crop]
        if rng.random() < self.hflip_prob:
            x = x[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class ClassificationDataset(Dataset):
    """Images (paths or in-memory uint8 arrays) with int64 labels into positions of ``class_names``.

    ``dataset[(index, seed)]`` is ``(transform(image, rng(seed)), label)`` (the training sampler's keys); an
    image that cannot be read is skipped (a warning naming it, once) for the next readable one with its own
    label, and only when none is left is it an error. ``dataset[index]`` is ``(RGB uint8 (H, W, 3) array,
    label)``, raising :class:`~restransfer.data.image_io.CorruptImageError` for an unreadable image;
    :meth:`read` is the test loop's skipping form. ``max_image_pixels``: images declaring more pixels are not
    decoded (None: no limit). ``num_skipped`` counts the unreadable images over all processes.
    """

    def __init__(
        self,
        images: Union[Sequence[str], np.ndarray],
        labels: np.ndarray,
        class_names: Sequence[str],
        transform: Optional[TrainTransform] = None,
        *,
        max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.class_names, self.transform = list(class_names), transform
        self.max_image_pixels = max_image_pixels
        # one flag per image, in shared memory: DataLoader workers mark what they could not read
        self._unreadable = torch.zeros(len(self.labels), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_skipped(self) -> int:
        """Images found unreadable so far (they are skipped from then on)."""
        return int(self._unreadable.sum())

    @property
    def unreadable(self) -> np.ndarray:
        """(N,) bool: the images found unreadable so far."""
        return self._unreadable.numpy().astype(bool)

    def skipped_names(self, limit: int = _SHOW_NAMES) -> List[str]:
        """The first ``limit`` unreadable images (paths, or ``image <index>`` for in-memory arrays)."""
        idx = np.flatnonzero(self.unreadable)[:limit]
        return [self.images[i] if isinstance(self.images[i], str) else f"image {i}" for i in idx]

    def image(self, index: int) -> np.ndarray:
        item = self.images[index]
        return read_image(item, self.max_image_pixels) if isinstance(item, str) else np.asarray(item)

    def read(self, index: int) -> Optional[np.ndarray]:
        """The image, or None when it cannot be read: a warning names it the first time, and it counts in
        :attr:`num_skipped`."""
        if self._unreadable[index]:
            return None
        try:
            return self.image(index)
        except CorruptImageError as e:
            self._unreadable[index] = 1
            logger.warning("skipping an unreadable image: %s", e)
            return None

    def __getitem__(self, key: Union[int, Tuple[int, Optional[int]]]):
        if isinstance(key, tuple):
            index, seed = key
            n = len(self)
            for attempt in range(n):
                i = (index + attempt) % n
                img = self.read(i)
                if img is not None:
                    return self.transform(img, np.random.default_rng(seed)), int(self.labels[i])
            raise DataError(
                f"none of the {n} training images can be read (first: "
                f"{', '.join(map(str, self.skipped_names()))}; see the warnings above); check "
                "data.train's image_root"
            )
        return self.image(key), int(self.labels[key])

    @staticmethod
    def concat(
        parts: Sequence["ClassificationDataset"], transform: Optional[TrainTransform] = None
    ) -> "ClassificationDataset":
        names = parts[0].class_names
        for p in parts[1:]:
            if p.class_names != names:
                raise DataError(
                    f"the data.train entries have different classes ({len(names)} vs "
                    f"{len(p.class_names)}: {names[:3]} vs {p.class_names[:3]}); give one class list"
                )
        if all(isinstance(p.images, np.ndarray) for p in parts):
            images: Union[list, np.ndarray] = np.concatenate([p.images for p in parts])
        else:
            images = [item for p in parts for item in p.images]
        return ClassificationDataset(
            images,
            np.concatenate([p.labels for p in parts]),
            names,
            transform,
            max_image_pixels=parts[0].max_image_pixels,
        )


def dataset_from_spec(
    spec: DictConfig,
    class_names: Optional[Sequence[str]] = None,
    *,
    allow_outside_root: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ClassificationDataset:
    """The dataset of one config entry (``image_root``, ``format``, ``labels``, ``synsets``, ``split``,
    ``generate``); ``class_names`` fixes the class list (the model's) where the layout does not carry it.
    ``allow_outside_root`` and ``max_image_pixels`` are ``data.allow_outside_root`` and ``data.max_image_pixels``."""
    allow_outside_root = bool(allow_outside_root)
    max_pixels = int(max_image_pixels)
    root = resolve_path(spec.image_root)
    if spec.generate == "shapes":
        ensure_shape_classes(root)
    if spec.format == "imagefolder":
        paths, labels, names = read_imagefolder(root, class_names, allow_outside_root=allow_outside_root)
        return ClassificationDataset(paths, labels, names, max_image_pixels=max_pixels)
    if spec.format == "cifar10":
        images, labels, names = read_cifar10(root, spec.split)
        if class_names is not None and list(class_names) != names:
            raise DataError(f"{root}: CIFAR-10 classes {names} differ from the model's {list(class_names)}")
        return ClassificationDataset(images, labels, names)
    if class_names is None:
        raise ConfigError(
            f"{root}: format imagenet_val carries no class list; give a training set "
            "(train/<wnid>/ folders) or a checkpoint with class names"
        )
    paths, labels = read_imagenet_val(
        root, resolve_path(spec.labels), class_names, resolve_path(spec.synsets), allow_outside_root=allow_outside_root
    )
    return ClassificationDataset(paths, labels, class_names, max_image_pixels=max_pixels)
