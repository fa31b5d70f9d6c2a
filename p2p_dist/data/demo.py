"""Built-in datasets that need no download (`p2p-data demo`; the sets are described in its --help),
written as shards with the same layout as real packs: OUT/train/NAME-000000.tar ... + index.json,
and OUT/val/. All are deterministic: the same options give byte-identical shards, whatever the
worker count. The val crops of the photo sets come from the same photographs as train (a demo, not
a benchmark).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from p2p_dist.data import scenes
from p2p_dist.data.encode import encode_jpeg, encode_png
from p2p_dist.data.errors import DataError
from p2p_dist.data.transforms import resize
from p2p_dist.data.writer import Packed, PackResult, pack
from p2p_dist.imageio import encode_image

DEMOS = ("scenes", "photos-edges", "photos-color", "scenes-depth", "scenes-bands")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
_SPLIT_IDS = {"train": 1, "val": 2}


# --- per-sample encoders (top-level functions: they run in worker processes) ------------------


def scene_sample(job: tuple[int, str, int, int, int]) -> Packed:
    seed, split, index, size, quality = job
    photo, colour, label = scenes.make_scene(seed, index, size, split)
    fields = {"a.jpg": encode_jpeg(photo, quality), "b.png": encode_png(colour), "label.png": encode_png(label)}
    return Packed(key=f"{index:06d}", fields=fields, size=(size, size)).with_pixels(a=photo, b=colour)


def depth_sample(job: tuple[int, str, int, int, int]) -> Packed:
    """A = the scene in 16-bit grey, B = its 16-bit depth map (mm), both one channel, PNG-16."""
    seed, split, index, size, _ = job
    photo, scene = scenes.make_scene_layout(seed, index, size, split)
    a, b = scenes.grey16(photo), scenes.depth_map(scene)
    fields = {"a.png": encode_image(a), "b.png": encode_image(b)}
    return Packed(key=f"{index:06d}", fields=fields, size=(size, size)).with_pixels(a=a, b=b)


def bands_sample(job: tuple[int, str, int, int, int]) -> Packed:
    """A = red, green, blue and near-infrared at 16 bits (PNG-16, 4 channels), B = the colour label map."""
    seed, split, index, size, _ = job
    photo, scene = scenes.make_scene_layout(seed, index, size, split)
    nir = scenes.near_infrared(scene, photo, scenes._rng(seed, index, split, 11))
    a = np.concatenate([scenes.sixteen_bit(photo), nir[:, :, None]], axis=2)
    b = scenes.colourize(scene.label)
    fields = {"a.png": encode_image(a), "b.png": encode_png(b)}
    return Packed(key=f"{index:06d}", fields=fields, size=(size, size)).with_pixels(a=a, b=b)


@functools.cache
def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    return np.ascontiguousarray(img[:, :, :3])


def photo_crop(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, str]:
    """A random square crop (45-100 % of the shorter side), resized to size x size, maybe mirrored."""
    rng = np.random.default_rng([seed, _SPLIT_IDS.get(split, 9), index, 7])
    name = PHOTOS[int(rng.integers(len(PHOTOS)))]
    img = _photo(name)
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(0.45, 1.0))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = resize(img[top : top + side, left : left + side], (size, size))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop), name


def edges_of(photo: np.ndarray) -> np.ndarray:
    """Canny edges as black lines on white, RGB (the edges2shoes convention)."""
    from skimage.color import rgb2gray
    from skimage.feature import canny

    sigma = 1.6 * photo.shape[0] / 256
    edges = canny(rgb2gray(photo), sigma=max(sigma, 0.8))
    grey = np.where(edges, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def edges_sample(job: tuple[int, str, int, int, int]) -> Packed:
    seed, split, index, size, quality = job
    photo, _ = photo_crop(seed, split, index, size)
    edges = edges_of(photo)
    fields = {"a.png": encode_png(edges), "b.jpg": encode_jpeg(photo, quality)}
    return Packed(key=f"{index:06d}", fields=fields, size=(size, size)).with_pixels(a=edges, b=photo)


def color_sample(job: tuple[int, str, int, int, int]) -> Packed:
    seed, split, index, size, quality = job
    photo, _ = photo_crop(seed, split, index, size)
    return Packed(key=f"{index:06d}", fields={"img.jpg": encode_jpeg(photo, quality)}, size=(size, size))


# --- builders ------------------------------------------------------------------------------


def _meta(name: str, split: str, seed: int, size: int) -> dict:
    if name == "scenes":
        return {
            "task": "translation",
            "dataset": "scenes",
            "split": split,
            "source": f"p2p-data demo scenes (seed {seed}, size {size})",
            "has_labels": True,
            "classes": list(scenes.CLASSES),
            "palette": [list(c) for c in scenes.PALETTE],
            "ignore_index": 255,
            "sides": {"a": "photo", "b": "colour label map"},
        }
    if name in ("scenes-depth", "scenes-bands"):
        depth = name == "scenes-depth"
        return {
            "task": "translation",
            "dataset": name,
            "split": split,
            "source": f"p2p-data demo {name} (seed {seed}, size {size})",
            "has_labels": False,
            "sides": {"a": "16-bit grey", "b": "16-bit depth (mm)"}
            if depth
            else {"a": "16-bit red, green, blue, near-infrared", "b": "colour label map"},
        }
    if name == "photos-edges":
        return {
            "task": "translation",
            "dataset": "photos-edges",
            "split": split,
            "has_labels": False,
            "source": f"p2p-data demo photos-edges (scikit-image photos {', '.join(PHOTOS)}; seed {seed}, size {size})",
            "sides": {"a": "Canny edges", "b": "photo"},
        }
    return {
        "task": "colorization",
        "dataset": "photos-color",
        "split": split,
        "has_labels": False,
        "source": f"p2p-data demo photos-color (scikit-image photos {', '.join(PHOTOS)}; seed {seed}, size {size})",
    }


_ENCODERS: dict[str, Callable] = {
    "scenes": scene_sample,
    "photos-edges": edges_sample,
    "photos-color": color_sample,
    "scenes-depth": depth_sample,
    "scenes-bands": bands_sample,
}


def build_demo(
    name: str,
    out: str | Path,
    *,
    train: int,
    val: int,
    size: int = 256,
    seed: int = 0,
    shard_size: int = 100,
    quality: int = 95,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
) -> dict[str, PackResult]:
    """Write OUT/train and OUT/val of demo set `name`; returns the pack result per split.

    `progress(split, jobs)` may return a callback that receives job counts as they finish.
    """
    if name not in DEMOS:
        raise DataError(f"unknown demo {name!r}; choose one of: {', '.join(DEMOS)}")
    if size < 16:
        raise DataError(f"--size must be at least 16, got {size}")
    if train < 1 or val < 0:
        raise DataError("--train must be at least 1 and --val at least 0")
    if not 1 <= quality <= 100:
        raise DataError(f"--quality must lie in 1..100, got {quality}")
    out = Path(out)
    results = {}
    splits = [("train", train)] + ([("val", val)] if val else [])
    if not overwrite:  # refuse before writing anything
        from p2p_dist.data.writer import prepare_output

        for split, _ in splits:
            prepare_output(out / split, name, overwrite=False, resume=False, resumable=False)
    for split, count in splits:
        jobs = [(seed, split, i, size, quality) for i in range(count)]
        callback = progress(split, count) if progress else None
        results[split] = pack(
            out / split,
            name,
            jobs,
            _ENCODERS[name],
            _meta(name, split, seed, size),
            shard_size=shard_size,
            workers=workers,
            overwrite=overwrite,
            progress=callback,
        )
    return results
