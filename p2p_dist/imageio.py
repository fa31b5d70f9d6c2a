"""Image files, the one place for them: which extensions are images, listing a folder of them,
reading one (from a file or from shard bytes) as uint8 RGB, greyscale or class ids, splitting
aligned A|B pairs, turning file names into sample keys, and writing PNGs atomically.

Reading is the same everywhere (README: EXIF orientation, 16-bit scaled, greyscale, palette and
CMYK to RGB, alpha dropped); label maps (mode "label") are read as stored class ids (L or P),
16-bit ones clipped to 255 (the ignore id). Resizing, pixel <-> tensor conversions and Lab live in
`p2p_dist.data.transforms`.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from p2p_dist.errors import StorageError, UserError
from p2p_dist.fsutil import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
LOSSLESS_EXTENSIONS = (".png", ".bmp", ".ppm", ".tif", ".tiff")  # packed as PNG with --format auto
# what Pillow raises for a file that is not a readable image (UnidentifiedImageError is an OSError)
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
MODES = ("RGB", "L", "label")

_ORIENTATION = 0x0112  # EXIF tag; values 5..8 turn the image by 90 degrees
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


# --- names ---------------------------------------------------------------------------------------


def is_image_name(name: str | os.PathLike) -> bool:
    """Whether a file name has an image extension (case-insensitive) and is not hidden (a leading
    dot, e.g. our own temporary files)."""
    name = os.path.basename(os.fspath(name))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_image_field(name: str) -> bool:
    """Whether a shard member name (`a.png`, `label.png`, `img.jpg`) holds an image."""
    return "." + name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (with `recursive`, in every non-hidden subfolder too), sorted by
    their path relative to `folder`. Raises UserError for a missing folder or a file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"input folder {folder} does not exist" if not folder.exists() else f"input {folder} is not a folder"
        )
    if not recursive:
        return sorted(p for p in folder.iterdir() if is_image_name(p.name) and p.is_file())
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if is_image_name(f)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def sample_key(rel: str | os.PathLike) -> str:
    """The sample key for a file's path relative to its source folder: the last suffix dropped,
    `/` kept, and every other character but letters, digits, `_`, `+` and `-` turned into `_`
    (`city/a b.1.png` -> `city/a_b_1`). Keys name the samples in shards, translated files and reports."""
    return re.sub(r"[^A-Za-z0-9_/+-]", "_", PurePosixPath(Path(rel).as_posix()).with_suffix("").as_posix())


# --- reading -------------------------------------------------------------------------------------


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except (ValueError, TypeError, SyntaxError, OSError):  # a broken EXIF block: read the pixels as stored
        return 1


@contextmanager
def open_image(source: str | os.PathLike | bytes) -> Iterator[Image.Image]:
    """A decoded Pillow image from a path or bytes, turned upright by its EXIF orientation.
    Raises one of READ_ERRORS for what is not a readable image."""
    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source) as im:
        im.load()
        if _orientation(im) != 1:
            upright = ImageOps.exif_transpose(im)
            try:
                yield upright
            finally:
                upright.close()
        else:
            yield im


def _eight_bit(arr: np.ndarray) -> np.ndarray:
    """16-bit intensities (0..65535) -> uint8, rounded: 65535 -> 255, 32896 -> 128."""
    wide = np.clip(arr.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def to_array(im: Image.Image, mode: str = "RGB") -> np.ndarray:
    """uint8 pixels of an open image: HxWx3 for "RGB", HxW for "L" (luma) and "label" (class ids)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "label":
        if im.mode in ("L", "P"):
            return np.asarray(im)
        if im.mode in _SIXTEEN_BIT:
            return np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        raise ValueError(f"label map has mode {im.mode}, expected single-channel class ids")
    if im.mode in _SIXTEEN_BIT:
        grey = _eight_bit(np.asarray(im))
        return grey if mode == "L" else np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == mode:
        return np.asarray(im)
    if im.mode in ("P", "PA") and mode == "RGB":
        im = im.convert("RGBA")  # a palette's transparency must go through RGBA (Pillow warns otherwise)
    return np.asarray(im.convert(mode))


def decode_image(source: str | os.PathLike | bytes, mode: str = "RGB") -> np.ndarray:
    """Path or bytes -> C-contiguous uint8 pixels (see `to_array`). Raises one of READ_ERRORS."""
    with open_image(source) as im:
        return np.ascontiguousarray(to_array(im, mode))


def read_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Decode an image file to uint8 (HxWx3 for "RGB", HxW for "L" and "label"); UserError naming
    the file when it is not a readable image."""
    try:
        return decode_image(path, mode)
    except READ_ERRORS as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file as `read_image` returns it (EXIF orientation applied), from its
    header only."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = _orientation(im) in (5, 6, 7, 8)
    except READ_ERRORS as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
    return (w, h) if turned else (h, w)


def is_greyscale(im: Image.Image) -> bool:
    """Single-channel modes, and RGB images whose channels (almost) agree everywhere."""
    if im.mode in _GREY_MODES:
        return True
    small = im.convert("RGB")
    small.thumbnail((96, 96))
    arr = np.asarray(small).astype(np.int16)
    chroma = arr.max(axis=2) - arr.min(axis=2)
    return float(np.percentile(chroma, 99)) <= 4.0


def split_aligned(img: np.ndarray, side: str) -> np.ndarray:
    """The A (left) or B (right) half of an aligned A|B image. An odd width drops the last column."""
    if side not in ("A", "B"):
        raise ValueError(f"side must be A or B, got {side!r}")
    half = img.shape[1] // 2
    if half == 0:
        raise UserError(f"an aligned A|B image needs a width of at least 2 pixels, got {img.shape[1]}")
    return img[:, :half] if side == "A" else img[:, half : 2 * half]


# --- writing -------------------------------------------------------------------------------------


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


__all__ = [
    "IMAGE_EXTENSIONS",
    "LOSSLESS_EXTENSIONS",
    "READ_ERRORS",
    "decode_image",
    "image_size",
    "is_greyscale",
    "is_image_field",
    "is_image_name",
    "list_images",
    "open_image",
    "read_image",
    "sample_key",
    "split_aligned",
    "to_array",
    "write_png",
]
