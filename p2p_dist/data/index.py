"""`index.json`: what a folder of shards holds (task, sample counts, image sizes, classes).

Written last by every packer (atomically), so a folder with an index is a complete pack. Format 1:
  {"format": 1, "task": "translation"|"colorization", "dataset": "scenes", "source": "...",
   "split": "train", "shards": [{"name": "scenes-000000.tar", "samples": 64}, ...], "total": 256,
   "image_size": [H, W] (null when sizes differ), "min_size": [H, W], "max_size": [H, W],
   "has_labels": bool, "classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255,
   "pixels": {"a": SIDE, "b": SIDE}}
plus packer-specific counters ("skipped", "unmatched", ...). A translation pack's "pixels" describes
each side's values over every sample as packed (before JPEG's loss): SIDE = {"bits": 8|16,
"channels": C, "min": [per channel], "max": [...], "percentiles": {"0.1": [...], "99.9": [...], ...}}
(PERCENTILES and their complements). An index without "pixels" (packs before 16-bit data, remote
shards) is 8-bit RGB. `pixel_ranges` turns it into the [-1, 1] mapping a run trains with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from p2p_dist.config import PERCENTILE_CHOICES, PERCENTILES
from p2p_dist.data.errors import DataError
from p2p_dist.data.shards import expand_part, is_remote, split_source
from p2p_dist.data.transforms import BIT_DEPTHS, RGB8, PixelRange
from p2p_dist.fsutil import atomic_write_text
from p2p_dist.models.registry import TASKS

INDEX_NAME = "index.json"
FORMAT = 1
NORMALIZE = ("bitdepth", "percentile")  # data.normalize


def write_index(folder: str | os.PathLike, index: dict) -> Path:
    """Write `folder/index.json` atomically (temp name, then rename)."""
    path = Path(folder) / INDEX_NAME
    atomic_write_text(path, json.dumps(index, indent=1) + "\n")  # 0666 minus umask, like any file
    return path


def load_index_file(path: str | os.PathLike) -> dict:
    """One index.json, checked for the fields every reader relies on."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shards"), list):
        raise DataError(f"{path} is not a shard index (no 'shards' list)")
    if data.get("format", FORMAT) != FORMAT:
        raise DataError(f"{path} has index format {data.get('format')!r}; this version reads format {FORMAT}")
    if data.get("task") not in TASKS:
        raise DataError(f"{path}: task {data.get('task')!r} is not one of {', '.join(TASKS)}")
    return data


def sizes_summary(sizes: list[tuple[int, int]]) -> dict:
    """image_size (uniform or None), min_size and max_size of a list of (H, W)."""
    if not sizes:
        return {"image_size": None, "min_size": None, "max_size": None}
    uniform = len(set(sizes)) == 1
    return {
        "image_size": list(sizes[0]) if uniform else None,
        "min_size": [min(h for h, _ in sizes), min(w for _, w in sizes)],
        "max_size": [max(h for h, _ in sizes), max(w for _, w in sizes)],
    }


def _folders_of(part: str) -> dict[str, set[str]]:
    """Folder -> the shard paths of this source part that live in it (local parts only)."""
    folders: dict[str, set[str]] = {}
    for url in expand_part(part):
        path = os.path.abspath(url)
        folders.setdefault(os.path.dirname(path), set()).add(path)
    return folders


def read_index(source: str) -> dict | None:
    """The merged index of every shard a source names; None when no shard has an index.

    Only the shards the source selects are counted (a pattern may pick part of a folder). When
    some selected shards have no index, "total" is None and "unindexed" counts them.
    """
    merged: dict | None = None
    unindexed = 0
    for part in split_source(source):
        if is_remote(part):
            unindexed += 1
            continue
        for folder, paths in _folders_of(part).items():
            index_path = os.path.join(folder, INDEX_NAME)
            if not os.path.isfile(index_path):
                unindexed += len(paths)
                continue
            index = load_index_file(index_path)
            entries = [dict(s, path=os.path.join(folder, s["name"])) for s in index["shards"]]
            picked = [s for s in entries if s["path"] in paths]
            unindexed += len(paths) - len(picked)
            merged = _merge(merged, index, picked, index_path)
    if merged is None:
        return None
    if unindexed:
        merged["total"] = None
        merged["unindexed"] = unindexed
    return merged


def _merge(merged: dict | None, index: dict, picked: list[dict], where: str) -> dict:
    total = sum(int(s.get("samples", 0)) for s in picked)
    if merged is None:
        out = {k: v for k, v in index.items() if k not in ("shards", "total")}
        out.update(shards=picked, total=total, indexes=[where])
        return out
    if index["task"] != merged["task"]:
        raise DataError(f"the shards mix tasks: {merged['indexes'][0]} is {merged['task']}, {where} is {index['task']}")
    merged["shards"] = merged["shards"] + picked
    merged["total"] += total
    merged["indexes"].append(where)
    for key in ("dataset", "split", "source"):
        a, b = merged.get(key), index.get(key)
        if a != b and b is not None:
            merged[key] = f"{a}+{b}" if a else b
    if merged.get("image_size") != index.get("image_size"):
        merged["image_size"] = None
    for key, pick in (("min_size", min), ("max_size", max)):
        a, b = merged.get(key), index.get(key)
        merged[key] = [pick(a[0], b[0]), pick(a[1], b[1])] if a and b else None
    merged["has_labels"] = bool(merged.get("has_labels")) and bool(index.get("has_labels"))
    merged["pixels"] = _merge_pixels(merged.get("pixels"), index.get("pixels"), merged["indexes"][0], where)
    return merged


