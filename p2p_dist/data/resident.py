"""The training set resident on the training device (`data.placement`; docs/architecture.md, "Where the
pixels live"): decoded once in parallel, resized once to `data.load_size`, kept as the stream carries it
(uint8; int32 for a set with a 16-bit side, as torch's uint16 cannot flip) on the device (host memory
on a CPU run); each step gathers its batch by index and crops and flips it there (`jitter_fields`), with no
DataLoader, no worker and no copy of pixels from the host.

The batches are the stream's (p2p_dist/data/reader.py), pixels and draws, bit for bit on a CPU: the
plan runs the stream's order (p2p_dist/data/order.py) over slot numbers instead of raw samples, with
the same roles (max(1, data.num_workers) per rank), jitter draws, resume skip and replacement of a
corrupt sample. A rank holds the shards its roles read: its own split, or the whole set when there are
fewer shards than streams (every stream then reads them all).
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from p2p_dist.data import order
from p2p_dist.data.decode import SampleSpec, load_sample
from p2p_dist.data.errors import DataError, TooMuchBadData
from p2p_dist.data.jitter import Jitter, intraop_threads, jitter_fields, resized
from p2p_dist.data.loader import StreamStats, _check_rate, train_jitter
from p2p_dist.data.reader import MAX_LOOKAHEAD, Counter
from p2p_dist.data.shards import SampleError, expand_shards, iter_raw_samples

AUTO_FRACTION = 0.5  # the share of the training device's free memory a process's resident set may fill
GB = 1e9


def _gb(n: float) -> str:
    """Bytes for a person: 1.52 GB, 600.0 MB, 12.3 kB."""
    for unit, scale in (("GB", GB), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{n / 1e3:.1f} kB"


def host_available() -> int:
    """Bytes of host memory available for new allocations (Linux MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget(device: torch.device, local_processes: int) -> tuple[int, str]:
    """(bytes one process may hold, how they were found): AUTO_FRACTION of the free memory of the
    training device (torch.cuda.mem_get_info), or of the host's available memory on a CPU, shared by
    the processes of this machine."""
    if device.type == "cuda":
        free, share, where = torch.cuda.mem_get_info(device)[0], 1, f"free on {device}"
    else:
        free, share, where = host_available(), max(1, local_processes), "of available host memory"
    per = f" / {share} processes on this machine" if share > 1 else ""
    return int(AUTO_FRACTION * free / share), f"{AUTO_FRACTION:.0%} of {_gb(free)} {where}{per}"


def rank_shards(shards: list[str], rank: int, world_size: int, num_workers: int) -> tuple[list[str], str]:
    """The shards rank `rank`'s streams read (shard i belongs to stream i mod S, S = ranks x roles),
    and why a rank holds the whole set when it does."""
    W = max(1, num_workers)
    S = world_size * W
    if len(shards) >= S:
        return [url for i, url in enumerate(shards) if (i % S) // W == rank], ""
    why = f"every rank holds the whole set ({len(shards)} shard(s) for {S} streams: every stream reads them all)"
    return list(shards), why if world_size > 1 else ""


def _loaded_hw(jitter: Jitter, index: dict | None) -> tuple[int, int] | None:
    if jitter.load_size:
        return jitter.load_size, jitter.load_size
    size = (index or {}).get("image_size")
    return tuple(size) if size else None


def pixel_bytes(task: str, index: dict | None) -> int:
    """Bytes one loaded pixel of a training sample takes as held, every field's channels together: the
    sides of the index's "pixels" (none: 8-bit RGB; colorization: its RGB photo), 1 byte a channel,
    or int32's 4 when a side is 16-bit (the whole sample then, as `reader._flat` carries it)."""
    sides = list(((index or {}).get("pixels") or {}).values()) if task == "translation" else []
    sides = sides or [{"bits": 8, "channels": 3}] * (2 if task == "translation" else 1)
    held = torch.int32 if any(int(s["bits"]) > 8 for s in sides) else torch.uint8
    return held.itemsize * sum(int(s["channels"]) for s in sides)


def _sample_count(index: dict | None, shards: list[str]) -> int | None:
    """Samples in `shards` by the index (None when a shard is not in it)."""
    counts = {s["path"]: int(s.get("samples", 0)) for s in (index or {}).get("shards", [])}
    paths = [os.path.abspath(u) for u in shards]
    return sum(counts[p] for p in paths) if all(p in counts for p in paths) else None


@dataclass
class _Entry:
    """One raw sample of a held shard: its key and its row in the pixel tensors (-1: it did not decode)."""

    key: str
    row: int
    shard: str
    error: str = ""


@dataclass
class ResidentSet:
    """A rank's samples as M x H x W x C tensors per field (`spec.fields`; uint8, or int32 with a 16-bit
    side) on one device, and each held shard's raw samples in stored order."""

    shards: list[str]  # every shard of data.train, in order (the streams' split is over this list)
    images: dict[str, torch.Tensor]
    entries: list[_Entry]
    of_shard: dict[str, list[int]]
    size_hw: tuple[int, int]
    seconds: float

    @property
    def nbytes(self) -> int:
        return sum(x.untyped_storage().nbytes() for x in self.images.values())


def _decoded(raw, spec: SampleSpec, device: torch.device) -> list[torch.Tensor] | str:
    """One raw sample's images, resized to load_size as the stream's jitter resizes them (H x W x C
    on `device`; int32 for all when one is 16-bit, as `reader._flat` carries them), or why it did not
    decode."""
    try:
        images, _ = load_sample(raw, spec, np.random.default_rng(0))
    except SampleError as exc:
        return str(exc)
    wide = any(img.dtype == np.uint16 for img in images)
    out = []
    for img in images:
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.int32 if wide else None)).to(device)
        out.append(resized(x[None], spec.jitter, nearest=False)[0])
    return out


