"""Image decoding with OpenCV, with truncated, unreadable and oversized files reported as
:class:`CorruptImageError`.

Images are decoded as stored: EXIF orientation is ignored because annotation files (COCO, ILSVRC)
give boxes in the stored pixel grid and the stored width/height.

Decoding allocates width x height x 3 bytes whatever the file's size: a 2.6 MB PNG can declare
30000 x 30000 pixels (2.7 GB). :func:`read_image` therefore reads the dimensions from the file's
header first (:func:`image_size`: the PNG IHDR, JPEG SOF, GIF, BMP and WebP headers) and refuses an
image above ``max_pixels`` (:data:`DEFAULT_MAX_IMAGE_PIXELS`, the ``data.max_image_pixels`` config
key) with :class:`ImageTooLargeError` before anything is decoded. Other formats (TIFF, ...) are judged
once decoded; OpenCV's own limit (2^30 pixels) bounds that decode.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import List, Optional, Tuple, Union

import cv2
import numpy as np

from ..errors import DataError

__all__ = [
    "CorruptImageError",
    "ImageTooLargeError",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "read_image",
    "image_size",
    "read_image_size",
    "check_image_pixels",
    "IMAGE_EXTENSIONS",
    "find_images",
]

# IMREAD_COLOR turns grayscale, CMYK and palette images into 3-channel BGR.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION

# Pillow's decompression-bomb guard is of this order (89.5 megapixels); 100 MP holds every photo of a
# current camera and every image of the detection and classification datasets.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000

# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic coded)
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})  # TEM, RSTn, SOI, EOI: no length field


class CorruptImageError(OSError):  # an OSError: callers treat it like a missing file
    """An image file is missing, truncated or cannot be decoded."""


class ImageTooLargeError(CorruptImageError):
    """An image declares more pixels than the limit (``data.max_image_pixels``); it is not decoded."""


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return (w, h) if w and h else None  # height 0: given later by a DNL marker
        if marker == 0xDA:  # image data before any frame header
            return None
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def _webp_size(data: bytes) -> Optional[Tuple[int, int]]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` declared by an encoded image's header, without decoding it; None when the
    format is unknown or the header is cut short."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" and len(data) >= 24 else None
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
            return struct.unpack("<HH", data[18:22])
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)  # a negative height is a top-down bitmap
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def read_image_size(path: str | os.PathLike, head: int = 1 << 16) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from an image file's header (:func:`image_size`), reading its first ``head`` bytes
    and the whole file only when the header lies further in (a JPEG with large metadata segments); None
    for other formats. ``OSError`` when the file cannot be read."""
    with open(path, "rb") as f:
        data = f.read(head)
        size = image_size(data)
        if size is None and len(data) == head:
            size = image_size(data + f.read())
    return size


def check_image_pixels(width: float, height: float, max_pixels: Optional[int], where: str) -> None:
    """Raise :class:`ImageTooLargeError` (message starting with ``where``) when ``width`` x ``height`` is above
    ``max_pixels`` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{where}: {int(width)}x{int(height)} pixels ({width * height / 1e6:.1f} megapixels) is above the limit "
            f"of {max_pixels / 1e6:g} megapixels (data.max_image_pixels), so it is not decoded; raise "
            "data.max_image_pixels to read it"
        )


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


def read_image(path: str | os.PathLike, max_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an image file into RGB.

    Args:
        path: a JPEG, PNG or any other format OpenCV reads; grayscale and CMYK become 3 channels.
        max_pixels: images declaring more pixels are refused before decoding (None: no limit).

    Returns:
        ``np.ndarray`` uint8 of shape (H, W, 3), RGB, C-contiguous.

    Raises:
        CorruptImageError: the file is missing, empty, truncated or not an image;
            :class:`ImageTooLargeError` (a CorruptImageError) when it is above ``max_pixels``.
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
    if max_pixels is not None:
        size = image_size(data)
        if size is not None:
            check_image_pixels(size[0], size[1], max_pixels, str(path))
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_FLAGS)
    except cv2.error as e:
        raise CorruptImageError(f"{path}: OpenCV cannot decode it: {e}") from None
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise CorruptImageError(f"{path}: OpenCV cannot decode it as an image")
    # a format whose header was not read is judged once decoded: the memory was spent, the image is not used
    check_image_pixels(bgr.shape[1], bgr.shape[0], max_pixels, str(path))
    # cvtColor writes a new C-contiguous array, so the channel swap costs no extra copy later.
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(path: Union[str, os.PathLike], exclude: Optional[Union[str, os.PathLike]] = None) -> List[Path]:
    """An image file as a one-element list, or the image files under a folder (recursive, sorted).

    Files under ``exclude`` (the demo's output folder, when it lies inside the input) are skipped.
    Raises ``FileNotFoundError`` for a missing path and ``DataError`` for a folder without images.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    found = sorted(
        p
        for p in path.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not (skip is not None and skip in p.resolve().parents)
    )
    if not found:
        raise DataError(
            f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder or below; give an image "
            "file or a folder that contains some"
        )
    return found
