"""Raw sample -> decoded uint8 images and the draw of its jitter (applied later, batched, by
p2p_dist/data/jitter.py).

Every failure (a corrupt image, a missing member, an image too small to crop) raises
`SampleError` with a short reason; the reader skips, counts and logs the sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyspng
import simplejpeg

from p2p_dist import imageio
from p2p_dist.data.cache import DecodedCache
from p2p_dist.data.jitter import Jitter, JitterDraw
from p2p_dist.data.shards import RawSample, SampleError

FIELD_EXTS = tuple(ext[1:] for ext in imageio.IMAGE_EXTENSIONS)  # a shard member `a.png` is field `a`


@dataclass(frozen=True)
class SampleSpec:
    """What the stream makes of each sample."""

    task: str = "translation"
    direction: str = "AtoB"
    jitter: Jitter = Jitter()
    with_labels: bool = False  # translation: also the label map (label.png)
    ship_jpeg: bool = False  # RGB JPEG members left encoded, as `Jpeg`, for the training device to decode

    @property
    def stored(self) -> bool:
        """Whether A and B are read as stored (HxWxC, uint8 or uint16): sides other than 8-bit RGB."""
        scale = self.jitter.scale
        return scale is not None and any((r.bits, r.channels) != (8, 3) for r in scale)

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of a sample's images, in `load_sample`'s order."""
        if self.task == "colorization":
            return ("rgb",)
        return ("A", "B", "label") if self.with_labels else ("A", "B")


def field_ext(sample: RawSample, stem: str) -> str:
    """The field holding image `stem` (`a` -> `a.png` or `a.jpg`, ...)."""
    for ext in FIELD_EXTS:
        name = f"{stem}.{ext}"
        if sample.has(name):
            return name
    raise SampleError(f"missing member {sample.key}.{stem}.(png|jpg)")


def stems_of(fields) -> set[str]:
    return {name.split(".", 1)[0] for name in fields}


def task_of_fields(fields) -> str | None:
    """Which task a sample's field names belong to (None when neither)."""
    stems = stems_of(fields)
    if {"a", "b"} <= stems:
        return "translation"
    if "img" in stems:
        return "colorization"
    return None


def decode_image(data: bytes, mode: str = "RGB") -> np.ndarray:
    """Bytes -> array; mode "RGB" (uint8 HxWx3), "label" (uint8 HxW class ids from an L or P image) or
    "stored" (HxWxC uint8/uint16 as the member holds it, `imageio.decode_image`).

    8-bit JPEG and PNG go through libjpeg-turbo (simplejpeg) and libspng (pyspng), which give the
    same pixels as Pillow in less CPU time (tests/unit/test_data_device.py checks both); anything else,
    and anything those two refuse, goes through `p2p_dist.imageio.decode_image` (Pillow), which also
    words the error; a member that does not decode raises SampleError."""
    fast = _decode_fast(data, mode)
    if fast is not None:
        return fast
    try:
        return imageio.decode_image(data, mode)
    except imageio.READ_ERRORS as exc:
        raise SampleError(f"cannot decode image ({exc})") from None


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_GREY, _PNG_RGB, _PNG_PALETTE, _PNG_RGBA = 0, 2, 3, 6


def _decode_fast(data: bytes, mode: str) -> np.ndarray | None:
    """The libjpeg-turbo / libspng decode of an 8-bit JPEG or PNG, or None to leave it to Pillow."""
    try:
        if mode == "RGB" and data[:3] == b"\xff\xd8\xff":
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        if data[:8] == _PNG_MAGIC and data[12:16] == b"IHDR" and data[24] == 8:
            colour = data[25]
            if mode == "RGB" and colour in (_PNG_GREY, _PNG_RGB, _PNG_PALETTE, _PNG_RGBA):
                return pyspng.load(data, format="RGB")  # as Pillow's convert("RGB"): alpha dropped
            if mode == "label" and colour == _PNG_GREY:
                return pyspng.load(data, format="L")
    except (ValueError, RuntimeError):
        return None  # Pillow decodes it again and words the error
    return None


@dataclass(frozen=True)
class Jpeg:
    """An RGB JPEG member left encoded (`SampleSpec.ship_jpeg`, data.decode=gpu): its bytes and the
    shape it decodes to, read from its header. p2p_dist/data/device_decode.py decodes it."""

    data: bytes = field(repr=False)
    shape: tuple[int, int, int]


def _as_jpeg(data: bytes) -> Jpeg | None:
    """`data` as a `Jpeg` when its header reads as an 8-bit YCbCr or greyscale JPEG and it ends with
    the end-of-image marker (a truncated member does not); else None, and the member is decoded here,
    so that a corrupt one is skipped and counted as on the CPU path."""
    if data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
        return None
    try:
        h, w, colour, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return Jpeg(bytes(data), (h, w, 3)) if colour in ("YCbCr", "Gray") else None


def _member(sample: RawSample, name: str, mode: str, cache: DecodedCache | None, ship_jpeg: bool = False):
    if ship_jpeg and mode == "RGB" and name.rsplit(".", 1)[-1].lower() in ("jpg", "jpeg"):
        jpeg = _as_jpeg(sample.read(name))
        if jpeg is not None:
            return jpeg
    if cache is None:
        return decode_image(sample.read(name), mode)
    key = (sample.shard, sample.identity(name), sample.key, name, mode)
    return cache.get(key, lambda: decode_image(sample.read(name), mode))


def _image(sample: RawSample, stem: str, spec: SampleSpec, cache: DecodedCache | None):
    mode = "stored" if spec.stored else "RGB"  # sides other than 8-bit RGB: as stored
    return _member(sample, field_ext(sample, stem), mode, cache, spec.ship_jpeg)


def load_sample(
    sample: RawSample, spec: SampleSpec, rng: np.random.Generator, cache: DecodedCache | None = None
) -> tuple[list[np.ndarray], JitterDraw]:
    """Decode one sample without transforming it: its images as arrays (uint8; uint16 for 16-bit sides
    of `spec.stored`) in the order of
    `spec.fields` (A and B in `spec.direction`'s order, then the label map; or the colorization photo),
    checked to agree in size and to fit the crop, and the draw of its jitter from `rng`. The arrays may
    be a `cache`'s own (p2p_dist/data/cache.py): read them, never write into them. With
    `spec.ship_jpeg`, an RGB JPEG member comes as a `Jpeg` (its shape from its header) instead."""
    if spec.task == "colorization":
        images = [_image(sample, "img", spec, cache)]
    else:
        a, b = _image(sample, "a", spec, cache), _image(sample, "b", spec, cache)
        if a.shape[:2] != b.shape[:2]:
            raise SampleError(f"a is {a.shape[1]}x{a.shape[0]} but b is {b.shape[1]}x{b.shape[0]}")
        images = [b, a] if spec.direction == "BtoA" else [a, b]
        if spec.with_labels:
            label = _member(sample, "label.png", "label", cache)
            if label.shape[:2] != a.shape[:2]:
                h, w = a.shape[:2]
                raise SampleError(f"label.png is {label.shape[1]}x{label.shape[0]} but the images are {w}x{h}")
            images.append(label)
    size = images[0].shape[:2]
    reason = spec.jitter.check_fits(tuple(size))
    if reason:
        raise SampleError(reason)
    return images, spec.jitter.draw(rng, size)