def load_resident(
    shards: list[str],
    mine: list[str],
    spec: SampleSpec,
    device: torch.device,
    *,
    capacity: int | None,
    limit: int,
    threads: int,
    progress=None,
    counter: Counter | None = None,
) -> ResidentSet:
    """Decode the shards `mine` (of all `shards`) once, `threads` samples at a time, onto `device`;
    refuse past `limit` bytes."""
    t0 = time.perf_counter()
    counter = counter or Counter()
    entries: list[_Entry] = []
    of_shard: dict[str, list[int]] = {}
    images: dict[str, torch.Tensor] = {}
    rows = 0
    task = progress.add_task("loading the training set", total=capacity) if progress is not None else None

    def grow(first: list[torch.Tensor], need: int) -> None:
        cap = max(need, capacity or 0, 2 * next(iter(images.values())).shape[0] if images else 0)
        row_bytes = sum(x.numel() * x.element_size() for x in first)
        if cap * row_bytes > limit:
            raise DataError(
                f"data.placement=device: this rank's share of the set needs more than {_gb(need * row_bytes)}, "
                f"over the budget of {_gb(limit)}; use data.placement=stream"
            )
        for name, x in zip(spec.fields, first):
            new = torch.empty((cap, *x.shape), dtype=x.dtype, device=device)
            if name in images:
                new[:rows].copy_(images[name][:rows])
            images[name] = new

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for url in mine:
            of_shard[url] = []
            raws = list(iter_raw_samples(url, counter.error))
            for raw, got in zip(raws, pool.map(lambda r: _decoded(r, spec, device), raws)):
                if isinstance(got, str):
                    entries.append(_Entry(raw.key, -1, raw.shard, got))
                else:
                    if not images or rows == next(iter(images.values())).shape[0]:
                        grow(got, rows + 1)
                    for name, x in zip(spec.fields, got):
                        if tuple(x.shape) != tuple(images[name].shape[1:]):
                            raise DataError(
                                f"data.placement=device needs images of one size: {raw.shard} {raw.key} is "
                                f"{x.shape[1]}x{x.shape[0]}, others {images[name].shape[2]}x{images[name].shape[1]}; "
                                "turn data.resize on or use data.placement=stream"
                            )
                        images[name][rows].copy_(x)
                    entries.append(_Entry(raw.key, rows, raw.shard))
                    rows += 1
                of_shard[url].append(len(entries) - 1)
            if task is not None:
                progress.advance(task, len(raws))
    if not rows:
        raise DataError(f"the shards of this rank hold no readable samples ({len(mine)} shards, first {mine[0]})")
    images = {name: x[:rows] for name, x in images.items()}
    size_hw = tuple(next(iter(images.values())).shape[1:3])
    return ResidentSet(shards, images, entries, of_shard, size_hw, time.perf_counter() - t0)


