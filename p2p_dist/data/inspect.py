"""`p2p-data inspect`: what a shard source holds (shards, samples, sizes, task) and a contact sheet."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from p2p_dist.data.decode import decode_image, task_of_fields
from p2p_dist.data.index import read_index
from p2p_dist.data.scenes import colourize
from p2p_dist.data.shards import RawSample, SampleError, expand_shards, is_remote, iter_raw_samples
from p2p_dist.data.transforms import resize
from p2p_dist.imageio import is_image_field, write_image


@dataclass
class ShardInfo:
    url: str
    samples: int = 0
    bytes: int | None = None
    fields: list[str] = field(default_factory=list)
    error: str | None = None
    bad: list[str] = field(default_factory=list)  # "key: reason" of samples that do not decode


@dataclass
class Report:
    source: str
    shards: list[ShardInfo]
    index: dict | None
    task: str | None
    sizes: dict = field(default_factory=dict)  # "WxH" -> count (decoded samples only)
    verified: bool = False

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bad(self) -> int:
        return sum(len(s.bad) for s in self.shards) + sum(1 for s in self.shards if s.error)


def _image_fields(sample: RawSample) -> list[str]:
    return [f for f in sorted(sample.fields) if is_image_field(f)]


def _decode_all(sample: RawSample) -> dict[str, np.ndarray]:
    out = {}
    for name in _image_fields(sample):
        stem = name.split(".", 1)[0]
        out[stem] = decode_image(sample.read(name), "label" if stem in ("label", "labelids") else "RGB")
    return out


def inspect_source(
    source: str,
    *,
    sheet: str | os.PathLike | None = None,
    sheet_samples: int = 16,
    verify: bool = False,
    tile: int = 128,
) -> Report:
    """Count every shard's samples (headers only unless `verify`), and write a contact sheet."""
    urls = expand_shards(source)
    index = read_index(source)
    infos, picked, sizes = [], [], {}
    for url in urls:
        info = ShardInfo(url=url, bytes=None if is_remote(url) else os.path.getsize(url))
        errors: list[str] = []
        for sample in iter_raw_samples(url, lambda _shard, _key, reason, bad=errors: bad.append(reason)):
            if info.samples == 0:
                info.fields = sorted(sample.fields)
            info.samples += 1
            want = len(picked) < sheet_samples and sheet is not None
            if verify or want:
                try:
                    images = _decode_all(sample)
                except SampleError as exc:
                    info.bad.append(f"{sample.key}: {exc}")
                    continue
                for img in images.values():
                    k = f"{img.shape[1]}x{img.shape[0]}"
                    sizes[k] = sizes.get(k, 0) + 1
                    break
                if want:
                    picked.append(images)
        info.error = errors[0] if errors else None
        infos.append(info)
    task = index.get("task") if index else next((task_of_fields(s.fields) for s in infos if s.fields), None)
    report = Report(source=source, shards=infos, index=index, task=task, sizes=sizes, verified=verify)
    if sheet is not None:
        write_contact_sheet(sheet, picked, task, index, tile)
    return report


def _tile(img: np.ndarray, tile: int, label_palette=None) -> np.ndarray:
    nearest = img.ndim == 2
    if img.ndim == 2:
        img = colourize(img, label_palette) if label_palette is not None else np.repeat(img[:, :, None], 3, 2)
    h, w = img.shape[:2]
    return resize(img, (tile, max(1, round(w * tile / h))), nearest=nearest)


def _row(images: dict[str, np.ndarray], task: str | None, palette, tile: int) -> list[np.ndarray]:
    if task == "colorization" and "img" in images:
        grey = np.asarray(Image.fromarray(images["img"]).convert("L"))
        return [_tile(grey, tile), _tile(images["img"], tile)]
    tiles = [_tile(images[k], tile) for k in ("a", "b") if k in images]
    if "label" in images and palette is not None:
        tiles.append(_tile(images["label"], tile, palette))
    return tiles or [_tile(v, tile) for v in images.values()]


def write_contact_sheet(
    path: str | os.PathLike, samples: list[dict], task: str | None, index: dict | None, tile: int = 128
) -> Path:
    """A grid of samples, one sample per cell (its images side by side), written atomically."""
    path = Path(path)
    palette = index.get("palette") if index else None
    rows = [np.concatenate(_row(s, task, palette, tile), axis=1) for s in samples]
    if not rows:
        canvas = np.full((tile, tile * 2, 3), 255, np.uint8)
    else:
        cell_w = max(r.shape[1] for r in rows) + 8
        cols = 2 if len(rows) > 4 else 1
        n_rows = (len(rows) + cols - 1) // cols
        canvas = np.full((n_rows * (tile + 8) + 8, cols * cell_w + 8, 3), 255, np.uint8)
        for i, r in enumerate(rows):
            y, x = 8 + (i // cols) * (tile + 8), 8 + (i % cols) * cell_w
            canvas[y : y + r.shape[0], x : x + r.shape[1]] = r
    return write_image(path, canvas)
