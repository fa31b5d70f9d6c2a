"""Helpers for the p2p_eval tests: real shard sets written by the tests themselves.

`write_scene_shards` packs procedurally generated `scenes` (p2p_dist.data.scenes: photo A,
colour label map B, label.png class ids) into tar shards with an index.json in the shard
contract's format, without going through the p2p-data CLI, so the eval tests control keys,
sizes and counts exactly.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(
    folder: Path,
    samples: list[dict],
    name: str = "scenes",
    shard_size: int = 4,
    classes=None,
    palette=None,
    task: str = "translation",
    dataset: str = "scenes",
    split: str = "val",
) -> Path:
    """samples: dicts with "key" and arrays for "a", "b" (and optional "label")."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s0 in range(0, len(samples), shard_size):
        shard = f"{name}-{s0 // shard_size:06d}.tar"
        part = samples[s0 : s0 + shard_size]
        with tarfile.open(folder / shard, "w") as tar:
            for s in part:
                for member, arr in s.items():
                    if member == "key":
                        continue
                    data = png_bytes(arr)
                    info = tarfile.TarInfo(f"{s['key']}.{member}.png")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append({"name": shard, "samples": len(part)})
    first = samples[0]["a"] if "a" in samples[0] else samples[0]["img"]
    index = {
        "format": 1,
        "task": task,
        "dataset": dataset,
        "source": "tests",
        "split": split,
        "shards": shards,
        "total": len(samples),
        "image_size": list(first.shape[:2]),
        "has_labels": "label" in samples[0],
        "ignore_index": 255,
    }
    if classes is not None:
        index["classes"] = list(classes)
        index["palette"] = [list(c) for c in palette]
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def scene_samples(n: int, size: int = 64, seed: int = 0, split: str = "val") -> list[dict]:
    from p2p_dist.data.scenes import make_scene

    out = []
    for i in range(n):
        photo, colour, label = make_scene(seed, i, size=size, split=split)
        out.append({"key": f"{split}_{i:05d}", "a": photo, "b": colour, "label": label.astype(np.uint8)})
    return out


def write_scene_shards(
    folder: Path, n: int, size: int = 64, seed: int = 0, split: str = "val", shard_size: int = 4
) -> Path:
    from p2p_dist.data.scenes import CLASSES, PALETTE

    return write_shards(
        folder,
        scene_samples(n, size, seed, split),
        shard_size=shard_size,
        classes=CLASSES,
        palette=PALETTE,
        split=split,
    )
