"""Classification data: the readers of the three layouts, the dataset, and the training/test transforms.

Layouts (``format`` of a ``data.train`` / ``data.test`` entry):

* ``imagefolder``: ``image_root/<class>/*.{jpg,jpeg,png,bmp,webp}``; the class is the sub-folder name and
  the classes are the sorted folder names (ImageNet's ``train/<wnid>/*.JPEG`` is one such folder).
* ``imagenet_val``: the flat ImageNet validation folder with its labels, either the devkit ground truth
  (``ILSVRC2015_clsloc_validation_ground_truth.txt`` with ``synsets: map_clsloc.txt``; line ``i`` is the
  ``i``-th image in sorted order) or Kaggle's ``LOC_val_solution.csv``, read by the localization readers.
* ``cifar10``: the CIFAR-10 python batches (``data_batch_1..5`` for ``split: train``, ``test_batch`` for
  ``split: test``, class names from ``batches.meta``), read with the safe unpickler.

Class indices are positions in a class list: the training set's, or the checkpoint's at evaluation, so that
a test folder's classes map to the model's outputs by name.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.ilsvrc import Synsets, read_synsets
from ..data.image_io import read_image
from ..data.imagenet_loc import read_ground_truth_labels, read_kaggle_solution
from ..serialization import safe_load_pickle

__all__ = ["ClassificationDataset", "read_imagefolder", "read_imagenet_val", "read_cifar10", "TrainTransform",
           "resize_shorter", "normalize", "CIFAR10_CLASSES", "IMAGE_SUFFIXES", "dataset_from_spec"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# AlexNet's PCA colour augmentation: eigenvalues and eigenvectors of the ImageNet RGB covariance in 0..1 units
_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
                   dtype=np.float32)

Image = Union[str, np.ndarray]


def _class_index(name: str, class_names: Sequence[str], where: str) -> int:
    try:
        return list(class_names).index(name)
    except ValueError:
        shown = ", ".join(list(class_names)[:5]) + (", ..." if len(class_names) > 5 else "")
        raise ValueError(f"{where}: class {name!r} is not one of the model's {len(class_names)} classes ({shown}); "
                         "the test classes must be named as the training classes") from None


def read_imagefolder(root: os.PathLike | str, class_names: Optional[Sequence[str]] = None
                     ) -> Tuple[List[str], np.ndarray, List[str]]:
    """``(image paths, int64 labels, class names)`` of ``root/<class>/*``. Without ``class_names`` the classes
    are the sorted sub-folders; with them, every sub-folder must be one of them."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found (expected root/<class>/<image>)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root}: no class sub-folders; the imagefolder layout is root/<class>/<image>")
    names = list(class_names) if class_names is not None else folders
    paths, labels = [], []
    for folder in folders:
        label = _class_index(folder, names, str(root / folder))
        files = sorted(p for p in (root / folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return paths, np.asarray(labels, dtype=np.int64), names


def read_imagenet_val(image_root: os.PathLike | str, labels: os.PathLike | str, class_names: Sequence[str],
                      synsets: Optional[os.PathLike | str] = None) -> Tuple[List[str], np.ndarray]:
    """``(image paths, int64 labels)`` of the flat ImageNet validation folder.

    ``labels`` is Kaggle's ``LOC_val_solution.csv`` (``ImageId`` -> ``image_root/<ImageId>.JPEG``) or the
    devkit ground truth text (needs ``synsets``, the ``map_clsloc.txt`` its ids refer to; line ``i`` labels
    the ``i``-th ``*.JPEG`` of ``image_root`` in sorted order). Labels are positions of the WNIDs in
    ``class_names``.
    """
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: validation image folder not found")
    if str(labels).lower().endswith(".csv"):
        known = Synsets(tuple(class_names), tuple(class_names), "classes")
        entries = [(str(root / f"{im.name}.JPEG"), im.labels) for im in read_kaggle_solution(labels, known, split="val")]
    else:
        if not synsets:
            raise ValueError(f"{labels}: the devkit ground truth holds devkit ids; set synsets: map_clsloc.txt in the "
                             "data entry so that they can be turned into WNIDs")
        files = sorted(str(p) for p in root.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        gt = read_ground_truth_labels(labels, read_synsets(synsets), num_images=len(files))
        entries = list(zip(files, gt))
    paths, out = [], []
    for path, wnids in entries:
        if len(set(wnids)) != 1:
            raise ValueError(f"{labels}: {Path(path).name} has {len(set(wnids))} classes ({', '.join(wnids)}); "
                             "classification needs one per image")
        paths.append(path)
        out.append(_class_index(wnids[0], class_names, f"{labels}: {Path(path).name}"))
    return paths, np.asarray(out, dtype=np.int64)


def _cifar_entry(batch: dict, key: str, path: Path):
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise ValueError(f"{path}: no {key!r} entry; is this a CIFAR-10 python batch (cifar-10-batches-py)?")


def read_cifar10(root: os.PathLike | str, split: str = "train") -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """``(uint8 images (N, 32, 32, 3) RGB, int64 labels (N,), class names)`` of the CIFAR-10 python batches
    in ``root`` (``data_batch_1..5`` or ``test_batch``), unpickled with the allow-list loader."""
    root = Path(root)
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: CIFAR-10 batch(es) {', '.join(missing)} not found; image_root must be the "
                                "extracted cifar-10-batches-py folder")
    classes = list(CIFAR10_CLASSES)
    if (root / "batches.meta").is_file():
        meta = safe_load_pickle(root / "batches.meta")
        raw = _cifar_entry(meta, "label_names", root / "batches.meta") if isinstance(meta, dict) else None
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in raw]
    images, labels = [], []
    for n in names:
        path = root / n
        batch = safe_load_pickle(path)
        if not isinstance(batch, dict):
            raise ValueError(f"{path}: expected a dict, found {type(batch).__name__}")
        data = np.asarray(_cifar_entry(batch, "data", path))
        lab = np.asarray(_cifar_entry(batch, "labels", path), dtype=np.int64).reshape(-1)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(lab):
            raise ValueError(f"{path}: 'data' must be uint8 (N, 3072) with one label per row, got {data.dtype} "
                             f"{data.shape} and {len(lab)} labels")
        bad = np.flatnonzero((lab < 0) | (lab >= len(classes)))
        if len(bad):
            raise ValueError(f"{path}: label {int(lab[bad[0]])} of image {int(bad[0])} is outside 0..{len(classes) - 1}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8/float (H, W, 3) so that its shorter side is ``size`` (aspect ratio kept)."""
    h, w = img.shape[:2]
    if min(h, w) == size:
        return img
    s = size / min(h, w)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (max(size, round(w * s)), max(size, round(h * s))), interpolation=interp)


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB (H, W, 3) in 0..255 -> float32 (3, H, W) tensor ``(img - mean) / std``."""
    out = (img.astype(np.float32) - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


class TrainTransform:
    """The paper's training augmentation on an RGB uint8 image, driven by a seeded generator: the shorter
    side resized to a random size in ``[scale_min, scale_max]`` (0: unchanged), ``pad`` pixels of zeros
    after normalization (CIFAR), a random ``crop`` x ``crop`` window, a horizontal flip, AlexNet's PCA
    colour noise of std ``lighting``, per-channel mean/std normalization. Returns (3, crop, crop) float32."""

    def __init__(self, *, crop: int, scale_min: int = 0, scale_max: int = 0, pad: int = 0, hflip_prob: float = 0.5,
                 lighting: float = 0.0, mean: Sequence[float] = (0, 0, 0), std: Sequence[float] = (1, 1, 1)) -> None:
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
            raise ValueError(f"image of {w}x{h} px is smaller than the {self.crop} px training crop; raise "
                             "input.scale_min or lower input.crop")
        y0, x0 = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
        x = x[y0:y0 + self.crop, x0:x0 + self.crop]
        if rng.random() < self.hflip_prob:
            x = x[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class ClassificationDataset(Dataset):
    """Images (paths or in-memory uint8 arrays) with int64 labels into positions of ``class_names``.

    ``dataset[(index, seed)]`` is ``(transform(image, rng(seed)), label)`` (the training sampler's keys);
    ``dataset[index]`` is ``(RGB uint8 (H, W, 3) array, label)`` for the test loop.
    """

    def __init__(self, images: Union[Sequence[str], np.ndarray], labels: np.ndarray, class_names: Sequence[str],
                 transform: Optional[TrainTransform] = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.class_names, self.transform = list(class_names), transform

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        item = self.images[index]
        return read_image(item) if isinstance(item, str) else np.asarray(item)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            img = self.image(index)
            return self.transform(img, np.random.default_rng(seed)), int(self.labels[index])
        return self.image(key), int(self.labels[key])

    @staticmethod
    def concat(parts: Sequence["ClassificationDataset"], transform=None) -> "ClassificationDataset":
        names = parts[0].class_names
        for p in parts[1:]:
            if p.class_names != names:
                raise ValueError(f"the data.train entries have different classes ({len(names)} vs "
                                 f"{len(p.class_names)}: {names[:3]} vs {p.class_names[:3]}); give one class list")
        if all(isinstance(p.images, np.ndarray) for p in parts):
            images: Union[list, np.ndarray] = np.concatenate([p.images for p in parts])
        else:
            images = [item for p in parts for item in p.images]
        return ClassificationDataset(images, np.concatenate([p.labels for p in parts]), names, transform)


def dataset_from_spec(spec, class_names: Optional[Sequence[str]] = None) -> ClassificationDataset:
    """The dataset of one config entry (``image_root``, ``format``, ``labels``, ``synsets``, ``split``,
    ``generate``); ``class_names`` fixes the class list (the model's) where the layout does not carry it."""
    from ..yaml_config import resolve_path

    root = resolve_path(spec.image_root)
    if spec.generate == "shapes":
        from .synthetic import ensure_shape_classes

        ensure_shape_classes(root)
    if spec.format == "imagefolder":
        paths, labels, names = read_imagefolder(root, class_names)
        return ClassificationDataset(paths, labels, names)
    if spec.format == "cifar10":
        images, labels, names = read_cifar10(root, spec.split)
        if class_names is not None and list(class_names) != names:
            raise ValueError(f"{root}: CIFAR-10 classes {names} differ from the model's {list(class_names)}")
        return ClassificationDataset(images, labels, names)
    if class_names is None:
        raise ValueError(f"{root}: format imagenet_val carries no class list; give a training set "
                         "(train/<wnid>/ folders) or a checkpoint with class names")
    paths, labels = read_imagenet_val(root, resolve_path(spec.labels), class_names, resolve_path(spec.synsets))
    return ClassificationDataset(paths, labels, class_names)
