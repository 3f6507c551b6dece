"""COCO-format instance datasets: an annotation json plus an image folder, read through pycocotools.

Category ids (COCO's run 1..90 with gaps) become contiguous labels 1..K in the order of their ids;
label 0 is background. ``label_to_cat_id`` maps back when results are written.

Bad data never stops a run:

* images whose file is missing are removed at construction, with a warning giving their count and
  the first few names;
* boxes are clipped to the image; boxes with zero area after clipping are dropped and counted;
* an image that cannot be decoded (unreadable, truncated, or not of the json's size) is skipped with
  a warning and counted: a training dataset returns the next readable image, a test dataset a
  black image of the json's size so that every image id keeps exactly one sample;
* boxes that become degenerate under augmentation are dropped and counted.

The counters (``num_skipped``, ``num_dropped_boxes``) live in shared memory, so counts made inside
DataLoader worker processes are visible in the main process.
"""
from __future__ import annotations

import contextlib
import io
import json
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
from restransfer.data.image_io import CorruptImageError, read_image
from restransfer.data.transforms import DetectionTransform

__all__ = ["CocoDataset", "load_coco_json", "DATASETS_README"]

logger = logging.getLogger(__name__)

DATASETS_README = "datasets/README.md"

# Counter slots: one per process (0 = main process, 1.. = DataLoader workers), so that no two
# processes ever write the same slot.
_COUNTER_SLOTS = 129
_SKIPPED, _DROPPED = 0, 1
_SHOW_NAMES = 5


def _missing(kind: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{kind} not found: {path} (looked for {path.absolute()}). See {DATASETS_README} for the supported "
        f"layouts and how to get the data; RESTRANSFER_DATASETS moves the root of paths starting with datasets/."
    )


