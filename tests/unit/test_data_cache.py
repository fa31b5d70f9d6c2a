"""p2p_dist.data.cache and the shard scan cache of p2p_dist.data.shards: later passes over the shards
take decoded images (and member lists) from memory, and the batches stay the same bit for bit."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest
import torch

# tests/unit is on sys.path: pytest prepends the folder of a test file that is not in a package
from test_data_stream import cfg_for, pair_fields, same_batches, take, write_set

from p2p_dist.data import decode, shards
from p2p_dist.data.cache import MB, DecodedCache, stream_budget
from p2p_dist.data.loader import make_train_loader


def test_the_cache_fills_to_its_budget_then_keeps_what_it_has():
    cache = DecodedCache(budget_bytes=2 * 300)
    calls = []

    def image(v):
        def make():
            calls.append(v)
            return np.full(300, v, dtype=np.uint8)

        return make

    assert cache.get("x", image(1))[0] == 1 and cache.get("y", image(2))[0] == 2
    assert cache.get("z", image(3))[0] == 3 and len(cache) == 2  # over the budget: handed out, not kept
    assert cache.get("x", image(9))[0] == 1 and cache.get("z", image(4))[0] == 4
    assert calls == [1, 2, 3, 4]  # x came from the cache, z was decoded again
    assert len(cache) == 2 and cache.used == 600
    off = DecodedCache(0)
    off.get("x", image(5))
    off.get("x", image(6))
    assert len(off) == 0 and off.used == 0 and calls[-2:] == [5, 6]


def test_the_budget_is_split_among_a_processs_workers():
    assert stream_budget(2048, 0) == 2048 * MB
    assert stream_budget(2048, 4) == 512 * MB
    assert stream_budget(0, 2) == 0


@pytest.fixture
def counted_decodes(monkeypatch):
    calls = []
    real = decode.decode_image

    def counting(data, mode="RGB"):
        calls.append(mode)
        return real(data, mode)

    monkeypatch.setattr(decode, "decode_image", counting)
    return calls


def test_later_passes_decode_nothing_and_give_the_same_batches(tmp_path, counted_decodes):
    src = write_set(tmp_path / "d", 2, 4)  # 8 samples: batch 2 -> a pass every 4 batches
    plain = take(make_train_loader(cfg_for(src, cache_mb=0), batch_size=2, seed=3, rank=0, world_size=1), 12)
    assert len(counted_decodes) == 2 * 24  # A and B of every sample, every pass
    counted_decodes.clear()
    cached = take(make_train_loader(cfg_for(src), batch_size=2, seed=3, rank=0, world_size=1), 12)
    assert same_batches(plain, cached)
    seen = {k for b in cached for k in b["key"]}
    assert len(counted_decodes) == 2 * len(seen) and len(seen) >= 6  # once per image, on its first pass


def test_a_resumed_cached_stream_equals_the_uncached_one(tmp_path):
    src = write_set(tmp_path / "d", 2, 3)
    full = take(make_train_loader(cfg_for(src, cache_mb=0), batch_size=2, seed=1, rank=0, world_size=1), 9)
    resumed = take(make_train_loader(cfg_for(src), batch_size=2, seed=1, rank=0, world_size=1, start_batch=4), 5)
    assert same_batches(full[4:], resumed)


def test_a_rewritten_shard_is_read_and_decoded_again(tmp_path, counted_decodes):
    src = write_set(tmp_path / "d", 1, 4)
    shard = src / "t-000000.tar"
    loader = make_train_loader(cfg_for(src, shuffle_buffer=0), batch_size=4, seed=0, rank=0, world_size=1)
    it = iter(loader)
    first = next(it)
    assert len(counted_decodes) == 8
    # a new file under the same name (as a re-pack does: write to a temporary name, then rename)
    new = tmp_path / "new.tar"
    with tarfile.open(new, "w") as tf:
        for i in range(4):
            for ext, data in pair_fields(100 + i).items():
                info = tarfile.TarInfo(f"s{i:03d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    os.replace(new, shard)
    second = next(it)  # the next pass over the one shard
    assert len(counted_decodes) == 16
    assert second.key == first.key and not torch.equal(second.data, first.data)
    third = next(it)
    assert len(counted_decodes) == 16 and torch.equal(third.data, second.data)


def test_a_scanned_shard_is_not_scanned_again(tmp_path, monkeypatch):
    src = write_set(tmp_path / "d", 1, 3)
    path = str(src / "t-000000.tar")
    opened = []
    real = tarfile.open
    monkeypatch.setattr(shards.tarfile, "open", lambda *a, **k: opened.append(1) or real(*a, **k))
    monkeypatch.setattr(shards, "_SCANNED", shards._ScannedShards(max_members=10))
    keys = lambda: [s.key for s in shards.iter_raw_samples(path, lambda *a: None)]  # noqa: E731
    assert keys() == keys() == ["s000", "s001", "s002"]
    assert len(opened) == 1
    # rewritten in place (same inode, new mtime)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    assert keys() == ["s000", "s001", "s002"] and len(opened) == 2


def test_the_scan_cache_keeps_the_newest_lists_within_its_member_count(tmp_path):
    src = write_set(tmp_path / "d", 3, 2)  # 4 members (2 samples x a.png, b.png) per shard
    scanned = shards._ScannedShards(max_members=8)
    for name in ("t-000000.tar", "t-000001.tar", "t-000002.tar"):
        path = str(src / name)
        scanned.put((path, 0), list(shards._lazy_members(path)))
    assert [os.path.basename(k[0]) for k in scanned.lists] == ["t-000001.tar", "t-000002.tar"]
    assert scanned.members == 8


def test_a_pair_of_mismatched_sizes_fails_on_every_pass(tmp_path):
    def fields(i):
        if i != 2:
            return pair_fields(i)
        good = pair_fields(i)
        return {"a.png": good["a.png"], "b.png": pair_fields(i, size=22)["b.png"]}

    src = write_set(tmp_path / "d", 1, 4, fields=fields)
    loader = make_train_loader(
        cfg_for(src, shuffle_buffer=0, max_bad_fraction=0.5), batch_size=3, seed=0, rank=0, world_size=1
    )
    it = iter(loader)
    keys = [k for _ in range(4) for k in next(it).key]  # four passes of three good samples
    assert "s002" not in keys and len(keys) == 12
    # its images are cached one by one (each decodes), the pair is checked again on every pass
    assert len(loader.dataset._cache) == 8 and loader.bad_samples >= 3  # counted again on later passes
