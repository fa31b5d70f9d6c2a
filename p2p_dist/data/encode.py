"""Image -> bytes for shards (PNG for label maps and lossless data, JPEG at a quality for photos)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=int(quality), subsampling=0)
    return buf.getvalue()


def encode_image(img: np.ndarray, fmt: str, quality: int = 95) -> tuple[str, bytes]:
    """(extension, bytes) in format 'png' or 'jpg'."""
    if fmt == "png":
        return "png", encode_png(img)
    if fmt in ("jpg", "jpeg"):
        return "jpg", encode_jpeg(img, quality)
    raise ValueError(f"unknown image format {fmt!r}")
