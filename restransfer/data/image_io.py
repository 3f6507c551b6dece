"""Image decoding with OpenCV, with truncated and unreadable files reported as :class:`CorruptImageError`.

Images are decoded as stored: EXIF orientation is ignored because annotation files (COCO, ILSVRC)
give boxes in the stored pixel grid and the stored width/height.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ["CorruptImageError", "read_image"]

# IMREAD_COLOR turns grayscale, CMYK and palette images into 3-channel BGR.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


class CorruptImageError(OSError):  # an OSError: callers treat it like a missing file
    """An image file is missing, truncated or cannot be decoded."""


def _truncation(data: bytes) -> str | None:
    """Why ``data`` is a truncated JPEG or PNG, or ``None`` when it ends properly.

    OpenCV decodes a truncated JPEG into a partly grey image with only a warning on stderr, so the
    end markers are checked here: a JPEG must have its end-of-image marker after the last
    start-of-scan (inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker,
    so 0xFFD9 there is the real end), a PNG must contain its IEND chunk.
    """
    if data[:2] == b"\xff\xd8":
        sos = data.rfind(b"\xff\xda")
        eoi = data.rfind(b"\xff\xd9")
        if sos < 0 or eoi < sos:
            return "truncated JPEG (no end-of-image marker after the image data)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if data.rfind(b"IEND", max(0, len(data) - 64)) < 0:
            return "truncated PNG (no IEND chunk)"
    return None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into RGB.

    Args:
        path: a JPEG, PNG or any other format OpenCV reads; grayscale and CMYK become 3 channels.

    Returns:
        ``np.ndarray`` uint8 of shape (H, W, 3), RGB, C-contiguous.

    Raises:
        CorruptImageError: the file is missing, empty, truncated or not an image.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CorruptImageError(f"{path}: cannot read the file: {e.strerror or e}") from None
    if not data:
        raise CorruptImageError(f"{path}: the file is empty")
    reason = _truncation(data)
    if reason is not None:
        raise CorruptImageError(f"{path}: {reason}")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_FLAGS)
    except cv2.error as e:
        raise CorruptImageError(f"{path}: OpenCV cannot decode it: {e}") from None
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise CorruptImageError(f"{path}: OpenCV cannot decode it as an image")
    # cvtColor writes a new C-contiguous array, so the channel swap costs no extra copy later.
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
