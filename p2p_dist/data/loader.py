"""The loaders the caller iterates (`make_train_loader`, `make_eval_loader`): checks before a read
starts, the readers run in-process or in DataLoader workers (its public API only), bad-data counts
summed over workers.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader, IterableDataset

from p2p_dist.data.cache import stream_budget
from p2p_dist.data.decode import SampleSpec, stems_of, task_of_fields
from p2p_dist.data.device_decode import Encoded, decode_on_device
from p2p_dist.data.errors import DataError, TooMuchBadData
from p2p_dist.data.index import read_index, run_ranges
from p2p_dist.data.jitter import Jitter, jitter_batch
from p2p_dist.data.reader import EvalReader, Failure, TrainReader
from p2p_dist.data.shards import expand_shards, is_remote, iter_raw_samples
from p2p_dist.data.transforms import PixelRange

__all__ = ["expand_shards", "make_train_loader", "make_eval_loader", "StreamLoader", "StreamStats", "TooMuchBadData"]

MIN_SAMPLES_FOR_RATE = 50  # the bad-data rate is judged only after this many samples


@dataclass
class StreamStats:
    """Samples decoded and samples (or shards) skipped as corrupt, summed over workers."""

    samples: int = 0
    bad: int = 0
    last_error: str = ""

    @property
    def seen(self) -> int:
        return self.samples + self.bad

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0


def _check_rate(stats: StreamStats, max_bad_fraction: float) -> None:
    if stats.seen >= MIN_SAMPLES_FOR_RATE and stats.bad > max_bad_fraction * stats.seen:
        raise TooMuchBadData(
            f"{stats.bad} of {stats.seen} samples or shards were unreadable ({stats.bad_fraction:.1%}, above "
            f"max_bad_fraction={max_bad_fraction}); last: {stats.last_error}"
        )


def _ignore_stop_signals(_worker_id: int) -> None:
    """Workers leave SIGTERM/SIGUSR1 to the training process: torchrun and SLURM signal the whole
    process group, and a worker killed by it would crash the step before the checkpoint is written.
    The training process ends its workers itself when it exits (`_close_open_reads`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


# this process's open reads (`StreamLoader.read`) and prefetch threads (p2p_dist/data/prefetch.py)
OPEN_READS: weakref.WeakSet = weakref.WeakSet()
_EXIT_HANDLER: list = []  # [the registered handler] once a read started workers


def _close_open_reads() -> None:
    """Workers ignore SIGTERM (`_ignore_stop_signals`), so multiprocessing's exit-time terminate()
    cannot end them, and its join() would wait forever when the interpreter exits with a read still
    open (a script that stops iterating, a notebook, an error kept in a traceback). Registered after
    multiprocessing's and torch's exit handlers, this runs before them (atexit runs the last registered
    first): closing each open read drops its DataLoader iterator, whose own shutdown stops the workers."""
    for read in list(OPEN_READS):
        with contextlib.suppress(ValueError):  # a prefetch thread is inside it; it closes it when closed itself
            read.close()


def _passthrough(item):
    """Items are already batches (built in the reader): hand them over untouched."""
    return item


@dataclass
class StreamLoader:
    """Iterable of batches. Runs the reader in-process (num_workers=0) or in DataLoader workers, sums
    the workers' bad-data counters into `stats` and stops with TooMuchBadData above the rate. With
    `device`, each batch goes through `jitter_batch` there before it is handed out."""

    dataset: IterableDataset
    num_workers: int = 0
    max_bad_fraction: float = 0.01
    seed: int = 0
    pin_memory: bool = False
    epoch_batches: int | None = None
    device: torch.device | None = None
    stats: StreamStats = field(default_factory=StreamStats)

    @property
    def bad_samples(self) -> int:
        return self.stats.bad

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        if self.epoch_batches is None:
            raise TypeError("this stream has no fixed length (pass epoch_batches)")
        return self.epoch_batches

    def _source(self) -> Iterator:
        if self.num_workers == 0:
            return iter(self.dataset)
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.seed),  # never touch the global torch RNG
            collate_fn=_passthrough,
            worker_init_fn=_ignore_stop_signals,
            prefetch_factor=2,
            persistent_workers=False,
        )
        if not _EXIT_HANDLER:
            _EXIT_HANDLER.append(atexit.register(_close_open_reads))  # after multiprocessing.util's
        return iter(loader)

    def __iter__(self) -> Iterator:
        return self.read()

    def read(self, *, encoded: bool = False) -> Iterator:
        """The batches. The JPEGs of `Encoded` ones (data.decode on the GPU) are decoded here, on the
        CPU, unless `encoded` (p2p_dist/data/prefetch.py decodes them on the device)."""
        read = self._read(encoded)
        OPEN_READS.add(read)
        return read

    def _read(self, encoded: bool) -> Iterator:
        per_worker: dict[int, tuple[int, int, str]] = {}
        self.stats = StreamStats()
        produced = 0
        source = self._source()
        try:
            for item, worker, counts in source:
                per_worker[worker] = counts
                self.stats = StreamStats(
                    samples=sum(c[0] for c in per_worker.values()),
                    bad=sum(c[1] for c in per_worker.values()),
                    last_error=counts[2] or self.stats.last_error,
                )
                if isinstance(item, Failure):
                    raise item.exception()
                _check_rate(self.stats, self.max_bad_fraction)
                if item is None:
                    continue
                if isinstance(item, Encoded) and not encoded:
                    item = item.decode(torch.device("cpu"))
                yield item if self.device is None else jitter_batch(item, self.device)
                produced += 1
                if self.epoch_batches is not None and produced >= self.epoch_batches:
                    return
        finally:
            source = None  # the workers stop with their iterator, even if a traceback keeps this frame


