"""Drawing detections with OpenCV: boxes, class names with scores, translucent instance masks.

::

    from restransfer.visualize import draw_detections
    canvas = draw_detections(image_rgb, predictor(image_rgb))   # (H, W, 3) uint8 RGB
    cv2.imwrite("out.png", canvas[:, :, ::-1])                  # OpenCV writes BGR
"""

from __future__ import annotations

import colorsys
from typing import Any, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["color_for_label", "draw_detections"]


def color_for_label(label: int) -> Tuple[int, int, int]:
    """A saturated RGB colour per label, the same on every run; neighbouring labels get distant hues
    (golden-ratio steps around the hue circle)."""
    hue = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_colour(rgb: Tuple[int, int, int]) -> Tuple[int, int, int]:
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def draw_detections(
    image: np.ndarray,
    prediction: Mapping[str, Any],
    *,
    mask_alpha: float = 0.45,
    class_names: Optional[Sequence[str]] = None,
    line_width: Optional[int] = None,
    font_scale: Optional[float] = None,
) -> np.ndarray:
    """Draw one image's detections on a copy of it.

    Args:
        image: (H, W, 3) uint8 RGB.
        prediction: ``boxes`` (N, 4) float xyxy in image pixels (x2, y2 exclusive), ``scores`` (N,),
            ``labels`` (N,) in 1..K, optionally ``class_names`` (N names, as :class:`Predictor` returns)
            and ``masks`` (N, H, W) bool.
        mask_alpha: opacity of the mask fill (the outline is opaque).
        class_names: names of labels 1..K when ``prediction`` has no ``class_names``.
        line_width, font_scale: default from the image size.

    Returns:
        (H, W, 3) uint8 RGB; masks first, then boxes, then labels, lowest score first so that the best
        detections end on top.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_detections expects an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    canvas = np.ascontiguousarray(image).copy()
    h, w = canvas.shape[:2]
    boxes = np.asarray(prediction["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(prediction["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(prediction["labels"]).reshape(-1).astype(np.int64)
    names = prediction.get("class_names")
    if names is None:
        names = [class_names[k - 1] if class_names and 0 < k <= len(class_names) else str(k) for k in labels]
    masks = prediction.get("masks")
    lw = line_width or max(1, int(round(min(h, w) / 320)))
    fs = font_scale or max(0.4, min(h, w) / 1200)
    order = np.argsort(scores, kind="stable")  # ascending: the best is drawn last

    if masks is not None and len(masks):
        masks = np.asarray(masks).astype(bool, copy=False)
        if masks.shape[1:] != (h, w):
            raise ValueError(f"masks have size {masks.shape[1:]}, the image {(h, w)}")
        overlay = canvas.astype(np.float32)
        for i in order:
            m = masks[i]
            if not m.any():
                continue
            colour = np.array(color_for_label(labels[i]), dtype=np.float32)
            overlay[m] = overlay[m] * (1.0 - mask_alpha) + colour * mask_alpha
        canvas = np.clip(overlay + 0.5, 0, 255).astype(np.uint8)
        for i in order:
            contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, color_for_label(labels[i]), max(1, lw // 2), cv2.LINE_AA)

    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in order:
        colour = color_for_label(labels[i])
        x1, y1, x2, y2 = boxes[i]
        # internal boxes have exclusive x2/y2; OpenCV draws inclusive pixel corners
        p1 = (int(round(x1)), int(round(y1)))
        p2 = (max(p1[0], int(round(x2)) - 1), max(p1[1], int(round(y2)) - 1))
        cv2.rectangle(canvas, p1, p2, colour, lw, cv2.LINE_AA)
        text = f"{names[i]} {scores[i]:.2f}"
        (tw, th), base = cv2.getTextSize(text, font, fs, max(1, lw // 2))
        # the label sits above the box, or inside it when the box touches the top edge
        ty = p1[1] - 2 if p1[1] - th - base - 2 >= 0 else min(h - 1, p1[1] + th + base + 2)
        tx = min(max(p1[0], 0), max(w - tw - 2, 0))
        cv2.rectangle(canvas, (tx, ty - th - base), (tx + tw + 2, ty + 1), colour, -1)
        cv2.putText(canvas, text, (tx + 1, ty - base + 1), font, fs, _text_colour(colour), max(1, lw // 2), cv2.LINE_AA)
    return canvas
