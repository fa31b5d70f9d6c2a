"""Decoded images kept in memory across passes over the shards (`data.cache_mb`; docs/architecture.md,
"One sample", step 4): it changes what a sample costs, never what it holds (tests/unit/test_data_cache.py).

Policy: fill until the budget is reached, then keep what is there (no eviction): the stream visits
its shards in a fresh random order each cycle, so a least-recently-used cache smaller than the data
would miss as often and copy more; the hit rate is budget / data. A cached image is keyed by its
shard, the shard file's identity (device, inode, mtime: a rewritten shard misses), the sample's key,
the image's name and the decode mode. Images that fail to decode are never cached. Arrays are handed
out as they are stored: the reader copies them into its batch and never writes into them.
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
