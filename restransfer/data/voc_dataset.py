"""PASCAL VOC images of one ``(year, split)`` as a training or test dataset (``format: voc`` entries of
``data.train`` / ``data.test``): the devkit's annotations (:mod:`restransfer.data.voc`) converted to COCO's layout
and read by :class:`~restransfer.data.coco.CocoDataset`."""

from __future__ import annotations

import contextlib
import io
from typing import Any, Optional, Sequence, Union

from pycocotools.coco import COCO

from .coco import CocoDataset
from .voc import VOC_CLASSES, PathLike, image_set_path, load_voc_split, records_to_coco

__all__ = ["VocDataset"]


class VocDataset(CocoDataset):
    """The images of one ``(year, split)`` of a VOCdevkit folder, as a :class:`~restransfer.data.coco.CocoDataset`
    over :func:`~restransfer.data.voc.records_to_coco` (same samples, targets and bad-image handling).

    Args:
        root: the VOCdevkit folder (holding ``VOC<year>/``).
        year, split: e.g. 2007 and ``trainval`` (``ImageSets/Main/<split>.txt``).
        classes: class names in label order (default the devkit's 20).
        use_difficult: train on difficult objects too (default False, as Fast/Faster R-CNN); evaluation
            ignores them either way.
        name: shown in logs (default ``voc_<year>_<split>``).
        options: CocoDataset's other keyword arguments (``transforms``, ``filter_empty``, ``is_train``, ...).

    Attributes (beyond CocoDataset's): ``year``, ``split``, ``records`` (the
    :class:`~restransfer.data.voc.VocRecord` s in list order; record ``i`` is image id ``i + 1``).
    """

    def __init__(
        self,
        root: PathLike,
        year: Union[int, str],
        split: str,
        *,
        classes: Sequence[str] = VOC_CLASSES,
        use_difficult: bool = False,
        name: Optional[str] = None,
        **options: Any,
    ):
        self.year, self.split = str(year), split
        self.records = load_voc_split(root, year, split, classes)
        source = image_set_path(root, year, split)
        data = records_to_coco(
            self.records, classes, use_difficult=use_difficult, description=f"PASCAL VOC{year} {split}"
        )
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco.createIndex()
        super().__init__(source, root, coco=coco, with_masks=False, name=name or f"voc_{year}_{split}", **options)
