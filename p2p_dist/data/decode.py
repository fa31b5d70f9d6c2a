"""Raw sample -> tensors: image decoding, the jitter, direction and the colorization Lab split.

Every failure (a corrupt image, a missing member, an image too small to crop) raises
`SampleError` with a short reason; the stream skips, counts and logs the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyspng
import simplejpeg
import torch

from p2p_dist import imageio
from p2p_dist.data.cache import DecodedCache
from p2p_dist.data.device import resize_pair_hwc
from p2p_dist.data.shards import RawSample, SampleError
from p2p_dist.data.transforms import Jitter, JitterDraw, rgb_to_lab_tensors, to_tensor

FIELD_EXTS = tuple(ext[1:] for ext in imageio.IMAGE_EXTENSIONS)  # a shard member `a.png` is field `a`


@dataclass(frozen=True)
class SampleSpec:
    """What the stream makes of each sample."""

    task: str = "translation"
    direction: str = "AtoB"
    jitter: Jitter = Jitter()
    with_labels: bool = False
    with_rgb: bool = False
    on_device: bool = False  # translation only: ship uint8 pixels + draws, jittered by p2p_dist/data/device.py
    # with on_device, where that device is the CPU: resize each pair to load_size here (and cache it resized)
    host_resize: bool = False


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
    """Bytes -> uint8 array; mode "RGB" (HxWx3) or "label" (HxW class ids from an L or P image).

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


def _member(sample: RawSample, name: str, mode: str, cache: DecodedCache | None) -> np.ndarray:
    if cache is None:
        return decode_image(sample.read(name), mode)
    key = (sample.shard, sample.identity(name), sample.key, name, mode)
    return cache.get(key, lambda: decode_image(sample.read(name), mode))


def _image(sample: RawSample, stem: str, mode: str = "RGB", cache: DecodedCache | None = None) -> np.ndarray:
    return _member(sample, field_ext(sample, stem), mode, cache)


def load_example(
    sample: RawSample, spec: SampleSpec, rng: np.random.Generator, cache: DecodedCache | None = None
) -> dict:
    """Decode and transform one sample: {"A", "B"[, "label"][, "rgb"]} tensors in [-1, 1]. With a
    `cache` (p2p_dist/data/cache.py) decoded images are taken from, and kept in, it."""
    jitter = spec.jitter
    if spec.task == "colorization":
        rgb = _image(sample, "img", cache=cache)
        _check_fits(jitter, rgb.shape[:2])
        rgb = jitter.apply(rgb, jitter.draw(rng, rgb.shape[:2]))
        L, ab = rgb_to_lab_tensors(rgb)
        out = {"A": L, "B": ab}
        if spec.with_rgb:
            out["rgb"] = to_tensor(rgb)
        return out
    a = _image(sample, "a", cache=cache)
    b = _image(sample, "b", cache=cache)
    if a.shape[:2] != b.shape[:2]:
        raise SampleError(f"a is {a.shape[1]}x{a.shape[0]} but b is {b.shape[1]}x{b.shape[0]}")
    size = a.shape[:2]
    _check_fits(jitter, size)
    draw = jitter.draw(rng, size)
    a, b = jitter.apply(a, draw), jitter.apply(b, draw)
    if spec.direction == "BtoA":
        a, b = b, a
    out = {"A": to_tensor(a), "B": to_tensor(b)}
    if spec.with_labels:
        label = _member(sample, "label.png", "label", cache)
        if label.shape[:2] != size:
            raise SampleError(f"label.png is {label.shape[1]}x{label.shape[0]} but the images are {size[1]}x{size[0]}")
        out["label"] = torch.from_numpy(jitter.apply(label, draw, nearest=True).astype(np.int64))
    return out


def load_pixels(
    sample: RawSample, spec: SampleSpec, rng: np.random.Generator, cache: DecodedCache | None = None
) -> tuple[np.ndarray, np.ndarray, JitterDraw]:
    """Decode one translation sample without transforming it: (A, B) as uint8 HxWx3 and the draw
    that `load_example` would apply (the same random numbers, so the two paths see the same jitter).
    The arrays may be a `cache`'s own: read them, never write into them. With `spec.host_resize` (and a
    `load_size`) they come resized to it, as the CPU's `prepare_batch` would resize them."""
    if spec.host_resize and spec.jitter.load_size:
        a, b = _resized_pair(sample, spec.jitter, cache)
    else:
        a, b = _checked_pair(sample, spec.jitter, cache)
    draw = spec.jitter.draw(rng, a.shape[:2])  # with a load_size the draw depends on it alone
    return (b, a, draw) if spec.direction == "BtoA" else (a, b, draw)


def _checked_pair(sample: RawSample, jitter: Jitter, cache: DecodedCache | None) -> tuple[np.ndarray, np.ndarray]:
    a = _image(sample, "a", cache=cache)
    b = _image(sample, "b", cache=cache)
    if a.shape[:2] != b.shape[:2]:
        raise SampleError(f"a is {a.shape[1]}x{a.shape[0]} but b is {b.shape[1]}x{b.shape[0]}")
    _check_fits(jitter, a.shape[:2])
    return a, b


def _resized_pair(sample: RawSample, jitter: Jitter, cache: DecodedCache | None) -> tuple[np.ndarray, np.ndarray]:
    """A and B decoded, checked as `_checked_pair` checks them, then resized to `jitter.load_size`: one
    cache entry for the pair, made only when both decode and agree in size (a pair that fails, fails the
    same way on every pass)."""
    size = jitter.load_size

    def make():
        return resize_pair_hwc(*_checked_pair(sample, jitter, None), size)

    if cache is None:
        return make()
    names = (field_ext(sample, "a"), field_ext(sample, "b"))
    return cache.get((sample.shard, sample.identity(names[0]), sample.key, names, "RGB", size), make)


def _check_fits(jitter: Jitter, size_hw) -> None:
    reason = jitter.check_fits(tuple(size_hw))
    if reason:
        raise SampleError(reason)