@dataclass
class ResidentLoader:
    """This rank's infinite training batches from a `ResidentSet`, the stream's batches (module
    docstring) as the step's tensors: {"A", "B", "key"} (colorization also "rgb")."""

    held: ResidentSet
    spec: SampleSpec
    batch_size: int
    seed: int
    rank: int
    world_size: int
    num_workers: int
    start_batch: int = 0
    shuffle_buffer: int = 0
    channels_last: bool = False
    max_bad_fraction: float = 0.01
    stats: StreamStats = field(default_factory=StreamStats)

    @property
    def bad_samples(self) -> int:
        return self.stats.bad

    def _plan(self, role: int, counter: Counter):
        """Role `role`'s batches as (entry ids, draws N x 3), as TrainReader makes them (reader.py)."""
        ids, skip, samples = order.stream_from(
            self.held.shards,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.num_workers,
            role=role,
            batch_size=self.batch_size,
            shuffle_buffer=self.shuffle_buffer,
            start_batch=self.start_batch,
            on_error=counter.error,
            read=self._read,
        )
        ahead: deque[int] = deque()

        def peek(i: int) -> _Entry:
            while len(ahead) <= i:
                ahead.append(next(samples))
            return self.held.entries[ahead[i]]

        chunk: list[tuple[_Entry, tuple]] = []
        for ordinal in itertools.count(skip):
            entry = peek(0)
            if entry.row < 0:
                counter.error(entry.shard, entry.key, entry.error)
                entry = next((peek(j) for j in range(1, MAX_LOOKAHEAD + 1) if peek(j).row >= 0), None)
                if entry is None:
                    raise TooMuchBadData(f"no decodable sample among {MAX_LOOKAHEAD} in a row (near {peek(0).shard})")
            else:
                counter.good()
            d = self.spec.jitter.draw(order.rng(self.seed, order.JITTER, *ids, ordinal), self.held.size_hw)
            ahead.popleft()
            chunk.append((entry, (d.top, d.left, int(d.flip))))
            if len(chunk) == self.batch_size:
                yield chunk
                chunk = []

    def _read(self, shard: str, on_error):
        return iter(self.held.of_shard[shard])  # the entries of one shard, in stored order

    def __iter__(self):
        W = max(1, self.num_workers)
        counters = [Counter() for _ in range(W)]
        plans = [self._plan(role, counters[role]) for role in range(W)]
        device = next(iter(self.held.images.values())).device
        self.stats = StreamStats()
        for j in itertools.count(self.start_batch):
            chunk = next(plans[j % W])
            counts = [c.snapshot() for c in counters]
            self.stats = StreamStats(
                sum(c[0] for c in counts),
                sum(c[1] for c in counts),
                counters[j % W].last_error or self.stats.last_error,
            )
            _check_rate(self.stats, self.max_bad_fraction)
            plan = torch.tensor([[e.row, *d] for e, d in chunk], dtype=torch.int64).to(device, non_blocking=True)
            with intraop_threads(device):
                out = jitter_fields(
                    self.held.images,
                    plan[:, 1:],
                    self.spec.jitter.crop_size,
                    channels_last=self.channels_last,
                    index=plan[:, 0],
                    scale=self.spec.jitter.scale,
                )
            out["key"] = [e.key for e, _ in chunk]
            yield out


def make_resident_loader(
    cfg,
    *,
    placement: str,
    device: torch.device,
    local_processes: int,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    start_batch: int = 0,
    channels_last: bool = False,
    progress=None,
) -> tuple[ResidentLoader | None, str]:
    """(the resident loader, a line saying what was held) for data.placement=device, or for auto when
    this rank's share fits `budget`; (None, why it streams) otherwise. `cfg` is a DataConfig;
    device placement over the budget raises DataError with the size and the budget."""
    if placement == "stream":
        return None, "data streamed from the shards (data.placement=stream)"
    shards = expand_shards(cfg.train)
    jitter, index = train_jitter(cfg, shards)  # the stream's, its pixel ranges included
    spec = SampleSpec(task=cfg.task, direction=cfg.direction, jitter=jitter)
    mine, whole = rank_shards(shards, rank, world_size, cfg.num_workers)
    limit, words = budget(device, local_processes)
    hw, count = _loaded_hw(jitter, index), _sample_count(index, mine)
    if hw is None:
        why = "its images differ in size and data.resize is off"
        if placement == "device":
            raise DataError(f"data.placement=device: {why}; use data.placement=stream")
        return None, f"data streamed (data.placement=auto: {why})"
    per_pixel = pixel_bytes(cfg.task, index)
    need = None if count is None else count * hw[0] * hw[1] * per_pixel
    if need is not None and need > limit:
        what = (
            f"this rank's share of the set ({count} samples at {hw[1]}x{hw[0]}, {per_pixel} bytes a pixel) "
            f"needs {_gb(need)}"
        )
        if placement == "device":
            raise DataError(f"data.placement=device: {what}, over the budget of {_gb(limit)} ({words})")
        return None, f"data streamed (data.placement=auto: {what}, over the budget of {_gb(limit)}, {words})"
    if need is None and placement == "auto":
        return None, "data streamed (data.placement=auto: no index.json gives the set's size)"
    counter = Counter()
    held = load_resident(
        shards,
        mine,
        spec,
        device,
        capacity=count,
        limit=limit,
        threads=cfg.num_workers,
        progress=progress,
        counter=counter,
    )
    loader = ResidentLoader(
        held,
        spec,
        batch_size=batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=cfg.num_workers,
        start_batch=start_batch,
        shuffle_buffer=cfg.shuffle_buffer,
        channels_last=channels_last,
        max_bad_fraction=cfg.max_bad_fraction,
    )
    bad = sum(e.row < 0 for e in held.entries)
    note = (
        f"data resident on {device} (data.placement={placement}): {len(held.entries) - bad} samples of "
        f"{len(mine)} shard(s) at {held.size_hw[1]}x{held.size_hw[0]}, {_gb(held.nbytes)} held (budget "
        f"{_gb(limit)}: {words}), loaded in {held.seconds:.1f} s"
        + (f", {bad} unreadable" if bad else "")
        + (f"; {whole}" if whole else "")
    )
    return loader, note
