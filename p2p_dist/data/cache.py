"""Decoded images kept in memory across passes over the shards (`data.cache_mb`).

The training stream reads its shards again and again (resampled: pix2pix's datasets are small and
trained for many epochs; facades: 400 pairs, 200 epochs). Decoding is most of the host's work per
sample (bench/README.md, "The data path"), and it gives the same pixels on every pass, so each stream
keeps the images it decoded, up to a byte budget, and later passes take them from memory. The cache
changes what a sample costs, never what it holds: the jitter draws still come from the stream's
position-seeded RNG (p2p_dist/data/order.py), so batches and exact resume are the same with or
without it (tests/unit/test_data_cache.py).

Policy: fill until the budget is reached, then keep what is there (no eviction). The stream visits its
shards in a fresh random order each cycle, so a least-recently-used cache smaller than the data would
miss as often and copy more; with a fixed set, a stream whose data is larger than its budget decodes
the rest every time and the hit rate is budget / data. A cached image is keyed by its shard, the shard
file's identity (device, inode, mtime: a rewritten shard misses), the sample's key, the image's name
and the decode mode. Images are kept as decoded (the jitter, resize included, runs later on the
training device, p2p_dist/data/jitter.py). Images that fail to decode are never cached, so they fail
the same way on every pass. Arrays are handed out as they are stored: the reader copies them into its
batch and never writes into them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MB = 1 << 20


class DecodedCache:
    """One stream's decoded images, up to `budget_bytes` (0: nothing is kept)."""

    def __init__(self, budget_bytes: int):
        self.budget = max(0, int(budget_bytes))
        self.used = 0
        self._items: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """The image under `key`, made by `decode()` (and kept, while the budget allows) on a miss."""
        image = self._items.get(key)
        if image is not None:
            return image
        image = decode()
        if self.budget and self.used + image.nbytes <= self.budget:
            self._items[key] = image
            self.used += image.nbytes
        return image


def stream_budget(cache_mb: int, num_workers: int) -> int:
    """Bytes for one stream: a training process's `data.cache_mb`, split evenly among its workers
    (each worker reads its own shards, so nothing is cached twice)."""
    return int(cache_mb) * MB // max(1, num_workers)
