"""What the conversions of other formats to COCO-format dicts share (ImageNet-DET's
:func:`~restransfer.data.imagenet_det.records_to_coco`, PASCAL VOC's :func:`~restransfer.data.voc.records_to_coco`):
the annotations of one image's boxes."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["box_annotations"]


def box_annotations(
    image_id: int,
    xywh: np.ndarray,
    labels: np.ndarray,
    *,
    first_id: int = 1,
    iscrowd: Optional[np.ndarray] = None,
    **flags: np.ndarray,
) -> List[Dict[str, Any]]:
    """One COCO annotation per box of image ``image_id``, numbered ``first_id``, ``first_id + 1``, ...

    Args:
        xywh: (N, 4) boxes ``[x, y, w, h]`` in pixels (already converted from the source's convention).
        labels: (N,) category ids.
        iscrowd: (N,) 0/1 (default all 0).
        flags: further (N,) 0/1 fields (``difficult=...``), written after ``iscrowd`` in the order given.

    Returns:
        ``{"id", "image_id", "category_id", "bbox", "area" (w * h), "iscrowd", *flags}`` dicts of Python
        numbers, in box order.
    """
    crowd = [0] * len(labels) if iscrowd is None else np.asarray(iscrowd).tolist()
    columns = {key: np.asarray(values).tolist() for key, values in flags.items()}
    annotations = []
    for k, (box, label) in enumerate(zip(np.asarray(xywh).tolist(), np.asarray(labels).tolist())):
        annotations.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": int(label),
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": int(crowd[k]),
                **{key: int(values[k]) for key, values in columns.items()},
            }
        )
    return annotations