# --- checks before a read starts ----------------------------------------------------------------


def _probe_fields(shards: list[str]) -> list[str] | None:
    """Field names of the first sample of the first local shard (None when unknown)."""
    for url in shards[:1]:
        if is_remote(url):
            return None
        for sample in iter_raw_samples(url, lambda *_: None):
            return sorted(sample.fields)
    return None


def check_source(
    source: str,
    shards: list[str],
    task: str,
    jitter: Jitter | None,
    *,
    with_labels: bool = False,
    what: str = "task",
    mixed_ok: bool = False,
) -> dict | None:
    """Refuse, with one line, shards that cannot serve this task or these transforms."""
    index = read_index(source)
    if index is not None and index.get("task") != task:
        raise DataError(f"{source} holds {index.get('task')} shards (index.json) but {what} is {task}")
    fields = _probe_fields(shards)
    if fields is not None:
        found = task_of_fields(fields)
        if found is None:
            raise DataError(
                f"the first sample of {shards[0]} has fields {', '.join(fields) or 'none'}; "
                f"{task} needs {'a.* and b.*' if task == 'translation' else 'img.*'}"
            )
        if found != task:
            raise DataError(f"{source} holds {found} samples ({', '.join(fields)}) but {what} is {task}")
        if with_labels and "label" not in stems_of(fields):
            raise DataError(f"{source} has no label maps (label.png), which this evaluation needs")
    if index is not None and with_labels and index.get("has_labels") is False:
        raise DataError(f"{source} has no label maps (index.json: has_labels false), which this evaluation needs")
    if index is not None and jitter is not None:
        fixed = jitter.load_size is None and jitter.crop_size is None
        if fixed and not mixed_ok and index.get("image_size") is None and index.get("min_size"):
            lo, hi = index["min_size"], index["max_size"]
            raise DataError(
                f"{source} holds images of mixed sizes ({lo[1]}x{lo[0]} to {hi[1]}x{hi[0]}) and resizing is off; "
                "turn resizing on, use batch size 1, or repack with --resize"
            )
        if jitter.load_size is None and jitter.crop_size and index.get("min_size"):
            h, w = index["min_size"]
            if min(h, w) < jitter.crop_size:
                raise DataError(
                    f"{source} holds images as small as {w}x{h}, below the crop size {jitter.crop_size}; "
                    "turn resizing on or lower the crop size"
                )
    return index