def _merge_pixels(a: dict | None, b: dict | None, first: str, where: str) -> dict | None:
    """Two packs' pixel records: the same depth and channels per side or an error; min and max of both;
    percentiles only when equal (they do not combine)."""
    if a is None or b is None:  # a pack without statistics is 8-bit RGB
        known = a or b or {}
        if any((rec["bits"], rec["channels"]) != (8, 3) for rec in known.values()):
            raise DataError(f"the shards mix pixel formats: {first} and {where} (one is 8-bit RGB without statistics)")
        return None
    out = {}
    for side in ("a", "b"):
        x, y = a[side], b[side]
        if (x["bits"], x["channels"]) != (y["bits"], y["channels"]):
            raise DataError(
                f"the shards mix pixel formats: side {side} is {x['bits']}-bit {x['channels']}-channel in {first}, "
                f"{y['bits']}-bit {y['channels']}-channel in {where}"
            )
        out[side] = {
            **x,
            "min": [min(u, v) for u, v in zip(x["min"], y["min"])],
            "max": [max(u, v) for u, v in zip(x["max"], y["max"])],
            "percentiles": x["percentiles"] if x.get("percentiles") == y.get("percentiles") else None,
        }
    return out


# --- pixel statistics ----------------------------------------------------------------------------


def side_histogram(img: np.ndarray) -> tuple[int, np.ndarray]:
    """(bits, C x 2^bits histogram) of one side's stored pixels (uint8 or uint16, HxW or HxWxC)."""
    if img.dtype not in (np.uint8, np.uint16):
        raise DataError(f"pixels must be 8 or 16-bit unsigned integers, got {img.dtype}")
    bits = img.dtype.itemsize * 8
    flat = img.reshape(-1, 1 if img.ndim == 2 else img.shape[2])
    return bits, np.stack([np.bincount(flat[:, c], minlength=2**bits) for c in range(flat.shape[1])])


def side_summary(bits: int, hist: np.ndarray) -> dict:
    """index.json's record of a side from its summed histogram (see the module docstring)."""
    cum = np.cumsum(hist, axis=1)
    total = cum[:, -1:]

    def at(fraction: float) -> list[int]:  # the smallest value with at least `fraction` of the pixels at or below
        return [int(v) for v in np.argmax(cum >= np.maximum(1, np.ceil(fraction * total)), axis=1)]

    levels = sorted({*PERCENTILES, *(100 - p for p in PERCENTILES)})
    return {
        "bits": bits,
        "channels": int(hist.shape[0]),
        "min": [int(np.flatnonzero(h)[0]) for h in hist],
        "max": [int(np.flatnonzero(h)[-1]) for h in hist],
        "percentiles": {f"{p:g}": at(p / 100) for p in levels},
    }


def pixel_ranges(index: dict | None, normalize: str = "bitdepth", percentile: float = 1.0) -> dict[str, PixelRange]:
    """Each side's mapping to [-1, 1] ({"a": ..., "b": ...}) from a (merged) translation index:
    data.normalize=bitdepth, 0 .. 2^bits - 1 per channel; percentile, the recorded `percentile`-th and
    (100 - `percentile`)-th percentiles per channel (0: min and max) of the training set."""
    if normalize not in NORMALIZE:
        raise DataError(f"data.normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    pixels = (index or {}).get("pixels")
    if not pixels:
        if normalize == "percentile":
            where = "no index.json" if index is None else "an index.json without pixel statistics"
            raise DataError(f"data.normalize=percentile needs the measured percentiles, but the shards have {where}")
        return {"a": RGB8, "b": RGB8}
    out = {}
    for side in ("a", "b"):
        rec = pixels[side]
        bits, channels = int(rec["bits"]), int(rec["channels"])
        if normalize == "bitdepth" or bits not in BIT_DEPTHS:
            out[side] = PixelRange.full(bits, channels)
            continue
        if not percentile:
            lo, hi = rec["min"], rec["max"]
        else:
            levels = rec.get("percentiles") or {}
            lo, hi = levels.get(f"{percentile:g}"), levels.get(f"{100 - percentile:g}")
            if lo is None or hi is None:
                raise DataError(
                    f"data.percentile={percentile:g} is not recorded in the index ({PERCENTILE_CHOICES} are; shards of "
                    "several packs keep only min and max: 0)"
                )
        top = 2**bits - 1  # a constant channel still needs lo < hi
        lo = [min(float(v), top - 1.0) for v in lo]
        out[side] = PixelRange(bits, tuple(lo), tuple(max(float(h), v + 1) for v, h in zip(lo, hi)))
    return out


def run_ranges(
    index: dict | None, direction: str = "AtoB", normalize: str = "bitdepth", percentile: float = 1.0
) -> tuple[PixelRange, PixelRange] | None:
    """A translation run's (input, output) ranges (`pixel_ranges` in `direction`'s order); None when
    both are 8-bit RGB by the bit depth, the mapping of every run before 16-bit data."""
    r = pixel_ranges(index, normalize, percentile)
    pair = (r["b"], r["a"]) if direction == "BtoA" else (r["a"], r["b"])
    return None if pair == (RGB8, RGB8) else pair
