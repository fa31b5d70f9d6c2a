"""The packing driver shared by every packer and demo builder.

A pack is a list of *jobs* (one per source sample: a file name, a pair of paths, a scene number)
and an *encode* function that turns a job into a sample (key + fields) or a skip. Jobs are cut
into shards of `shard_size` jobs, so shard contents do not depend on the number of worker
processes. Each shard is written under a temporary name and renamed when complete, then a small
hidden sidecar (`.NAME-000000.json`: sample count, sizes, skips, each side's pixel histograms) is
written; `index.json` comes last, built from the sidecars. A pack interrupted half-way is continued
with `resume=True`: shards with a sidecar are kept, the others rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL.Image import DecompressionBombError

from p2p_dist.data.errors import DataError
from p2p_dist.data.index import INDEX_NAME, load_index_file, side_histogram, side_summary, sizes_summary, write_index
from p2p_dist.data.tario import shard_name, write_shard
from p2p_dist.errors import StorageError
from p2p_dist.fsutil import atomic_write_text, check_writable_dir

_SHARD = re.compile(r"^.+-\d{6}\.tar$")
_LEFTOVER = re.compile(r"^\.(.+-\d{6})\.(tar\.\w+\.tmp|json)$")  # .SHARD.tar.*.tmp (temp) or .SHARD.json


@dataclass
class Packed:
    """An encoded sample: fields `ext -> bytes`, its image size (H, W) and, for translation packs,
    each side's stored pixels as `index.side_histogram` gives them (`with_pixels`): index.json's
    "pixels"."""

    key: str
    fields: dict
    size: tuple[int, int]
    pixels: dict[str, tuple[int, np.ndarray]] | None = None

    def with_pixels(self, **sides: np.ndarray) -> Packed:
        self.pixels = {side: side_histogram(img) for side, img in sides.items()}
        return self


@dataclass
class Skipped:
    """A job that yields no sample: `why` is a short category counted in the index."""

    why: str
    detail: str = ""


@dataclass
class PackResult:
    out: Path
    index: dict
    skipped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # why -> first few details
    kept_shards: int = 0
    removed: list[str] = field(default_factory=list)  # what --overwrite removed (the set it replaced)
    notes: list[str] = field(default_factory=list)  # what the source held that was not packed


def _listed_shards(out: Path) -> set[str]:
    """The shard names an existing index.json lists (none when it is missing or unreadable)."""
    try:
        return {s["name"] for s in load_index_file(out / INDEX_NAME)["shards"] if isinstance(s, dict)}
    except (DataError, KeyError, TypeError):
        return set()


def pack_set(out: Path, name: str) -> tuple[list[str], list[str]]:
    """(the files a pack named `name` replaces in `out`, the other sets' shards it leaves alone).

    The set replaced: index.json, the shards it lists, and every NAME-NNNNNN.tar. Shards of another
    name that no index.json lists belong to another data set and are never touched."""
    if not out.is_dir():
        return [], []
    ours = re.compile(rf"^{re.escape(name)}-\d{{6}}\.tar$")
    listed = _listed_shards(out)
    replaced, others = [], []
    for p in sorted(out.iterdir(), key=lambda p: p.name):
        if p.name == INDEX_NAME or p.name in listed or ours.match(p.name):
            replaced.append(p.name)
        elif _SHARD.match(p.name):
            others.append(p.name)
    return replaced, others


def name_files(names: list[str], shown: int = 4) -> str:
    """`a, b, c, d and 3 more (7 files)`: a few names and the count."""
    head = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return f"{head} ({len(names)} file{'s' if len(names) != 1 else ''})"


def prepare_output(
    out: str | os.PathLike, name: str, *, overwrite: bool, resume: bool, resumable: bool = True
) -> list[str]:
    """Make sure `out` may receive a pack named `name`; returns the files `overwrite` removed.

    Without --overwrite or --resume a folder holding shards is refused, listing what would go.
    --overwrite removes only the set it replaces (`pack_set`) and leaves other data sets' shards."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    replaced, others = pack_set(out, name)
    if (replaced or others) and not (overwrite or resume):
        hint = " or --resume to finish an interrupted pack" if resumable else ""
        what = f"pass --overwrite to replace {name_files(replaced)}{hint}" if replaced else "choose another folder"
        kept = f"; shards of another set stay: {name_files(others)}" if others else ""
        raise DataError(f"{out} already holds shards or an index.json: {what}{kept}")
    check_writable_dir(out)
    removed: list[str] = []
    if overwrite:
        for n in [INDEX_NAME, *replaced]:  # index.json first: the folder stops claiming to be complete
            if n not in removed and (out / n).exists():
                (out / n).unlink()
                removed.append(n)
    ours = re.compile(rf"^{re.escape(name)}-\d{{6}}$")
    for p in out.iterdir():  # the set's sidecars and temp files (--overwrite), else a killed run's temp files
        m = _LEFTOVER.match(p.name)
        mine = m is not None and (ours.match(m.group(1)) or f"{m.group(1)}.tar" in replaced)
        if mine and (overwrite or p.name.endswith(".tmp")):
            p.unlink()
    return removed


def _sidecar(out: Path, name: str) -> Path:
    return out / f".{name[:-4]}.json"


def _fingerprint(chunk: list) -> str:
    """What a shard was made from: a resumed pack keeps a shard only if its jobs are unchanged."""
    return hashlib.sha1(repr(chunk).encode()).hexdigest()


def _complete(out: Path, name: str, fingerprint: str) -> bool:
    side = _sidecar(out, name)
    if not ((out / name).is_file() and side.is_file()):
        return False
    try:
        return json.loads(side.read_text()).get("jobs") == fingerprint
    except (OSError, ValueError):
        return False


def _encode_many(encode: Callable[[Any], Packed | Skipped], jobs: list) -> list[Packed | Skipped]:
    return [_safe(encode, job) for job in jobs]


def _safe(encode, job) -> Packed | Skipped:
    try:
        return encode(job)
    except (OSError, ValueError, SyntaxError, DecompressionBombError) as exc:  # unreadable source: reported, not fatal
        return Skipped("unreadable", f"{_source_of(job)}: {exc}")


def _source_of(job) -> str:
    """The source file(s) of a job for a skip line: a packer's job is (path, ..., key, options)."""
    packer = isinstance(job, tuple) and len(job) > 2 and not isinstance(job[-1], (int, str))  # ends with options
    if not packer:
        return str(job)
    return " + ".join(y for x in job[:-2] for y in (x if isinstance(x, list) else [x]) if isinstance(y, str))


def _results(encode, chunks: list[list], workers: int) -> Iterator[list[Packed | Skipped]]:
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield _encode_many(encode, chunk)
        return
    # jobs go out in small pieces so every worker stays busy; results come back in order
    pieces = [(i, chunk[j : j + 8]) for i, chunk in enumerate(chunks) for j in range(0, len(chunk), 8)]
    with get_context("fork").Pool(workers) as pool:
        current, buffer = 0, []
        for (i, _), res in zip(pieces, pool.imap(partial(_encode_many, encode), [p for _, p in pieces])):
            if i != current:
                yield buffer
                current, buffer = i, []
            buffer.extend(res)
        yield buffer


def pack(
    out: str | os.PathLike,
    name: str,
    jobs: list,
    encode: Callable[[Any], Packed | Skipped],
    index_meta: dict,
    *,
    shard_size: int = 1000,
    workers: int = 1,
    overwrite: bool = False,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PackResult:
    """Encode `jobs` into shards NAME-000000.tar ... in `out`, then write index.json."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    if not re.match(r"^[A-Za-z0-9_.+-]+$", name):
        raise DataError(f"shard name {name!r} may only use letters, digits and _ . + -")
    if not jobs:
        raise DataError(f"nothing to pack into {out}: no input samples found")
    if resume and not overwrite and (Path(out) / INDEX_NAME).is_file():  # this part finished earlier
        index = load_index_file(Path(out) / INDEX_NAME)
        if progress:
            progress(len(jobs))
        return PackResult(
            out=Path(out), index=index, skipped=Counter(index.get("skipped", {})), kept_shards=len(index["shards"])
        )
    out = Path(out)
    removed = prepare_output(out, name, overwrite=overwrite, resume=resume)
    chunks = [jobs[i : i + shard_size] for i in range(0, len(jobs), shard_size)]
    names = [shard_name(name, i) for i in range(len(chunks))]
    fingerprints = [_fingerprint(chunk) for chunk in chunks]
    done = {i for i, n in enumerate(names) if resume and _complete(out, n, fingerprints[i])}
    todo = [i for i in range(len(chunks)) if i not in done]
    if progress:
        progress(sum(len(chunks[i]) for i in done))
    for i, results in zip(todo, _results(encode, [chunks[i] for i in todo], workers)):
        samples = [r for r in results if isinstance(r, Packed)]
        skips = [r for r in results if isinstance(r, Skipped)]
        keys = [s.key for s in samples]
        if len(set(keys)) != len(keys):
            dup = next(k for k, c in Counter(keys).items() if c > 1)
            raise DataError(f"two samples share the key {dup!r}; keys must be unique")
        meta = {
            "samples": len(samples),
            "sizes": sorted(Counter(s.size for s in samples).items()),
            "skipped": [[s.why, s.detail] for s in skips],
            "jobs": fingerprints[i],
            "pixels": _sparse(_add_pixels(None, samples, "sample")),
        }
        with _naming(out / names[i]):
            write_shard(out / names[i], [(s.key, s.fields) for s in samples])
            atomic_write_text(_sidecar(out, names[i]), json.dumps(meta))
        if progress:
            progress(len(chunks[i]))
    result = _finish(out, names, index_meta, kept=len(done))
    result.removed = removed
    return result


@contextlib.contextmanager
def _naming(shard: Path):
    """A failed write (disk full, file size limit, quota) -> StorageError (exit 74) naming the shard."""
    try:
        yield
    except OSError as exc:
        raise StorageError(
            f"could not write {shard}: {exc.strerror or exc}; the shards written before it are complete "
            "(--resume keeps them)"
        ) from None


def _add_pixels(total: dict | None, samples: list, what: str) -> dict | None:
    """Sum the samples' (or shards': Packed-like objects with .key and .pixels) histograms side by
    side, refusing a side whose bit depth or channel count changes."""
    for s in samples:
        if s.pixels is None:
            continue
        if total is None:
            total = {side: (bits, np.zeros_like(hist)) for side, (bits, hist) in s.pixels.items()}
        for side, (bits, hist) in s.pixels.items():
            have_bits, have = total[side]
            if (bits, hist.shape[0]) != (have_bits, have.shape[0]):
                raise DataError(
                    f"{what} {s.key} has {bits}-bit {hist.shape[0]}-channel pixels on side {side}, the ones before "
                    f"it {have_bits}-bit {have.shape[0]}-channel: a set keeps one pixel format per side"
                )
            have += hist
    return total


def _sparse(pixels: dict | None) -> dict | None:
    """Histograms for the sidecar's JSON: per side, bits and per channel the [value, count] pairs
    that occur."""
    if pixels is None:
        return None
    return {
        side: {"bits": bits, "hist": [[[int(v), int(h[v])] for v in np.flatnonzero(h)] for h in hist]}
        for side, (bits, hist) in pixels.items()
    }


def _dense(sparse: dict) -> dict:
    out = {}
    for side, rec in sparse.items():
        hist = np.zeros((len(rec["hist"]), 2 ** rec["bits"]), np.int64)
        for c, pairs in enumerate(rec["hist"]):
            if pairs:
                values, counts = np.asarray(pairs, np.int64).T
                hist[c, values] = counts
        out[side] = (rec["bits"], hist)
    return out


@dataclass
class _ShardPixels:
    key: str
    pixels: dict | None


def _finish(out: Path, names: list[str], index_meta: dict, kept: int) -> PackResult:
    shards, sizes, skipped, examples, pixels = [], [], Counter(), {}, None
    for n in names:
        meta = json.loads(_sidecar(out, n).read_text())
        shards.append({"name": n, "samples": meta["samples"]})
        if meta.get("pixels"):
            pixels = _add_pixels(pixels, [_ShardPixels(n, _dense(meta["pixels"]))], "shard")
        for (h, w), count in meta["sizes"]:
            sizes += [(h, w)] * count
        for why, detail in meta["skipped"]:
            skipped[why] += 1
            examples.setdefault(why, [])
            if len(examples[why]) < 5 and detail:
                examples[why].append(detail)
    empty = [s["name"] for s in shards if s["samples"] == 0]
    for n in empty:  # every job of this shard was skipped: do not leave an empty tar behind
        (out / n).unlink()
    shards = [s for s in shards if s["samples"]]
    total = sum(s["samples"] for s in shards)
    if total == 0:
        for n in names:
            _sidecar(out, n).unlink(missing_ok=True)
        reasons = ", ".join(f"{c} {w}" for w, c in skipped.items())
        raise DataError(f"no samples were packed into {out} (skipped: {reasons or 'all'})")
    index = {"format": 1, **index_meta, "shards": shards, "total": total, **sizes_summary(sizes)}
    if pixels is not None:
        index["pixels"] = {side: side_summary(bits, hist) for side, (bits, hist) in pixels.items()}
    if skipped:
        index["skipped"] = dict(sorted(skipped.items()))
    with _naming(out / INDEX_NAME):
        write_index(out, index)
    for n in names:
        _sidecar(out, n).unlink(missing_ok=True)
    return PackResult(out=out, index=index, skipped=skipped, examples=examples, kept_shards=kept)


__all__ = ["Packed", "Skipped", "PackResult", "pack", "prepare_output"]
