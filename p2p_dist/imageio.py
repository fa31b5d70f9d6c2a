"""Image files, the one place for them: which extensions are images, listing a folder of them,
reading one (from a file or from shard bytes), splitting aligned A|B pairs, turning file names into
sample keys, and writing images atomically.

One reader, `decode_image`, with four modes. "RGB", "L" and "label" give uint8 and are the same
everywhere (README: EXIF orientation, 16-bit scaled, greyscale, palette and CMYK to RGB, alpha
dropped; label maps are read as stored class ids, 16-bit ones clipped to 255, the ignore id).
"stored" gives the pixels exactly as the file holds them: H x W x C, uint8 or uint16, any number of
channels (PNG 8/16-bit with 1-4 channels; TIFF, a multi-page stack's pages becoming channels; .npy,
never unpickled; the Pillow formats as decoded). The writer, `write_image` (`encode_image` for
bytes), is as exact: PNG up to 4 channels and TIFF beyond (`image_suffix`), or .npy.
Resizing, pixel <-> tensor conversions and Lab live in `p2p_dist.data.transforms`.
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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".npy")
LOSSLESS_EXTENSIONS = (".png", ".bmp", ".ppm", ".tif", ".tiff", ".npy")  # packed losslessly with --format auto
# what Pillow, tifffile and numpy raise for a file that is not a readable image (UnidentifiedImageError
# is an OSError; tifffile's TiffFileError a ValueError)
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
MODES = ("RGB", "L", "label", "stored")
PNG_MAX_CHANNELS = 4  # PNG holds grey, grey+alpha, RGB, RGBA; more channels are written as TIFF

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


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_NPY_MAGIC = b"\x93NUMPY"


def _head(source: str | os.PathLike | bytes) -> bytes:
    """The first bytes of a file or buffer (what tells PNG, TIFF and .npy apart, and a PNG's depth)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:32])
    with open(source, "rb") as fh:
        return fh.read(32)


def _buffer(source: str | os.PathLike | bytes):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source


def _checked(arr: np.ndarray, what: str) -> np.ndarray:
    """H x W or H x W x C unsigned 8/16-bit pixels -> C-contiguous H x W x C (native byte order)."""
    if arr.dtype.kind != "u" or arr.dtype.itemsize not in (1, 2):
        raise ValueError(f"{what} holds {arr.dtype} pixels; 8- and 16-bit unsigned integers are read")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"{what} has shape {arr.shape}; an image is H x W or H x W x C")
    return np.ascontiguousarray(arr, dtype=np.uint8 if arr.dtype.itemsize == 1 else np.uint16)


def _read_tiff(source: str | os.PathLike | bytes) -> np.ndarray:
    """A TIFF's image (or its stack of equal-sized pages) as H x W x C: every axis but Y and X
    (pages, planes, samples) becomes a channel, in the file's order."""
    import tifffile

    with tifffile.TiffFile(_buffer(source)) as tif:
        parts = []
        for series in tif.series:
            arr, axes = series.asarray(), series.axes
            if "Y" not in axes or "X" not in axes:
                raise ValueError(f"TIFF series with axes {axes} has no Y and X")
            y, x = axes.index("Y"), axes.index("X")
            rest = [i for i in range(arr.ndim) if i not in (y, x)]
            parts.append(arr.transpose([y, x, *rest]).reshape(arr.shape[y], arr.shape[x], -1))
    if len({p.shape[:2] for p in parts}) > 1 or len({p.dtype for p in parts}) > 1:
        shapes = ", ".join(f"{p.shape[1]}x{p.shape[0]} {p.dtype}" for p in parts)
        raise ValueError(f"TIFF holds images of different sizes or types ({shapes}); one image or equal pages are read")
    return _checked(np.concatenate(parts, axis=2) if len(parts) > 1 else parts[0], "TIFF")


