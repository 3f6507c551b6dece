"""The demo: run a :class:`~restransfer.inference.predictor.Predictor` over image files, draw and save the results.

``tools/demo.py`` is the command line; :func:`run_demo` is the same from Python.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import cv2
from tqdm import tqdm

from ..data.image_io import IMAGE_EXTENSIONS, CorruptImageError, find_images, read_image
from ..evaluation.coco import masks_to_rle, predictions_to_coco_results, write_json_atomic
from ..fileio import atomic_write_bytes
from ..visualize import draw_detections
from .predictor import Predictor

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "find_images", "run_demo"]


def _output_names(images: Sequence[Path], root: Optional[Path]) -> List[str]:
    """PNG names that keep sub-folders apart (``a/x.jpg`` -> ``a__x.png``) and never collide."""
    names: List[str] = []
    used = set()
    for p in images:
        rel = p.relative_to(root) if root is not None else Path(p.name)
        base = "__".join(rel.with_suffix("").parts)
        name, k = f"{base}.png", 1
        while name in used:  # x.jpg and x.png in one folder
            name, k = f"{base}_{k}.png", k + 1
        used.add(name)
        names.append(name)
    return names


def run_demo(
    predictor: Predictor,
    images: Sequence[Union[str, os.PathLike]],
    output_dir: Union[str, os.PathLike],
    root: Optional[Union[str, os.PathLike]] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Predict, draw and save.

    Args:
        predictor: a :class:`~restransfer.inference.predictor.Predictor`.
        images: image files; an unreadable one is skipped with a warning.
        output_dir: gets one PNG per image, ``predictions.json`` (COCO results: ``image_id`` = index into
            ``images.json``, ``category_id`` = label), ``images.json`` and ``categories.json``.
        root: folder the image paths are relative to (keeps sub-folders apart in the PNG names).
        progress: show a progress bar over the images.

    Returns:
        ``{"images": written, "skipped": [unreadable paths], "detections": count, "output": dir}``
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = [Path(p) for p in images]
    names = _output_names(images, Path(root) if root is not None else None)
    results: List[Dict[str, Any]] = []
    image_entries: List[Dict[str, Any]] = []
    skipped: List[str] = []
    bar = tqdm(total=len(images), desc="demo", unit="img", disable=not progress)
    for start in range(0, len(images), predictor.batch_size):
        batch = []
        for i in range(start, min(start + predictor.batch_size, len(images))):
            try:
                batch.append((i, read_image(images[i])))
            except CorruptImageError as e:
                logger.warning("skipping %s", e)
                skipped.append(str(images[i]))
                bar.update(1)
        if not batch:
            continue
        as_input = [rgb if predictor.channel_order == "RGB" else rgb[:, :, ::-1] for _, rgb in batch]
        for (i, rgb), pred in zip(batch, predictor(as_input)):
            canvas = draw_detections(rgb, pred)
            ok, png = cv2.imencode(".png", canvas[:, :, ::-1])
            if not ok:
                raise OSError(f"{out / names[i]}: OpenCV could not encode the image")
            atomic_write_bytes(out / names[i], png.tobytes())
            image_id = len(image_entries)
            image_entries.append(
                {
                    "id": image_id,
                    "file_name": str(images[i]),
                    "height": int(rgb.shape[0]),
                    "width": int(rgb.shape[1]),
                    "drawn": names[i],
                }
            )
            entry = {"image_id": image_id, "boxes": pred["boxes"], "scores": pred["scores"], "labels": pred["labels"]}
            if "masks" in pred:
                entry["masks"] = masks_to_rle(pred["masks"])
            results.append(entry)
            bar.update(1)
    bar.close()
    k = len(predictor.class_names)
    coco = predictions_to_coco_results(results, {label: label for label in range(1, k + 1)})
    write_json_atomic(coco, out / "predictions.json")
    write_json_atomic(image_entries, out / "images.json")
    write_json_atomic([{"id": i + 1, "name": n} for i, n in enumerate(predictor.class_names)], out / "categories.json")
    return {"images": len(image_entries), "skipped": skipped, "detections": len(coco), "output": str(out)}
