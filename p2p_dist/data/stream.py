"""Streams of batches from tar shards, for training (infinite, resampled, jittered, exactly
resumable) and for evaluation (finite, every sample exactly once across ranks and workers).

Each training process (rank) reads with `num_workers` DataLoader workers (or in-process when 0).
Every (rank, worker) pair is one *stream* s = rank * W + worker out of S = world_size * W
(W = max(1, num_workers)); rank and world_size are always passed in, never read from the
environment. Randomness is a pure function of position:

- shards: stream s reads shards[s::S] (all shards when there are fewer than S), in a fresh
  permutation per cycle drawn from (seed, rank, world_size, W, worker, cycle): resampled forever;
- shuffle buffer over *raw* (undecoded) samples, seeded by (seed, rank, world_size, W, worker);
- jitter (crop offsets, flip) drawn from an RNG seeded by (seed, rank, world_size, W, worker,
  ordinal), where ordinal counts the samples the stream has emitted. For translation the stream
  ships the draws with the decoded uint8 pixels and the step applies them on the training device
  (p2p_dist/data/device.py); where the pixels are transformed does not change what is drawn.

Batches are built inside the stream (a translation batch as one `PixelParcel`: a single tensor
crosses a worker's queue, which `StreamLoader` unpacks); global batch i belongs to stream role i % W. The DataLoader
asks its workers in turn starting with worker 0, so worker w plays role (w + start_batch) % W.
`start_batch=k` makes each role skip its own batches before k by passing raw samples through the
shard order and the shuffle buffer without decoding them: the result is exactly batches k, k+1,
... of the stream that started at 0. A corrupt sample is replaced by the next
good sample of the same stream (decoded with the bad sample's own jitter) so batch boundaries
never move and resume stays exact even with bad data; it is still counted and logged.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import signal
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from p2p_dist.data.cache import DecodedCache, stream_budget
from p2p_dist.data.decode import SampleSpec, load_example, load_pixels, stems_of, task_of_fields
from p2p_dist.data.device import draws_tensor, host_jitter, intraop_threads
from p2p_dist.data.errors import DataError, TooMuchBadData
from p2p_dist.data.index import read_index
from p2p_dist.data.shards import RawSample, SampleError, expand_shards, is_remote, iter_raw_samples
from p2p_dist.data.transforms import Jitter, JitterDraw
from p2p_dist.errors import UserError

__all__ = ["expand_shards", "make_train_loader", "make_eval_loader", "StreamLoader", "StreamStats", "TooMuchBadData"]

log = logging.getLogger("p2p_dist.data")

MIN_SAMPLES_FOR_RATE = 50  # the bad-data rate is judged only after this many samples
MAX_LOOKAHEAD = 10_000  # raw samples searched for a replacement of a corrupt one

# tags that keep the different random streams apart
_SHARDS, _SHUFFLE, _JITTER = 1, 2, 3


def _rng(seed: int, tag: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), tag, *(int(i) for i in ids)])


def worker_batches_before(start_batch: int, worker: int, num_streams: int) -> int:
    """How many of worker `worker`'s batches come before global batch `start_batch` (batch i is
    served by worker i % num_streams)."""
    if start_batch <= worker:
        return 0
    return (start_batch - worker + num_streams - 1) // num_streams


# --- bad-data bookkeeping -----------------------------------------------------------------------


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


class _Counter:
    """Per-stream counter: logs each bad sample with shard and key."""

    def __init__(self):
        self.samples = 0
        self.bad = 0
        self.last_error = ""

    def good(self) -> None:
        self.samples += 1

    def error(self, shard: str, key: str, reason: str) -> None:
        self.bad += 1
        self.last_error = f"{shard} {key}: {reason}" if key else f"{shard}: {reason}"
        log.warning("skipped bad data: shard %s, key %s: %s", shard, key or "-", reason)

    def snapshot(self) -> tuple[int, int, str]:
        return self.samples, self.bad, self.last_error


@dataclass
class _Failure:
    """An error raised inside a worker, carried to the main process as data (one clean line)."""

    kind: str
    message: str

    def exception(self) -> Exception:
        cls = {"TooMuchBadData": TooMuchBadData, "DataError": DataError}.get(self.kind, UserError)
        return cls(self.message)


def _check_rate(stats: StreamStats, max_bad_fraction: float) -> None:
    if stats.seen >= MIN_SAMPLES_FOR_RATE and stats.bad > max_bad_fraction * stats.seen:
        raise TooMuchBadData(
            f"{stats.bad} of {stats.seen} samples or shards were unreadable ({stats.bad_fraction:.1%}, above "
            f"max_bad_fraction={max_bad_fraction}); last: {stats.last_error}"
        )


# --- collation ----------------------------------------------------------------------------------


def _collate(examples: list[dict], keys: list[str]) -> dict:
    batch: dict = {}
    for name in examples[0]:
        tensors = [e[name] for e in examples]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            sizes = sorted(f"{s[-1]}x{s[-2]}" for s in shapes)
            raise DataError(
                f"images of mixed sizes in one batch ({', '.join(sizes)}); resize them (size / data.resize) "
                "or use batch size 1"
            )
        batch[name] = torch.stack(tensors)
    batch["key"] = list(keys)
    return batch


def _stacked(arrays: list[np.ndarray]) -> torch.Tensor:
    """Equal-shaped uint8 arrays -> one N x ... tensor. In a DataLoader worker it is stacked straight
    into shared memory, as torch's default_collate does: a tensor in ordinary memory is copied into a
    fresh shared segment when the worker's queue pickles it (1.6 ms per 786 kB here, against 0.2 ms
    for allocating the segment up front; bench/README.md, "The data path")."""
    shape = (len(arrays), *arrays[0].shape)
    if get_worker_info() is None:
        return torch.from_numpy(np.stack(arrays))
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    out = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    np.stack(arrays, out=out.numpy())
    return out


@dataclass
class PixelParcel:
    """A pixel batch as the stream hands it over: A's N images then B's in one uint8 tensor, and the
    draws as a NumPy array. Every tensor in an item of a worker's queue costs a shared segment and a
    file-descriptor handover of its own (a connection to the worker's resource sharer); A, B and the
    draws as three tensors cost 11.6 ms of CPU per batch of 4 at 256 px between the worker and the
    training process, one tensor 7.5 (bench/README.md). `StreamLoader` unpacks it with `batch()`."""

    pixels: torch.Tensor
    draws: np.ndarray
    jitter: Jitter
    key: list[str]

    def batch(self) -> dict:
        """{"A", "B": uint8 N x H x W x 3 (views of `pixels`), "draws": int64 N x 3, "jitter", "key"},
        the input of `p2p_dist.data.device.prepare_batch`."""
        n = len(self.key)
        return {
            "A": self.pixels[:n],
            "B": self.pixels[n:],
            "draws": torch.from_numpy(self.draws),
            "jitter": self.jitter,
            "key": self.key,
        }

    def pin_memory(self) -> PixelParcel:
        """The DataLoader's pin-memory thread calls this (on CUDA): page-locked pixels copy to the GPU
        asynchronously."""
        return replace(self, pixels=self.pixels.pin_memory())


def _collate_pixels(examples: list[tuple], keys: list[str], jitter: Jitter) -> PixelParcel:
    """(A, B, draw) per sample -> a `PixelParcel` of the batch. Images of different stored sizes
    cannot be stacked before the resize: such a batch is jittered here, sample by sample, with the same
    functions."""
    a, b, draws = (list(x) for x in zip(*examples))
    if len({x.shape for x in a}) > 1:
        if not (jitter.load_size or jitter.crop_size):
            sizes = sorted(f"{x.shape[1]}x{x.shape[0]}" for x in a)
            raise DataError(
                f"images of mixed sizes in one batch ({', '.join(sizes)}); resize them (size / data.resize) "
                "or use batch size 1"
            )
        a, b = host_jitter(a, draws, jitter), host_jitter(b, draws, jitter)
        jitter, draws = Jitter(), [JitterDraw()] * len(a)
    return PixelParcel(
        pixels=_stacked(a + b),
        draws=draws_tensor(draws).numpy(),
        jitter=jitter,
        key=list(keys),
    )


# --- the training stream ------------------------------------------------------------------------


class TrainStream(IterableDataset):
    """Infinite stream of jittered batches for one rank; see the module docstring."""

    def __init__(
        self,
        shards: list[str],
        spec: SampleSpec,
        *,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        start_batch: int = 0,
        shuffle_buffer: int = 0,
        cache_bytes: int = 0,
    ):
        super().__init__()
        self.shards = list(shards)
        self.spec = spec
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.start_batch = start_batch
        self.shuffle_buffer = shuffle_buffer
        self.cache_bytes = cache_bytes  # per stream (p2p_dist/data/cache.py)
        self._cache: DecodedCache | None = None

    def _ids(self, role: int) -> tuple[int, ...]:
        return (self.rank, self.world_size, max(1, self.num_workers), role)

    def _stream_shards(self, role: int) -> list[str]:
        W = max(1, self.num_workers)
        s, S = self.rank * W + role, self.world_size * W
        return self.shards[s::S] if len(self.shards) >= S else self.shards

    def _raw(self, role: int, counter: _Counter) -> Iterator[RawSample]:
        """Resampled forever: each cycle reads this stream's shards in a fresh seeded order."""
        shards = self._stream_shards(role)
        for cycle in itertools.count():
            order = _rng(self.seed, _SHARDS, *self._ids(role), cycle).permutation(len(shards))
            produced = 0
            for i in order:
                for sample in iter_raw_samples(shards[i], counter.error):
                    produced += 1
                    yield sample
            if produced == 0:
                raise DataError(
                    f"the shards of rank {self.rank} (stream {role}) hold no readable samples "
                    f"({len(shards)} shards, first {shards[0]})"
                )

    def _shuffled(self, raw: Iterator[RawSample], role: int) -> Iterator[RawSample]:
        size = self.shuffle_buffer
        if size <= 1:
            yield from raw
            return
        rng = _rng(self.seed, _SHUFFLE, *self._ids(role))
        buf: list[RawSample] = []
        for sample in raw:
            if len(buf) < size:
                buf.append(sample)
                continue
            j = int(rng.integers(size))
            out, buf[j] = buf[j], sample
            yield out

    def _examples(
        self, role: int, counter: _Counter, first_ordinal: int, samples: Iterator[RawSample]
    ) -> Iterator[tuple[str, dict]]:
        """Decode position by position; a bad sample is replaced by the next good one."""
        ahead: deque[RawSample] = deque()
        ids = self._ids(role)

        def peek(i: int) -> RawSample:
            while len(ahead) <= i:
                ahead.append(next(samples))
            return ahead[i]

        for ordinal in itertools.count(first_ordinal):
            sample = peek(0)
            rng_seed = (self.seed, _JITTER, *ids, ordinal)
            try:
                example = self._load(sample, _rng(*rng_seed))
                counter.good()
                key = sample.key
            except SampleError as exc:
                counter.error(sample.shard, sample.key, str(exc))
                key, example = self._replacement(peek, rng_seed)
            ahead.popleft()
            yield key, example

    def _load(self, sample: RawSample, rng: np.random.Generator):
        if self.spec.on_device:
            return load_pixels(sample, self.spec, rng, self._cache)
        return load_example(sample, self.spec, rng, self._cache)

    def _collate(self, chunk: list[tuple[str, object]]) -> dict | PixelParcel:
        examples, keys = [e for _, e in chunk], [k for k, _ in chunk]
        if self.spec.on_device:
            return _collate_pixels(examples, keys, self.spec.jitter)
        return _collate(examples, keys)

    def _replacement(self, peek, rng_seed) -> tuple[str, dict]:
        for j in range(1, MAX_LOOKAHEAD + 1):
            candidate = peek(j)
            try:
                return candidate.key, self._load(candidate, _rng(*rng_seed))
            except SampleError:
                continue
        raise TooMuchBadData(f"no decodable sample among {MAX_LOOKAHEAD} in a row (near {peek(0).shard})")

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        W = max(1, self.num_workers)
        # The DataLoader asks workers 0, 1, ... in turn, starting with worker 0; global batch i
        # belongs to stream role i % W, so worker w plays role (w + start_batch) % W.
        role = (worker + self.start_batch) % W
        counter = _Counter()
        self._cache = DecodedCache(self.cache_bytes) if self.cache_bytes else None  # this stream's own
        try:
            B = self.batch_size
            skip = worker_batches_before(self.start_batch, role, W) * B
            samples = self._shuffled(self._raw(role, counter), role)
            for _ in range(skip):  # exact resume: raw samples only, nothing is decoded
                next(samples)
            examples = self._examples(role, counter, skip, samples)
            # the host resize (a CPU device) runs on one intra-op thread, set once per batch
            cpu = torch.device("cpu")
            threads = (lambda: intraop_threads(cpu)) if self.spec.host_resize else contextlib.nullcontext
            while True:
                with threads():
                    batch = self._collate([next(examples) for _ in range(B)])
                yield batch, worker, counter.snapshot()
        except UserError as exc:
            yield _Failure(type(exc).__name__, str(exc)), worker, counter.snapshot()


# --- the evaluation stream ----------------------------------------------------------------------


class EvalStream(IterableDataset):
    """Finite stream: every sample once across all ranks and workers, no jitter, bad ones dropped."""

    def __init__(
        self, shards: list[str], spec: SampleSpec, *, batch_size: int, rank: int, world_size: int, num_workers: int
    ):
        super().__init__()
        self.shards = list(shards)
        self.spec = spec
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers

    def _raw(self, worker: int, counter: _Counter) -> Iterator[RawSample]:
        W = max(1, self.num_workers)
        s, S = self.rank * W + worker, self.world_size * W
        if len(self.shards) >= S:  # split by shard
            for url in self.shards[s::S]:
                yield from iter_raw_samples(url, counter.error)
            return
        # fewer shards than streams: every stream reads all shards, keeps every S-th sample;
        # broken shards are counted and logged by stream 0 only
        on_error = counter.error if s == 0 else (lambda *_: None)
        ordinal = 0
        for url in self.shards:
            for sample in iter_raw_samples(url, on_error):
                if ordinal % S == s:
                    yield sample
                ordinal += 1

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        counter = _Counter()
        rng = np.random.default_rng(0)  # the eval jitter has no random part; kept for the signature
        chunk: list[tuple[str, dict]] = []
        try:
            for sample in self._raw(worker, counter):
                try:
                    example = load_example(sample, self.spec, rng)
                except SampleError as exc:
                    counter.error(sample.shard, sample.key, str(exc))
                    continue
                counter.good()
                chunk.append((sample.key, example))
                if len(chunk) == self.batch_size:
                    yield _collate([e for _, e in chunk], [k for k, _ in chunk]), worker, counter.snapshot()
                    chunk = []
            if chunk:
                yield _collate([e for _, e in chunk], [k for k, _ in chunk]), worker, counter.snapshot()
            else:
                yield None, worker, counter.snapshot()  # final counts even when nothing is left
        except UserError as exc:
            yield _Failure(type(exc).__name__, str(exc)), worker, counter.snapshot()


# --- the loader the caller iterates ---------------------------------------------------------------


def _ignore_stop_signals(_worker_id: int) -> None:
    """Workers leave SIGTERM/SIGUSR1 to the training process: torchrun and SLURM signal the whole
    process group, and a worker killed by it would crash the step before the checkpoint is written.
    The training process ends its workers itself when it exits."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


_OPEN_LOADERS: weakref.WeakSet = weakref.WeakSet()  # this process's DataLoader iterators (their workers)
_EXIT_HANDLER: list = []  # [the registered handler] once a stream started workers


def _end_workers_at_exit() -> None:
    """Workers ignore SIGTERM (`_ignore_stop_signals`), so multiprocessing's exit-time terminate()
    cannot end them, and its join() waited forever when the interpreter exited with a stream still
    open (a script that stops iterating, a notebook, an error kept in a traceback). Registered after
    multiprocessing's and torch's exit handlers, this runs before them (atexit runs the last registered
    first): the DataLoader's own shutdown asks each worker to stop, and one that has not stopped in its
    wait is killed, after the shutdown took it off torch's watch for dying workers."""
    for workers in list(_OPEN_LOADERS):
        workers._shutdown_workers()
        for proc in workers._workers:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)


