"""Image files for the console commands: list a folder of images, read one as uint8 RGB or
greyscale, split aligned A|B pairs, and write PNGs atomically.

Pixel <-> tensor conversions and Lab live in `p2p_dist.data.transforms` (one implementation for
training, translation and evaluation).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from p2p_dist.errors import StorageError, UserError
from p2p_dist.fsutil import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder` (by extension, case-insensitive), sorted by name.
    Hidden files (a leading dot, e.g. our own temporary files) are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"input folder {folder} does not exist" if not folder.exists()
                        else f"input {folder} is not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Decode an image file to uint8: HxWx3 for mode "RGB", HxW for mode "L". The EXIF orientation
    is applied (a rotated phone JPEG comes out upright); 16-bit greyscale is scaled to 8 bits."""
    from PIL import ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # convert() would clip at 255
                im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
            arr = np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
    return np.ascontiguousarray(arr)


def split_aligned(img: np.ndarray, side: str) -> np.ndarray:
    """The A (left) or B (right) half of an aligned A|B image. An odd width drops the last column."""
    if side not in ("A", "B"):
        raise ValueError(f"side must be A or B, got {side!r}")
    half = img.shape[1] // 2
    if half == 0:
        raise UserError(f"an aligned A|B image needs a width of at least 2 pixels, got {img.shape[1]}")
    return img[:, :half] if side == "A" else img[:, half:2 * half]


def write_png(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write a uint8 HxW, HxWx1 or HxWx3 array as PNG under a temporary name, then rename."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise TypeError(f"write_png expects uint8 pixels, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")
    except OSError as exc:  # disk full, file size limit, permissions: one line naming the file
        raise StorageError(f"could not write {path}: {exc.strerror or exc}") from None
    return path