def _check_layout(rank: int, world_size: int, batch_size: int, num_workers: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise DataError(f"num_workers must be >= 0, got {num_workers}")


# --- the public constructors --------------------------------------------------------------------


def train_jitter(cfg, shards: list[str]) -> tuple[Jitter, dict | None]:
    """data.train's jitter, its shards checked against data.task (`check_source`), and its index: the
    data.resize/crop/flip of `Jitter.from_config` and, for translation, the run's pixel ranges (stored
    pixels -> [-1, 1] as data.normalize says; `Config.pixel_ranges`). The streamed and the resident
    training sets both take it from here."""
    jitter = Jitter.from_config(cfg)
    index = check_source(cfg.train, shards, cfg.task, jitter, what="data.task")
    if cfg.task == "translation":
        jitter = replace(jitter, scale=run_ranges(index, cfg.direction, cfg.normalize, cfg.percentile))
    return jitter, index


def make_train_loader(
    cfg,
    *,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    start_batch: int = 0,
    num_workers: int | None = None,
    epoch_batches: int | None = None,
    pin_memory: bool | None = None,
) -> StreamLoader:
    """Infinite, resampled `Pixels` batches for one rank (order: p2p_dist/data/order.py): decoded,
    untransformed uint8 images and each sample's draw, which `p2p_dist.data.jitter.jitter_batch(batch,
    device)` turns into the step's tensors on the training device. With data.decode on the GPU the
    readers ship JPEGs encoded, for `p2p_dist.data.prefetch.prefetch` to decode on the device.

    `cfg` is a `p2p_dist.config.DataConfig`. Deterministic given (seed, rank, world_size,
    num_workers); `start_batch=k` yields exactly batches k, k+1, ... of the stream started at 0.
    `epoch_batches` (optional) stops after that many batches, the same count on every rank.
    """
    workers = cfg.num_workers if num_workers is None else num_workers
    _check_layout(rank, world_size, batch_size, workers)
    if start_batch < 0:
        raise DataError(f"start_batch must be >= 0, got {start_batch}")
    if not cfg.train:
        raise DataError("data.train is empty: give a shard folder, glob or brace pattern")
    shards = expand_shards(cfg.train)
    jitter, _ = train_jitter(cfg, shards)
    ship_jpeg = decode_on_device(cfg.decode)
    dataset = TrainReader(
        shards,
        SampleSpec(task=cfg.task, direction=cfg.direction, jitter=jitter, ship_jpeg=ship_jpeg),
        batch_size=batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=workers,
        start_batch=start_batch,
        shuffle_buffer=cfg.shuffle_buffer,
        cache_bytes=stream_budget(cfg.cache_mb, workers),
    )
    return StreamLoader(
        dataset,
        num_workers=workers,
        max_bad_fraction=cfg.max_bad_fraction,
        seed=seed,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        epoch_batches=epoch_batches,
    )


def make_eval_loader(
    source: str,
    *,
    task: str,
    direction: str,
    size: int | None,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    with_labels: bool = False,
    max_bad_fraction: float = 0.01,
    pin_memory: bool = False,
    device: torch.device | str = "cpu",
    scale: tuple[PixelRange, PixelRange] | None = None,
) -> StreamLoader:
    """Finite batches, no random jitter: every sample exactly once across all ranks and workers.
    `scale`: the (input, output) mapping of stored pixels to [-1, 1] (a generator's input_range and
    output_range; None: 8-bit RGB, x / 127.5 - 1).

    Images are resized to size x size (labels with nearest neighbours) on `device`, or kept as stored
    when `size` is None. Batches: {"A", "B", "key"} plus "label" (LongTensor BxHxW, 255 = ignore) when
    `with_labels`, and "rgb" (the RGB photo in [-1, 1]) for colorization.
    """
    if task not in ("translation", "colorization"):
        raise DataError(f"task must be translation or colorization, got {task!r}")
    if direction not in ("AtoB", "BtoA"):
        raise DataError(f"direction must be AtoB or BtoA, got {direction!r}")
    if size is not None and size < 1:
        raise DataError(f"size must be positive, got {size}")
    _check_layout(rank, world_size, batch_size, num_workers)
    shards = expand_shards(source)
    jitter = Jitter(load_size=size, crop_size=None, flip=False, scale=scale)
    with_labels = with_labels and task == "translation"
    check_source(source, shards, task, jitter, with_labels=with_labels, mixed_ok=batch_size == 1)
    spec = SampleSpec(task=task, direction=direction, jitter=jitter, with_labels=with_labels)
    dataset = EvalReader(shards, spec, batch_size=batch_size, rank=rank, world_size=world_size, num_workers=num_workers)
    return StreamLoader(
        dataset,
        num_workers=num_workers,
        max_bad_fraction=max_bad_fraction,
        pin_memory=pin_memory,
        device=torch.device(device),
    )