def _passthrough(item):
    """Items are already batches (built in the stream): hand them over untouched."""
    return item


@dataclass
class StreamLoader:
    """Iterable of batch dicts. Runs the stream in-process (num_workers=0) or in DataLoader workers,
    sums the workers' bad-data counters into `stats` and stops with TooMuchBadData above the rate."""

    dataset: IterableDataset
    num_workers: int = 0
    max_bad_fraction: float = 0.01
    seed: int = 0
    pin_memory: bool = False
    epoch_batches: int | None = None
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
        workers = iter(loader)
        if hasattr(workers, "_shutdown_workers") and hasattr(workers, "_workers"):  # torch's multi-process iterator
            if not _EXIT_HANDLER:
                _EXIT_HANDLER.append(atexit.register(_end_workers_at_exit))  # after multiprocessing.util's
            _OPEN_LOADERS.add(workers)
        return workers

    def __iter__(self) -> Iterator[dict]:
        per_worker: dict[int, tuple[int, int, str]] = {}
        self.stats = StreamStats()
        produced = 0
        for item, worker, counts in self._source():
            per_worker[worker] = counts
            self.stats = StreamStats(
                samples=sum(c[0] for c in per_worker.values()),
                bad=sum(c[1] for c in per_worker.values()),
                last_error=counts[2] or self.stats.last_error,
            )
            if isinstance(item, _Failure):
                raise item.exception()
            _check_rate(self.stats, self.max_bad_fraction)
            if item is None:
                continue
            yield item.batch() if isinstance(item, PixelParcel) else item
            produced += 1
            if self.epoch_batches is not None and produced >= self.epoch_batches:
                return