def _require(cond: bool, json_path: Path, where: str, what: str) -> None:
    if not cond:
        raise ValueError(f"{json_path}: {where}: {what}. Fix the annotation file (COCO format: "
                         f"https://cocodataset.org/#format-data)")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_coco_json(json_path: Union[str, os.PathLike]) -> COCO:
    """Read and validate a COCO-format annotation file into a pycocotools ``COCO`` (no output printed).

    Checks the fields the toolkit relies on (``images[i].id/file_name/width/height``,
    ``annotations[i].id/image_id/category_id/bbox``, ``categories[i].id/name``) and raises a
    ``ValueError`` naming the file, the entry index and the key when one is missing or malformed.
    """
    json_path = Path(json_path)
    try:
        with open(json_path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: line {e.lineno}: not valid JSON: {e.msg}") from None
    _require(isinstance(data, dict), json_path, "top level", "expected an object with images/annotations/categories")
    for key in ("images", "categories"):
        _require(isinstance(data.get(key), list), json_path, key, f"missing or not a list")
    data.setdefault("annotations", [])
    _require(isinstance(data["annotations"], list), json_path, "annotations", "not a list")
    for i, img in enumerate(data["images"]):
        ok = isinstance(img, dict) and all(k in img for k in ("id", "file_name", "width", "height"))
        _require(ok, json_path, f"images[{i}]", "needs id, file_name, width and height")
        _require(_is_number(img["width"]) and _is_number(img["height"]) and img["width"] > 0 and img["height"] > 0,
                 json_path, f"images[{i}] (id {img['id']})",
                 f"width/height must be positive numbers, got {img['width']!r}x{img['height']!r}")
    image_ids = {img["id"] for img in data["images"]}
    for i, cat in enumerate(data["categories"]):
        _require(isinstance(cat, dict) and "id" in cat and "name" in cat, json_path, f"categories[{i}]",
                 "needs id and name")
    for i, ann in enumerate(data["annotations"]):
        ok = isinstance(ann, dict) and all(k in ann for k in ("image_id", "category_id", "bbox"))
        _require(ok, json_path, f"annotations[{i}]", "needs image_id, category_id and bbox")
        bbox = ann["bbox"]
        _require(isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox)), json_path,
                 f"annotations[{i}].bbox",
                 f"expected [x, y, w, h], got {bbox!r}")
        # pycocotools needs ids; files produced by other tools sometimes leave them out.
        ann.setdefault("id", i + 1)
    orphans = [a for a in data["annotations"] if a["image_id"] not in image_ids]
    if orphans:
        logger.warning("%s: %d annotations refer to image ids missing from images (first: %r); ignored",
                       json_path, len(orphans), orphans[0]["image_id"])
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in image_ids]
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


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
        transforms: a :class:`~restransfer.data.transforms.DetectionTransform` (``None``: none).
        with_masks: decode instance masks (polygons, compressed or uncompressed RLE) into ``target["masks"]``.
        filter_empty: drop images without any usable (non-crowd, non-empty) box; for training.
        is_train: a training set skips unreadable images by returning the next readable one; a test
            set returns a black image instead, keeping one sample per image id.
        name: shown in warnings; defaults to the json's file name.

    ``dataset[i]`` (or ``dataset[(i, seed)]`` to fix the augmentation) returns

    * ``image``: torch.float32 (3, H, W), RGB in [0, 1] (after augmentation);
    * ``target``: dict with ``boxes`` float32 (N, 4) internal xyxy on ``image``, ``labels`` int64 (N,)
      in 1..K, ``masks`` uint8 (N, H, W) when ``with_masks``, ``image_id`` (COCO id, int),
      ``orig_size`` (h, w) of the stored image.

    Crowd annotations are not targets; they stay in ``.coco`` for evaluation.

    Attributes:
        coco: the pycocotools ``COCO`` of the whole file.
        image_ids: COCO image ids in dataset order (sorted by id).
        class_names: category names; ``class_names[i]`` is label ``i + 1``.
        label_to_cat_id, cat_id_to_label: the label <-> category id mappings.
    """

    def __init__(
        self,
        json_path: Union[str, os.PathLike],
        image_root: Union[str, os.PathLike],
        *,
        transforms: Optional[DetectionTransform] = None,
        with_masks: bool = False,
        filter_empty: bool = False,
        is_train: bool = False,
        name: Optional[str] = None,
    ):
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        if not self.json_path.is_file():
            raise _missing("annotation file", self.json_path)
        if not self.image_root.is_dir():
            raise _missing("image folder", self.image_root)
        self.name = name or self.json_path.name
        self.transforms = transforms
        self.with_masks = with_masks
        self.is_train = is_train
        self.coco = load_coco_json(self.json_path)

        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.class_names: List[str] = [str(c["name"]) for c in cats]
        self.label_to_cat_id: Dict[int, int] = {i + 1: int(c["id"]) for i, c in enumerate(cats)}
        self.cat_id_to_label: Dict[int, int] = {c: l for l, c in self.label_to_cat_id.items()}

        image_ids = sorted(self.coco.imgs)
        image_ids = self._drop_missing_files(image_ids)
        self._index_annotations(image_ids)
        if filter_empty:
            self._keep(np.flatnonzero(np.diff(self._offsets) > 0))
        if with_masks:
            self._check_segmentations()
        self._counters = torch.zeros((_COUNTER_SLOTS, 2), dtype=torch.int64).share_memory_()

    # ------------------------------------------------------------------------------ construction

    def _drop_missing_files(self, image_ids: List[int]) -> List[int]:
        names = [self.coco.imgs[i]["file_name"] for i in image_ids]
        present = _existing_files(self.image_root, names)
        missing = [i for i, n in zip(image_ids, names) if n not in present]
        if missing:
            missing_set = set(missing)
            n_anns = sum(len(self.coco.imgToAnns.get(i, ())) for i in missing)
            shown = ", ".join(self.coco.imgs[i]["file_name"] for i in missing[:_SHOW_NAMES])
            more = f" and {len(missing) - _SHOW_NAMES} more" if len(missing) > _SHOW_NAMES else ""
            logger.warning(
                "%s: %d of %d images (with %d annotations) have no file under %s and are left out: %s%s",
                self.name, len(missing), len(image_ids), n_anns, self.image_root, shown, more)
            image_ids = [i for i in image_ids if i not in missing_set]
        return image_ids

    def _index_annotations(self, image_ids: List[int]) -> None:
        """Flatten the non-crowd annotations into arrays (cheap to share with worker processes)."""
        boxes, labels, ann_ids, counts = [], [], [], []
        unknown_cats = 0
        for img_id in image_ids:
            n = 0
            for ann in self.coco.imgToAnns.get(img_id, ()):
                if ann.get("iscrowd", 0):
                    continue
                label = self.cat_id_to_label.get(ann["category_id"])
                if label is None:
                    unknown_cats += 1
                    continue
                boxes.append(ann["bbox"])
                labels.append(label)
                ann_ids.append(ann["id"])
                n += 1
            counts.append(n)
        if unknown_cats:
            logger.warning("%s: %d annotations use category ids missing from the categories list; ignored",
                           self.name, unknown_cats)
        boxes_xyxy = xywh_to_xyxy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
        counts_arr = np.asarray(counts, dtype=np.int64)
        sizes = np.array([(self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]) for i in image_ids],
                         dtype=np.float64).reshape(-1, 2)
        per_box_size = np.repeat(sizes, counts_arr, axis=0)
        np.clip(boxes_xyxy[:, 0::2], 0, per_box_size[:, :1], out=boxes_xyxy[:, 0::2])
        np.clip(boxes_xyxy[:, 1::2], 0, per_box_size[:, 1:], out=boxes_xyxy[:, 1::2])
        # NaN boxes fail both comparisons and are dropped with the zero-area ones.
        keep = (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])
        self.num_dropped_at_load = int((~keep).sum())
        if self.num_dropped_at_load:
            logger.warning("%s: %d boxes have zero area inside their image (after clipping) and are dropped",
                           self.name, self.num_dropped_at_load)
        owner = np.repeat(np.arange(len(image_ids)), counts_arr)[keep]
        self._boxes = boxes_xyxy[keep].astype(np.float32)
        self._labels = np.asarray(labels, dtype=np.int64)[keep]
        self._ann_ids = np.asarray(ann_ids, dtype=np.int64)[keep]
        self._offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(image_ids)))])
        self.image_ids = list(image_ids)
        self._sizes_hw = sizes[:, ::-1].astype(np.int64)

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
            logger.warning("%s: %d of %d annotations have no segmentation (first: id %d); their boxes are "
                           "used as masks", self.name, len(bad), len(self._ann_ids), bad[0])

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
                image = read_image(self.image_path(i))
                if image.shape[:2] != (h, w):
                    raise CorruptImageError(
                        f"{self.image_path(i)}: decoded size {image.shape[1]}x{image.shape[0]} differs from the "
                        f"json's {w}x{h}; the annotations would not fit it")
            except CorruptImageError as e:
                self._count(_SKIPPED)
                action = "using the next image" if self.is_train else "using a black image"
                logger.warning("%s: skipping image %d (id %d): %s; %s", self.name, i, self.image_ids[i], e, action)
                if self.is_train:
                    continue
                image = np.zeros((h, w, 3), dtype=np.uint8)
            return self._prepare(i, image, seed)
        raise RuntimeError(f"{self.name}: none of the {n} images under {self.image_root} can be decoded")

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
                masks[k, int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = 1
            else:
                rles.append(rle)
                slots.append(k)
        if rles:
            # One decode call for all: (H, W, n) Fortran-ordered -> (n, H, W).
            masks[slots] = mask_util.decode(rles).transpose(2, 0, 1)
        return masks

    def _annotation_rle(self, ann: Dict[str, Any], h: int, w: int) -> Optional[Dict[str, Any]]:
        """Compressed RLE of an annotation's segmentation, or ``None`` (with a warning) when unusable."""
        segm = ann.get("segmentation")
        try:
            if isinstance(segm, list):
                # Parts with fewer than 3 points cannot be rasterised (pycocotools would fail on them).
                parts = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
                if not parts and segm:
                    raise ValueError("no polygon has 3 or more points")
                if parts:
                    return mask_util.merge(mask_util.frPyObjects(parts, h, w))
            elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
                if list(segm["size"]) != [h, w]:
                    raise ValueError(f"RLE size {segm['size']} differs from the image's [{h}, {w}]")
                if isinstance(segm["counts"], list):  # uncompressed RLE
                    return mask_util.frPyObjects(segm, h, w)
                return segm
        except (ValueError, TypeError) as e:
            logger.warning("%s: annotation %s: unusable segmentation (%s); its box is used as the mask",
                           self.name, ann.get("id"), e)
        # Missing outlines were reported once at construction.
        return None
