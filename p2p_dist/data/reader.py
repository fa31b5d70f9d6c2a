"""The readers: shards -> `Pixels` batches of decoded uint8 images and their draws, in-process or in a
DataLoader worker (docs/architecture.md, "One sample", steps 3-5).

`TrainReader` is infinite, resampled and exactly resumable (its order: p2p_dist/data/order.py). A
corrupt sample is replaced by the next good sample of the same stream with the bad sample's own
draw, so batch boundaries never move and resume stays exact even with bad data; it is still counted
and logged. `EvalReader` is finite: every sample once across all ranks and workers, no random part,
bad samples dropped. Each item a reader yields is (batch or failure or None, worker id, that
worker's counts): the loader sums the counts and raises a failure in the main process. With
`SampleSpec.ship_jpeg` (data.decode on the GPU) a batch whose JPEGs were left encoded is an
`Encoded` (p2p_dist/data/device_decode.py) instead of a `Pixels`.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from p2p_dist.data import order
from p2p_dist.data.cache import DecodedCache
from p2p_dist.data.decode import Jpeg, SampleSpec, load_sample
from p2p_dist.data.device_decode import Encoded
from p2p_dist.data.errors import DataError, TooMuchBadData
from p2p_dist.data.jitter import Pixels
from p2p_dist.data.shards import RawSample, SampleError
from p2p_dist.errors import UserError

log = logging.getLogger("p2p_dist.data")

MAX_LOOKAHEAD = 10_000  # raw samples searched for a replacement of a corrupt one


class Counter:
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
class Failure:
    """An error raised inside a worker, carried to the main process as data (one clean line)."""

    kind: str
    message: str

    def exception(self) -> Exception:
        cls = {"TooMuchBadData": TooMuchBadData, "DataError": DataError}.get(self.kind, UserError)
        return cls(self.message)


def _flat(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 arrays -> one flat uint8 tensor of their values, in order (int32 when some are 16-bit: torch's
    uint16 lacks the kernels the jitter needs). In a DataLoader worker it is written
    straight into shared memory, as torch's default_collate does: a tensor in ordinary memory is copied
    into a fresh shared segment when the worker's queue pickles it (1.6 ms per 786 kB here, against
    0.2 ms for allocating the segment up front; bench/README.md, "The data path")."""
    wide = any(a.dtype == np.uint16 for a in arrays)
    out = torch.empty(sum(a.size for a in arrays), dtype=torch.int32 if wide else torch.uint8)
    if get_worker_info() is not None:
        out.share_memory_()
    flat, at = out.numpy(), 0
    for a in arrays:
        flat[at : at + a.size] = a.reshape(-1)
        at += a.size
    return out


def collate(examples: list[tuple[list, object]], keys: list[str], spec: SampleSpec) -> Pixels | Encoded:
    """(images, draw) per sample -> a `Pixels` batch: field by field, sample by sample; an `Encoded`
    one when some images are JPEGs left encoded (`spec.ship_jpeg`)."""
    n = len(examples)
    arrays = [examples[i][0][f] for f in range(len(spec.fields)) for i in range(n)]
    draws = np.array([[d.top, d.left, int(d.flip)] for _, d in examples], dtype=np.int64).reshape(-1, 3)
    shapes = [tuple(a.shape) for a in arrays]
    if any(isinstance(a, Jpeg) for a in arrays):
        return Encoded(parts=arrays, fields=spec.fields, shapes=shapes, draws=draws, jitter=spec.jitter, key=list(keys))
    return Pixels(
        data=_flat(arrays), fields=spec.fields, shapes=shapes, draws=draws, jitter=spec.jitter, key=list(keys)
    )


@dataclass(eq=False)
class TrainReader(IterableDataset):
    """Infinite stream of `Pixels` batches for one rank; see the module docstring."""

    shards: list[str]
    spec: SampleSpec
    _: KW_ONLY
    batch_size: int
    seed: int
    rank: int
    world_size: int
    num_workers: int
    start_batch: int = 0
    shuffle_buffer: int = 0
    cache_bytes: int = 0  # per stream (p2p_dist/data/cache.py)
    _cache: DecodedCache | None = field(default=None, init=False, repr=False)

    def _examples(self, ids, counter: Counter, first_ordinal: int, samples: Iterator[RawSample]):
        """Decode position by position; a bad sample is replaced by the next good one."""
        ahead: deque[RawSample] = deque()

        def peek(i: int) -> RawSample:
            while len(ahead) <= i:
                ahead.append(next(samples))
            return ahead[i]

        for ordinal in itertools.count(first_ordinal):
            sample, seed = peek(0), (self.seed, order.JITTER, *ids, ordinal)
            try:
                example = load_sample(sample, self.spec, order.rng(*seed), self._cache)
                counter.good()
                key = sample.key
            except SampleError as exc:
                counter.error(sample.shard, sample.key, str(exc))
                key, example = self._replacement(peek, seed)
            ahead.popleft()
            yield key, example

    def _replacement(self, peek, seed) -> tuple[str, tuple]:
        for j in range(1, MAX_LOOKAHEAD + 1):
            candidate = peek(j)
            try:
                return candidate.key, load_sample(candidate, self.spec, order.rng(*seed), self._cache)
            except SampleError:
                continue
        raise TooMuchBadData(f"no decodable sample among {MAX_LOOKAHEAD} in a row (near {peek(0).shard})")

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        counter = Counter()
        self._cache = DecodedCache(self.cache_bytes) if self.cache_bytes else None  # this stream's own
        try:
            ids, skip, samples = order.stream_from(
                self.shards,
                seed=self.seed,
                rank=self.rank,
                world_size=self.world_size,
                num_workers=self.num_workers,
                role=order.role_of(worker, self.start_batch, self.num_workers),
                batch_size=self.batch_size,
                shuffle_buffer=self.shuffle_buffer,
                start_batch=self.start_batch,
                on_error=counter.error,
            )
            examples = self._examples(ids, counter, skip, samples)
            while True:
                chunk = [next(examples) for _ in range(self.batch_size)]
                yield collate([e for _, e in chunk], [k for k, _ in chunk], self.spec), worker, counter.snapshot()
        except UserError as exc:
            yield Failure(type(exc).__name__, str(exc)), worker, counter.snapshot()


@dataclass(eq=False)
class EvalReader(IterableDataset):
    """Finite stream: every sample once across all ranks and workers, no random part, bad ones dropped."""

    shards: list[str]
    spec: SampleSpec
    _: KW_ONLY
    batch_size: int
    rank: int
    world_size: int
    num_workers: int

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        W = max(1, self.num_workers)
        counter = Counter()
        rng = np.random.default_rng(0)  # the evaluation jitter has no random part (no crop, no flip)
        chunk: list[tuple[str, tuple]] = []
        try:
            for sample in order.once_each(self.shards, self.rank * W + worker, self.world_size * W, counter.error):
                try:
                    example = load_sample(sample, self.spec, rng)
                except SampleError as exc:
                    counter.error(sample.shard, sample.key, str(exc))
                    continue
                counter.good()
                chunk.append((sample.key, example))
                if len(chunk) == self.batch_size:
                    yield collate([e for _, e in chunk], [k for k, _ in chunk], self.spec), worker, counter.snapshot()
                    chunk = []
            if chunk:
                yield collate([e for _, e in chunk], [k for k, _ in chunk], self.spec), worker, counter.snapshot()
            else:
                yield None, worker, counter.snapshot()  # final counts even when nothing is left
        except UserError as exc:
            yield Failure(type(exc).__name__, str(exc)), worker, counter.snapshot()