# --- checks before a stream starts -------------------------------------------------------------


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
    device: torch.device | str | None = None,
) -> StreamLoader:
    """Infinite, resampled batches for one rank (see the module docstring).

    Translation batches are decoded, untransformed uint8 pixels {"A", "B": N x H x W x 3, "draws",
    "jitter", "key"}: the step turns them into float tensors with
    `p2p_dist.data.device.prepare_batch(batch, device)`, which resizes, crops, flips and scales them on
    the training device. Where `device` (the training device; default: cuda where CUDA is available, else
    cpu) is the CPU, the pairs come resized to `data.load_size` already (the same pixels, and the
    decoded-image cache keeps them resized, p2p_dist/data/device.py). Colorization batches are
    jittered here (the Lab split needs the RGB crop): {"A", "B", "key"} float tensors, which
    `prepare_batch` only moves.

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
    jitter = Jitter.from_config(cfg)
    check_source(cfg.train, shards, cfg.task, jitter, what="data.task")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_device = cfg.task == "translation"
    spec = SampleSpec(
        task=cfg.task,
        direction=cfg.direction,
        jitter=jitter,
        on_device=on_device,
        host_resize=on_device and torch.device(device).type == "cpu",
    )
    dataset = TrainStream(
        shards,
        spec,
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
) -> StreamLoader:
    """Finite batches, no jitter: every sample exactly once across all ranks and workers.

    Images are resized to size x size (labels with nearest neighbours), or kept as stored when
    `size` is None. Batches: {"A", "B", "key"} plus "label" (LongTensor BxHxW, 255 = ignore) when
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
    jitter = Jitter(load_size=size, crop_size=None, flip=False)
    check_source(
        source, shards, task, jitter, with_labels=with_labels and task == "translation", mixed_ok=batch_size == 1
    )
    spec = SampleSpec(
        task=task,
        direction=direction,
        jitter=jitter,
        with_labels=with_labels and task == "translation",
        with_rgb=task == "colorization",
    )
    dataset = EvalStream(shards, spec, batch_size=batch_size, rank=rank, world_size=world_size, num_workers=num_workers)
    return StreamLoader(dataset, num_workers=num_workers, max_bad_fraction=max_bad_fraction, pin_memory=pin_memory)
