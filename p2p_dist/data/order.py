"""Which raw sample comes at which position: the order of a stream as a pure function of position
(docs/architecture.md, "One sample", step 2).

Every (rank, worker) pair is one *stream* s = rank * W + role out of S = world_size * W
(W = max(1, num_workers)); rank and world_size are always passed in, never read from the
environment. Everything random is drawn from a generator seeded by (seed, tag, rank, world_size, W,
role, ...): the shard order (stream s reads shards[s::S], or all shards when there are fewer than S,
in a fresh permutation per cycle), the shuffle buffer over *raw* samples, and the jitter of the
sample at position `ordinal`. Global batch i belongs to stream role i % W; the DataLoader asks its
workers in turn starting with worker 0, so worker w plays role (w + start_batch) % W, and a resumed
stream skips its earlier batches without decoding them (`batches_before`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np

from p2p_dist.data.errors import DataError
from p2p_dist.data.shards import RawSample, iter_raw_samples

# tags that keep the different random streams apart
SHARDS, SHUFFLE, JITTER = 1, 2, 3


def rng(seed: int, tag: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), tag, *(int(i) for i in ids)])


def role_of(worker: int, start_batch: int, num_workers: int) -> int:
    """The stream role DataLoader worker `worker` plays when the loader starts at `start_batch`."""
    return (worker + start_batch) % max(1, num_workers)


def worker_batches_before(start_batch: int, worker: int, num_streams: int) -> int:
    """How many of worker `worker`'s batches come before global batch `start_batch` (batch i is
    served by worker i % num_streams)."""
    if start_batch <= worker:
        return 0
    return (start_batch - worker + num_streams - 1) // num_streams


def stream_shards(shards: list[str], stream: int, num_streams: int) -> list[str]:
    """Stream s's shards: every S-th one, or all of them when there are fewer than S."""
    return shards[stream::num_streams] if len(shards) >= num_streams else list(shards)


def resampled(
    shards: list[str], seed: int, ids: tuple[int, ...], on_error: Callable, what: str, read: Callable = iter_raw_samples
) -> Iterator:
    """The stream's shards forever, each cycle in a fresh seeded order (`what` names the stream).
    `read(shard, on_error)` gives a shard's samples (the resident set's plan reads slot numbers)."""
    for cycle in itertools.count():
        order = rng(seed, SHARDS, *ids, cycle).permutation(len(shards))
        produced = 0
        for i in order:
            for sample in read(shards[i], on_error):
                produced += 1
                yield sample
        if produced == 0:
            raise DataError(f"the shards of {what} hold no readable samples ({len(shards)} shards, first {shards[0]})")


def stream_from(
    shards: list[str],
    *,
    seed: int,
    rank: int,
    world_size: int,
    num_workers: int,
    role: int,
    batch_size: int,
    shuffle_buffer: int,
    start_batch: int,
    on_error: Callable,
    read: Callable = iter_raw_samples,
) -> tuple[tuple[int, ...], int, Iterator]:
    """Stream `role` of rank `rank` from global batch `start_batch`: (its ids, the seeds' key; the
    ordinal of its next sample; its samples from there, resampled and shuffled). A resumed stream
    skips its earlier samples raw, nothing decoded. The streamed reader and the resident set's plan
    both position themselves here."""
    W = max(1, num_workers)
    ids = (rank, world_size, W, role)
    mine = stream_shards(shards, rank * W + role, world_size * W)
    raw = resampled(mine, seed, ids, on_error, f"rank {rank} (stream {role})", read=read)
    samples = shuffled(raw, shuffle_buffer, seed, ids)
    skip = worker_batches_before(start_batch, role, W) * batch_size
    for _ in range(skip):
        next(samples)
    return ids, skip, samples


def shuffled(raw: Iterator, size: int, seed: int, ids: tuple[int, ...]) -> Iterator:
    """A seeded shuffle buffer of `size` raw samples (none when size <= 1)."""
    if size <= 1:
        yield from raw
        return
    draw = rng(seed, SHUFFLE, *ids)
    buf: list[RawSample] = []
    for sample in raw:
        if len(buf) < size:
            buf.append(sample)
            continue
        j = int(draw.integers(size))
        out, buf[j] = buf[j], sample
        yield out


def once_each(shards: list[str], stream: int, num_streams: int, on_error: Callable) -> Iterator[RawSample]:
    """Evaluation: stream s's share of the samples, every sample in exactly one stream. With fewer
    shards than streams every stream reads all shards and keeps every S-th sample; broken shards are
    then counted and logged by stream 0 only."""
    if len(shards) >= num_streams:  # split by shard
        for url in shards[stream::num_streams]:
            yield from iter_raw_samples(url, on_error)
        return
    report = on_error if stream == 0 else (lambda *_: None)
    ordinal = 0
    for url in shards:
        for sample in iter_raw_samples(url, report):
            if ordinal % num_streams == stream:
                yield sample
            ordinal += 1
