"""COCO-format instance datasets: an annotation json plus an image folder, read through pycocotools.

Category ids (COCO's run 1..90 with gaps) become contiguous labels 1..K in the order of their ids;
label 0 is background. ``label_to_cat_id`` maps back when results are written.

Bad data never stops a run:

* images whose ``file_name`` is absolute or climbs out of the image root with ``..`` are refused
  (unless ``allow_outside_root``) and, like images whose file is missing, removed at construction
  with a warning giving their count and the first few names;
* broken annotations (a box with an Infinity or NaN value; with masks, a polygon with fewer than 3
  points or a malformed RLE: counts that are not non-negative integers summing to height * width,
  a compressed string that does not decode to them, a missing or wrong ``size``) are skipped with a
  warning naming the file, the annotation id and the image, and one summary line counting each kind;
  a training image left with none of its annotations is removed. The checks are
  :func:`~restransfer.data.coco_checks.box_problem` and
  :func:`~restransfer.data.coco_checks.segmentation_problems` (:mod:`restransfer.data.coco_checks`, which
  also reads and validates the json and which evaluation applies too, as errors);
* images above ``max_image_pixels`` (``data.max_image_pixels``) by the json's width and height are left
  out at construction with a warning, and a file whose header declares more is skipped when read
  (below): neither is decoded;
* duplicated image, category or annotation ids: a training set warns and keeps the first entry of
  each id; a test set refuses them (evaluation would count a duplicated object twice);
* boxes are clipped to the image; boxes with zero area after clipping are dropped and counted;
* an image that cannot be decoded (unreadable, truncated, above the pixel limit by its header, or not
  of the json's size) is skipped with a warning and counted: a training dataset returns the next
  readable image, a test dataset a black image of the json's size so that every image id keeps
  exactly one sample;
* boxes that become degenerate under augmentation are dropped and counted.

The counters (``num_skipped``, ``num_dropped_boxes``) live in shared memory, so counts made inside
DataLoader worker processes are visible in the main process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from restransfer.boxes import xywh_to_xyxy
from restransfer.data.coco_checks import (  # noqa: F401  (load_coco_json .. rle_counts re-exported)
    box_problem,
    load_coco_json,
    rle_counts,
    segmentation_problem,
    segmentation_problems,
)
from restransfer.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, CorruptImageError, read_image
from restransfer.data.transforms import TrainAugmentation
from restransfer.errors import DataError

__all__ = [
    "CocoDataset",
    "load_coco_json",
    "box_problem",
    "segmentation_problem",
    "segmentation_problems",
    "rle_counts",
    "DATASETS_README",
]

logger = logging.getLogger(__name__)

DATASETS_README = "datasets/README.md"

# Counter slots: one per process (0 = main process, 1.. = DataLoader workers), so that no two
# processes ever write the same slot.
_COUNTER_SLOTS = 129
_SKIPPED, _DROPPED = 0, 1
_SHOW_NAMES = 5
_SHOW_BROKEN = 20  # broken annotations named one by one; the summary line counts them all


def _missing(kind: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{kind} not found: {path} (looked for {path.absolute()}). See {DATASETS_README} for the supported "
        f"layouts and how to get the data; RESTRANSFER_DATASETS moves the root of paths starting with datasets/."
    )


def _outside_root(file_name: str) -> bool:
    """Whether a json ``file_name`` is absolute or leaves its image folder (judged on the text)."""
    norm = os.path.normpath(file_name)
    return os.path.isabs(file_name) or norm == os.pardir or norm.startswith(os.pardir + os.sep)


def _has_segmentation(ann: Dict[str, Any]) -> bool:
    segm = ann.get("segmentation")
    return (isinstance(segm, list) and len(segm) > 0) or (isinstance(segm, dict) and "counts" in segm)


def _existing_files(root: Path, file_names: Sequence[str]) -> set:
    """The subset of ``file_names`` (relative to ``root``) that exist, listing each folder once."""
    found: set = set()
    by_dir: Dict[str, List[str]] = {}
    for name in file_names:
        by_dir.setdefault(os.path.dirname(name), []).append(name)
    for d, names in by_dir.items():
        try:
            with os.scandir(root / d) as it:
                present = {e.name for e in it}
        except OSError:
            continue
        found.update(n for n in names if os.path.basename(n) in present)
    return found


class CocoDataset(Dataset):
    """A COCO-format dataset; ``dataset[i]`` returns ``(image, target)``.

    Args:
        json_path: COCO annotation file.
        image_root: folder that the json's ``file_name`` entries are relative to.
        transforms: a :class:`~restransfer.data.transforms.TrainAugmentation` (``None``: none).
        with_masks: decode instance masks (polygons, compressed or uncompressed RLE) into ``target["masks"]``.
        filter_empty: drop images without any usable (non-crowd, non-empty) box; for training.
        is_train: a training set skips unreadable images by returning the next readable one; a test
            set returns a black image instead, keeping one sample per image id. A training set also
            leaves out images whose annotations are all broken (a test set keeps them, without targets).
        name: shown in warnings; defaults to the json's file name.
        allow_outside_root: accept ``file_name`` values that are absolute or climb out of
            ``image_root`` with ``..`` (refused by default, with a warning naming them). The path text
            is judged, not where symlinks lead, so an image root holding symlinked folders works.
        coco: the annotations as a pycocotools ``COCO`` already built (a format converted in memory, e.g.
            :class:`~restransfer.data.voc_dataset.VocDataset`); ``json_path`` then only names their source.
        max_image_pixels: images with more pixels (by the json's size, or by the file's header when it
            is read) are left out with a warning, never decoded; None: no limit.
        uint8_images: return images as uint8 (3, H, W) in 0..255 instead of float32 in [0, 1]: a quarter
            of the bytes a loader worker copies to the main process (and to the GPU); the detector
            converts them exactly as this class would (``x.float() / 255``), so training sees the
            same numbers. The training loader uses this.

    ``dataset[i]`` (or ``dataset[(i, seed)]`` to fix the augmentation) returns

    * ``image``: torch.float32 (3, H, W), RGB in [0, 1] (after augmentation), or torch.uint8 (3, H, W)
      in 0..255 with ``uint8_images``;
    * ``target``: dict with ``boxes`` float32 (N, 4) internal xyxy on ``image``, ``labels`` int64 (N,)
      in 1..K, ``masks`` uint8 (N, H, W) when ``with_masks``, ``image_id`` (COCO id, int),
      ``orig_size`` (h, w) of the stored image.

    Crowd annotations are not targets; they stay in ``.coco`` for evaluation. Broken annotations
    (see the module docstring; segmentations are judged only ``with_masks``) are not targets either,
    and ``broken_annotations`` counts them by kind.

    Attributes:
        coco: the pycocotools ``COCO`` of the whole file.
        image_ids: COCO image ids in dataset order (sorted by id).
        class_names: category names; ``class_names[i]`` is label ``i + 1``.
        label_to_cat_id, cat_id_to_label: the label <-> category id mappings.
        broken_annotations: ``{"box": n, "polygon": n, "RLE": n}``, the annotations skipped as broken.
    """

    def __init__(
        self,
        json_path: Union[str, os.PathLike],
        image_root: Union[str, os.PathLike],
        *,
        transforms: Optional[TrainAugmentation] = None,
        with_masks: bool = False,
        filter_empty: bool = False,
        is_train: bool = False,
        name: Optional[str] = None,
        allow_outside_root: bool = False,
        max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
        coco: Optional[COCO] = None,
        uint8_images: bool = False,
    ):
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        if coco is None and not self.json_path.is_file():
            raise _missing("annotation file", self.json_path)
        if not self.image_root.is_dir():
            raise _missing("image folder", self.image_root)
        self.name = name or self.json_path.name
        self.transforms = transforms
        self.with_masks = with_masks
        self.is_train = is_train
        self.uint8_images = uint8_images
        self.max_image_pixels = max_image_pixels
        if coco is None:
            coco = load_coco_json(self.json_path, duplicates="drop" if is_train else "error")
        self.coco = coco

        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.class_names: List[str] = [str(c["name"]) for c in cats]
        self.label_to_cat_id: Dict[int, int] = {i + 1: int(c["id"]) for i, c in enumerate(cats)}
        self.cat_id_to_label: Dict[int, int] = {c: label for label, c in self.label_to_cat_id.items()}

        image_ids = sorted(self.coco.imgs)
        if not allow_outside_root:
            image_ids = self._refuse_outside_root(image_ids)
        image_ids = self._drop_too_large(image_ids)
        image_ids = self._drop_missing_files(image_ids)
        self._index_annotations(image_ids)
        if filter_empty:
            self._keep(np.flatnonzero(np.diff(self._offsets) > 0))
        if with_masks:
            self._check_segmentations()
        self._counters = torch.zeros((_COUNTER_SLOTS, 2), dtype=torch.int64).share_memory_()

    # ------------------------------------------------------------------------------ construction

    def _shown_names(self, image_ids: List[int]) -> str:
        shown = ", ".join(str(self.coco.imgs[i]["file_name"]) for i in image_ids[:_SHOW_NAMES])
        more = f" and {len(image_ids) - _SHOW_NAMES} more" if len(image_ids) > _SHOW_NAMES else ""
        return shown + more

    def _refuse_outside_root(self, image_ids: List[int]) -> List[int]:
        outside = [i for i in image_ids if _outside_root(self.coco.imgs[i]["file_name"])]
        if outside:
            logger.warning(
                "%s: %d of %d images have a file_name that is absolute or leaves the image folder %s with '..' and "
                "are left out: %s (set data.allow_outside_root: true to read them)",
                self.json_path,
                len(outside),
                len(image_ids),
                self.image_root,
                self._shown_names(outside),
            )
            refused = set(outside)
            image_ids = [i for i in image_ids if i not in refused]
        return image_ids

    def _drop_too_large(self, image_ids: List[int]) -> List[int]:
        """Leave out the images whose json size is above ``max_image_pixels`` (they are never decoded)."""
        if self.max_image_pixels is None:
            return image_ids
        imgs = self.coco.imgs
        large = [i for i in image_ids if imgs[i]["width"] * imgs[i]["height"] > self.max_image_pixels]
        if large:
            first = imgs[large[0]]
            logger.warning(
                "%s: %d of %d images are larger than data.max_image_pixels (%g megapixels; first: %s, %dx%d) and are "
                "left out without being decoded: %s (raise data.max_image_pixels to read them)",
                self.json_path,
                len(large),
                len(image_ids),
                self.max_image_pixels / 1e6,
                first["file_name"],
                first["width"],
                first["height"],
                self._shown_names(large),
            )
            refused = set(large)
            image_ids = [i for i in image_ids if i not in refused]
        return image_ids

    def _drop_missing_files(self, image_ids: List[int]) -> List[int]:
        names = [self.coco.imgs[i]["file_name"] for i in image_ids]
        present = _existing_files(self.image_root, names)
        missing = [i for i, n in zip(image_ids, names) if n not in present]
        if missing:
            missing_set = set(missing)
            n_anns = sum(len(self.coco.imgToAnns.get(i, ())) for i in missing)
            logger.warning(
                "%s: %d of %d images (with %d annotations) have no file under %s and are left out: %s",
                self.name,
                len(missing),
                len(image_ids),
                n_anns,
                self.image_root,
                self._shown_names(missing),
            )
            image_ids = [i for i in image_ids if i not in missing_set]
        return image_ids

    def _index_annotations(self, image_ids: List[int]) -> None:
        """Flatten the usable non-crowd annotations into arrays (cheap to share with worker processes)."""
        candidates: List[Tuple[int, Dict[str, Any], int]] = []  # (image position, annotation, label)
        unknown_cats = 0
        for pos, img_id in enumerate(image_ids):
            for ann in self.coco.imgToAnns.get(img_id, ()):
                if ann.get("iscrowd", 0):
                    continue
                label = self.cat_id_to_label.get(ann["category_id"])
                if label is None:
                    unknown_cats += 1
                    continue
                candidates.append((pos, ann, label))
        problems = self._problems([ann for _, ann, _ in candidates], [image_ids[pos] for pos, _, _ in candidates])
        boxes, labels, ann_ids = [], [], []
        counts = np.zeros(len(image_ids), dtype=np.int64)
        broken = np.zeros(len(image_ids), dtype=np.int64)
        self.broken_annotations: Dict[str, int] = {"box": 0, "polygon": 0, "RLE": 0}
        for (pos, ann, label), problem in zip(candidates, problems):
            if problem is not None:
                self._skip_broken(ann, self.coco.imgs[image_ids[pos]], *problem)
                broken[pos] += 1
                continue
            boxes.append(ann["bbox"])
            labels.append(label)
            ann_ids.append(ann["id"])
            counts[pos] += 1
        nothing_left = np.flatnonzero((broken > 0) & (counts == 0))
        self._report_broken(len(nothing_left))
        if unknown_cats:
            logger.warning(
                "%s: %d annotations use category ids missing from the categories list; ignored", self.name, unknown_cats
            )
        boxes_xyxy = xywh_to_xyxy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
        sizes = np.array(
            [(self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]) for i in image_ids], dtype=np.float64
        ).reshape(-1, 2)
        per_box_size = np.repeat(sizes, counts, axis=0)
        np.clip(boxes_xyxy[:, 0::2], 0, per_box_size[:, :1], out=boxes_xyxy[:, 0::2])
        np.clip(boxes_xyxy[:, 1::2], 0, per_box_size[:, 1:], out=boxes_xyxy[:, 1::2])
        keep = (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])
        self.num_dropped_at_load = int((~keep).sum())
        if self.num_dropped_at_load:
            logger.warning(
                "%s: %d boxes have zero area inside their image (after clipping) and are dropped",
                self.name,
                self.num_dropped_at_load,
            )
        owner = np.repeat(np.arange(len(image_ids)), counts)[keep]
        self._boxes = boxes_xyxy[keep].astype(np.float32)
        self._labels = np.asarray(labels, dtype=np.int64)[keep]
        self._ann_ids = np.asarray(ann_ids, dtype=np.int64)[keep]
        self._offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(image_ids)))])
        self.image_ids = list(image_ids)
        self._sizes_hw = sizes[:, ::-1].astype(np.int64)
        if self.is_train and len(nothing_left):
            self._keep(np.setdiff1d(np.arange(len(image_ids)), nothing_left))

    def _problems(self, anns: List[Dict[str, Any]], img_ids: List[int]) -> List[Optional[Tuple[str, str]]]:
        """``(kind, description)`` of each broken annotation, None for usable ones (segmentations are
        judged only with masks: a box-only model never reads them)."""
        problems = [None if (p := box_problem(a["bbox"])) is None else ("box", p) for a in anns]
        if self.with_masks:
            imgs = self.coco.imgs
            segm = segmentation_problems(
                [a.get("segmentation") for a in anns], [(imgs[i]["height"], imgs[i]["width"]) for i in img_ids]
            )
            problems = [p or q for p, q in zip(problems, segm)]
        return problems

    def _skip_broken(self, ann: Dict[str, Any], img: Dict[str, Any], kind: str, problem: str) -> None:
        """Count a broken annotation by kind; the first few are named in a warning each."""
        if sum(self.broken_annotations.values()) < _SHOW_BROKEN:
            logger.warning(
                "%s: annotation %s of image %s (%s): %s; the annotation is skipped",
                self.json_path,
                ann["id"],
                img["id"],
                img["file_name"],
                problem,
            )
        self.broken_annotations[kind] += 1

    def _report_broken(self, num_emptied: int) -> None:
        total = sum(self.broken_annotations.values())
        if not total:
            return
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.broken_annotations.items() if n)
        named = "" if total <= _SHOW_BROKEN else f"; the first {_SHOW_BROKEN} are named above"
        emptied = ""
        if num_emptied:
            emptied = f"; {num_emptied} images have no other annotation and are " + (
                "left out" if self.is_train else "kept without targets"
            )
        logger.warning(
            "%s: %d broken annotations skipped (%s)%s%s. Fix or remove them in the annotation file "
            "(COCO format: https://cocodataset.org/#format-data)",
            self.json_path,
            total,
            kinds,
            named,
            emptied,
        )

    @property
    def num_targets(self) -> int:
        """Usable (non-crowd, non-broken, non-empty) annotations over the dataset's images."""
        return len(self._boxes)

    def _keep(self, positions: np.ndarray) -> None:
        """Restrict the dataset to the images at ``positions`` (sorted)."""
        starts, ends = self._offsets[positions], self._offsets[positions + 1]
        sel = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(positions) else np.zeros(0, int)
        self._boxes, self._labels, self._ann_ids = self._boxes[sel], self._labels[sel], self._ann_ids[sel]
        self._offsets = np.concatenate([[0], np.cumsum(ends - starts)])
        self.image_ids = [self.image_ids[p] for p in positions]
        self._sizes_hw = self._sizes_hw[positions]

    def _check_segmentations(self) -> None:
        """Warn once about target annotations without a segmentation (their box becomes the mask)."""
        bad = [int(a) for a in self._ann_ids if not _has_segmentation(self.coco.anns[int(a)])]
        if bad:
            logger.warning(
                "%s: %d of %d annotations have no segmentation (first: id %d); their boxes are used as masks",
                self.name,
                len(bad),
                len(self._ann_ids),
                bad[0],
            )

    # ----------------------------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self.image_ids)

    def aspect_ratios(self) -> np.ndarray:
        """Width / height of every image (float64, (len,)), from the json without decoding."""
        return self._sizes_hw[:, 1] / self._sizes_hw[:, 0]

    def image_path(self, index: int) -> Path:
        return self.image_root / self.coco.imgs[self.image_ids[index]]["file_name"]

    @property
    def num_skipped(self) -> int:
        """Images skipped because they could not be decoded, over all processes."""
        return int(self._counters[:, _SKIPPED].sum())

    @property
    def num_dropped_boxes(self) -> int:
        """Boxes dropped: zero area after clipping at construction plus degenerate after augmentation."""
        return self.num_dropped_at_load + int(self._counters[:, _DROPPED].sum())

    def _count(self, which: int, n: int = 1) -> None:
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else 1 + info.id % (_COUNTER_SLOTS - 1)
        self._counters[slot, which] += n

    # ----------------------------------------------------------------------------------- loading

    def __getitem__(self, key: Union[int, Tuple[int, Optional[int]]]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} images")
        index %= n
        for attempt in range(n):
            i = (index + attempt) % n
            h, w = (int(v) for v in self._sizes_hw[i])
            try:
                image = read_image(self.image_path(i), self.max_image_pixels)
                if image.shape[:2] != (h, w):
                    raise CorruptImageError(
                        f"{self.image_path(i)}: decoded size {image.shape[1]}x{image.shape[0]} differs from the "
                        f"json's {w}x{h}; the annotations would not fit it"
                    )
            except CorruptImageError as e:
                self._count(_SKIPPED)
                action = "using the next image" if self.is_train else "using a black image"
                logger.warning("%s: skipping image %d (id %d): %s; %s", self.name, i, self.image_ids[i], e, action)
                if self.is_train:
                    continue
                image = np.zeros((h, w, 3), dtype=np.uint8)
            return self._prepare(i, image, seed)
        raise DataError(f"{self.name}: none of the {n} images under {self.image_root} can be decoded")

    def _prepare(self, i: int, image: np.ndarray, seed: Optional[int]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        h, w = image.shape[:2]
        lo, hi = self._offsets[i], self._offsets[i + 1]
        boxes, labels = self._boxes[lo:hi], self._labels[lo:hi]
        masks = self._masks(self._ann_ids[lo:hi], boxes, h, w) if self.with_masks else None
        if self.transforms is not None:
            out = self.transforms(image, boxes, labels, masks, seed=seed)
            if out["num_dropped"]:
                self._count(_DROPPED, out["num_dropped"])
            image, boxes, labels, masks = out["image"], out["boxes"], out["labels"], out["masks"]
        h_out, w_out = image.shape[:2]
        if self.uint8_images:
            tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        else:
            # HWC uint8 -> CHW float32 in one pass. numpy rather than torch: torch would spread this small
            # op over its intra-op threads, which costs more than the op itself in a busy main process.
            chw = np.empty((3, h_out, w_out), dtype=np.float32)
            np.divide(image.transpose(2, 0, 1), np.float32(255.0), out=chw)
            tensor = torch.from_numpy(chw)
        target: Dict[str, Any] = {
            "boxes": torch.from_numpy(np.array(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(np.array(labels, dtype=np.int64)),
            "image_id": int(self.image_ids[i]),
            "orig_size": (h, w),
        }
        if masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))
        return tensor, target

    def _masks(self, ann_ids: np.ndarray, boxes: np.ndarray, h: int, w: int) -> np.ndarray:
        """uint8 (N, H, W) masks of the annotations ``ann_ids`` (boxes (N, 4) stand in for missing outlines)."""
        masks = np.zeros((len(ann_ids), h, w), dtype=np.uint8)
        rles, slots = [], []
        for k, ann_id in enumerate(ann_ids):
            rle = self._annotation_rle(self.coco.anns[int(ann_id)], h, w)
            if rle is None:
                # No usable outline: the box is the best available mask.
                x1, y1, x2, y2 = boxes[k]
                masks[k, int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = 1
            else:
                rles.append(rle)
                slots.append(k)
        if rles:
            # One decode call for all: (H, W, n) Fortran-ordered -> (n, H, W).
            masks[slots] = mask_util.decode(rles).transpose(2, 0, 1)
        return masks

    @staticmethod
    def _annotation_rle(ann: Dict[str, Any], h: int, w: int) -> Optional[Dict[str, Any]]:
        """Compressed RLE of an annotation's segmentation, or ``None`` when it has no outline.

        Broken segmentations were left out at construction, so pycocotools gets only what it can
        decode (``h``, ``w``: the image's size, which decoding checked against the json's).
        """
        segm = ann.get("segmentation")
        if isinstance(segm, list) and segm:
            return mask_util.merge(mask_util.frPyObjects(segm, h, w))
        if isinstance(segm, dict):
            if isinstance(segm["counts"], list):  # uncompressed RLE
                return mask_util.frPyObjects(segm, h, w)
            return segm
        # Missing outlines were reported once at construction.
        return None
