"""Raw sample -> tensors: image decoding, the jitter, direction and the colorization Lab split.

Every failure (a corrupt image, a missing member, an image too small to crop) raises
`SampleError` with a short reason; the stream skips, counts and logs the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from p2p_dist import imageio
from p2p_dist.data.shards import RawSample, SampleError
from p2p_dist.data.transforms import Jitter, rgb_to_lab_tensors, to_tensor

FIELD_EXTS = tuple(ext[1:] for ext in imageio.IMAGE_EXTENSIONS)  # a shard member `a.png` is field `a`


@dataclass(frozen=True)
class SampleSpec:
    """What the stream makes of each sample."""

    task: str = "translation"
    direction: str = "AtoB"
    jitter: Jitter = Jitter()
    with_labels: bool = False
    with_rgb: bool = False


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
    """Shard bytes -> uint8 array through `p2p_dist.imageio.decode_image`; mode "RGB" (HxWx3) or
    "label" (HxW class ids). A member that does not decode raises SampleError."""
    try:
        return imageio.decode_image(data, mode)
    except imageio.READ_ERRORS as exc:
        raise SampleError(f"cannot decode image ({exc})") from None


def _image(sample: RawSample, stem: str, mode: str = "RGB") -> np.ndarray:
    return decode_image(sample.read(field_ext(sample, stem)), mode)


def load_example(sample: RawSample, spec: SampleSpec, rng: np.random.Generator) -> dict:
    """Decode and transform one sample: {"A", "B"[, "label"][, "rgb"]} tensors in [-1, 1]."""
    jitter = spec.jitter
    if spec.task == "colorization":
        rgb = _image(sample, "img")
        _check_fits(jitter, rgb.shape[:2])
        rgb = jitter.apply(rgb, jitter.draw(rng, rgb.shape[:2]))
        L, ab = rgb_to_lab_tensors(rgb)
        out = {"A": L, "B": ab}
        if spec.with_rgb:
            out["rgb"] = to_tensor(rgb)
        return out
    a = _image(sample, "a")
    b = _image(sample, "b")
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
        label = decode_image(sample.read("label.png"), "label")
        if label.shape[:2] != size:
            raise SampleError(f"label.png is {label.shape[1]}x{label.shape[0]} but the images are {size[1]}x{size[0]}")
        out["label"] = torch.from_numpy(jitter.apply(label, draw, nearest=True).astype(np.int64))
    return out


def _check_fits(jitter: Jitter, size_hw) -> None:
    reason = jitter.check_fits(tuple(size_hw))
    if reason:
        raise SampleError(reason)
