"""`index.json`: what a folder of shards holds (task, sample counts, image sizes, classes).

Written last by every packer (atomically), so a folder with an index is a complete pack. Format 1:
  {"format": 1, "task": "translation"|"colorization", "dataset": "scenes", "source": "...",
   "split": "train", "shards": [{"name": "scenes-000000.tar", "samples": 64}, ...], "total": 256,
   "image_size": [H, W] (null when sizes differ), "min_size": [H, W], "max_size": [H, W],
   "has_labels": bool, "classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255}
plus packer-specific counters ("skipped", "unmatched", ...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from p2p_dist.data.errors import DataError
from p2p_dist.data.shards import expand_part, is_remote, split_source
from p2p_dist.fsutil import atomic_write_text
from p2p_dist.models.registry import TASKS

INDEX_NAME = "index.json"
FORMAT = 1


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
    return merged