def _from_pillow(im: Image.Image) -> np.ndarray:
    """An open Pillow image's pixels as stored: 8-bit modes as they are (palettes, bilevel and CMYK
    as RGB/RGBA or L), 16-bit greyscale as uint16."""
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im)
    if im.mode in _SIXTEEN_BIT:
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"image of mode {im.mode} has values beyond 16 bits")
        return arr.astype(np.uint16)
    if im.mode == "F":
        raise ValueError("image holds float pixels; 8- and 16-bit unsigned integers are read")
    if im.mode in ("P", "PA"):
        return np.asarray(im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB"))
    return np.asarray(im.convert("L" if im.mode == "1" else "RGB"))


def _read_stored(source: str | os.PathLike | bytes, head: bytes) -> np.ndarray:
    if head.startswith(_NPY_MAGIC):
        return _checked(np.load(_buffer(source), allow_pickle=False), ".npy array")
    if head.startswith(_TIFF_MAGICS):
        return _read_tiff(source)
    if head.startswith(_PNG_MAGIC) and head[24:25] == b"\x10" and head[25] != 0:
        # 16-bit colour or grey+alpha PNG, which Pillow reads at 8 bits
        import imagecodecs

        data = source if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
        return _checked(imagecodecs.png_decode(data), "PNG")
    with open_image(source) as im:
        return _checked(_from_pillow(im), "image")


def convert_stored(arr: np.ndarray, mode: str) -> np.ndarray:
    """Stored H x W x C pixels -> what `to_array` gives for `mode` (a TIFF or .npy Pillow cannot
    read): 16-bit scaled to 8, the first channel as grey, the first three as RGB."""
    c = arr.shape[2]
    if mode == "label":
        if c != 1:
            raise ValueError(f"label map has {c} channels, expected single-channel class ids")
        return np.clip(arr[:, :, 0], 0, 255).astype(np.uint8)
    arr = eight_bit(arr)
    if c < 3:
        return arr[:, :, 0] if mode == "L" else np.repeat(arr[:, :, :1], 3, axis=2)
    rgb = np.ascontiguousarray(arr[:, :, :3])
    return np.asarray(Image.fromarray(rgb).convert("L")) if mode == "L" else rgb


def eight_bit(arr: np.ndarray) -> np.ndarray:
    """16-bit intensities (0..65535) -> uint8, rounded: 65535 -> 255, 32896 -> 128 (uint8 as it is)."""
    if arr.dtype == np.uint8:
        return arr
    wide = np.clip(arr.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def to_array(im: Image.Image, mode: str = "RGB") -> np.ndarray:
    """The pixels of an open image: uint8 HxWx3 for "RGB", HxW for "L" (luma) and "label" (class
    ids); HxWxC uint8 or uint16 for "stored"."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "stored":
        return _checked(_from_pillow(im), "image")
    if mode == "label":
        if im.mode in ("L", "P"):
            return np.asarray(im)
        if im.mode in _SIXTEEN_BIT:
            return np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        raise ValueError(f"label map has mode {im.mode}, expected single-channel class ids")
    if im.mode in _SIXTEEN_BIT:
        grey = eight_bit(np.asarray(im))
        return grey if mode == "L" else np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == mode:
        return np.asarray(im)
    if im.mode in ("P", "PA") and mode == "RGB":
        im = im.convert("RGBA")  # a palette's transparency must go through RGBA (Pillow warns otherwise)
    return np.asarray(im.convert(mode))


def decode_image(source: str | os.PathLike | bytes, mode: str = "RGB") -> np.ndarray:
    """Path or bytes -> C-contiguous pixels (see `to_array`; the format from the first bytes, not
    the name). "stored" applies no EXIF orientation to TIFF, .npy and 16-bit colour PNG (read as the
    file holds them). A page stack, a TIFF that Pillow cannot read (more than 4 channels) and .npy
    give the other modes from their stored pixels. Raises one of READ_ERRORS."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    head = _head(source)
    if mode == "stored" or head.startswith(_NPY_MAGIC):
        arr = _read_stored(source, head)
        return arr if mode == "stored" else convert_stored(arr, mode)
    tiff = head.startswith(_TIFF_MAGICS)
    try:
        with open_image(source) as im:
            if not tiff or getattr(im, "n_frames", 1) == 1:
                return np.ascontiguousarray(to_array(im, mode))
    except READ_ERRORS:
        if not tiff:
            raise
    return convert_stored(_read_tiff(source), mode)


def read_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Decode an image file (HxWx3 uint8 for "RGB", HxW for "L" and "label", HxWxC uint8 or uint16
    for "stored"); UserError naming the file when it is not a readable image."""
    try:
        return decode_image(path, mode)
    except READ_ERRORS as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file as `read_image` returns it (EXIF orientation applied), from its
    header only."""
    try:
        if _head(path).startswith(_NPY_MAGIC):
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape[:2])
        with Image.open(path) as im:
            w, h = im.size
            turned = _orientation(im) in (5, 6, 7, 8)
    except READ_ERRORS as exc:
        if not _head(path).startswith(_TIFF_MAGICS):
            raise UserError(f"cannot read image {path}: {exc}") from None
        return read_image(path, "stored").shape[:2]
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


def image_suffix(channels: int) -> str:
    """The lossless file type for an image of `channels` channels: PNG up to 4, TIFF beyond."""
    return ".png" if channels <= PNG_MAX_CHANNELS else ".tif"


def encode_image(img: np.ndarray, suffix: str | None = None) -> bytes:
    """uint8 or uint16 HxW or HxWxC pixels -> the bytes of a .png (1-4 channels), .tif or .npy
    file (`suffix`; default `image_suffix`), every value kept."""
    arr = np.asarray(img)
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"images are written from uint8 or uint16 pixels, got {arr.dtype}")
    arr = _checked(arr, "image")
    c = arr.shape[2]
    suffix = (suffix or image_suffix(c)).lower()
    if suffix == ".png":
        if c > PNG_MAX_CHANNELS:
            raise ValueError(f"PNG holds at most {PNG_MAX_CHANNELS} channels, this image has {c}: write .tif")
        import imagecodecs

        # a copy has the strides libpng's wrapper checks for (a C-contiguous 1-pixel-wide array may not)
        return bytes(imagecodecs.png_encode(np.array(arr[:, :, 0] if c == 1 else arr, order="C")))
    buf = io.BytesIO()
    if suffix in (".tif", ".tiff"):
        import tifffile

        if c == 1:
            tifffile.imwrite(buf, arr[:, :, 0], photometric="minisblack", compression="zlib")
        else:  # channels interleaved (samples per pixel), RGB named as such
            photometric = "rgb" if c == 3 else "minisblack"
            tifffile.imwrite(buf, arr, photometric=photometric, planarconfig="contig", compression="zlib")
    elif suffix == ".npy":
        np.save(buf, arr, allow_pickle=False)
    else:
        raise ValueError(f"cannot write {suffix!r} images (.png, .tif, .tiff or .npy)")
    return buf.getvalue()


def write_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write uint8 or uint16 HxW or HxWxC pixels to `path` in the format its suffix names (.png for
    1-4 channels, .tif/.tiff, .npy), under a temporary name, then rename."""
    path = Path(path)
    data = encode_image(img, path.suffix)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:  # disk full, file size limit, permissions: one line naming the file
        raise StorageError(f"could not write {path}: {exc.strerror or exc}") from None
    return path


__all__ = [
    "IMAGE_EXTENSIONS",
    "LOSSLESS_EXTENSIONS",
    "MODES",
    "PNG_MAX_CHANNELS",
    "READ_ERRORS",
    "convert_stored",
    "decode_image",
    "eight_bit",
    "encode_image",
    "image_size",
    "image_suffix",
    "is_greyscale",
    "is_image_field",
    "is_image_name",
    "list_images",
    "open_image",
    "read_image",
    "sample_key",
    "split_aligned",
    "to_array",
    "write_image",
]
