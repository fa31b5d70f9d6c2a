"""p2p_dist.data.resident (data.placement=device): the set held on the device gives the stream's
batches bit for bit (keys, pixels, draws) for any rank, world size, worker count and resume point,
with bad samples replaced as the stream replaces them; a rank holds its own split; a set over the
budget is refused in one line (device) or streamed (auto); 16-bit and multichannel sets are held as the
stream carries them and give its batches too. Real shards on disk (test_data_stream's, the demo sets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_stream import cfg_for, corrupt_set, png, take, write_set

from p2p_dist.data import resident
from p2p_dist.data.demo import build_demo
from p2p_dist.data.errors import DataError
from p2p_dist.data.loader import make_train_loader
from p2p_dist.data.resident import make_resident_loader, rank_shards

CPU = torch.device("cpu")


def held(cfg, placement="device", **kw):
    loader, note = make_resident_loader(cfg, placement=placement, device=CPU, local_processes=1, **kw)
    return loader, note


def same(stream: list[dict], device_batches: list[dict]) -> None:
    assert len(stream) == len(device_batches)
    for x, y in zip(stream, device_batches):
        assert x["key"] == y["key"]
        for k in set(x) - {"key"}:
            assert x[k].shape == y[k].shape and x[k].stride() == y[k].stride() and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize(
    ("world_size", "rank", "num_workers", "start_batch"), [(1, 0, 0, 0), (1, 0, 2, 3), (2, 1, 1, 2), (3, 2, 2, 0)]
)
def test_device_placement_gives_the_streams_batches(tmp_path, world_size, rank, num_workers, start_batch):
    d = write_set(tmp_path / "d", 5, 6, size=30)
    cfg = cfg_for(d, num_workers=num_workers, load_size=34, crop_size=24)
    kw = dict(batch_size=3, seed=4, rank=rank, world_size=world_size, start_batch=start_batch)
    loader, note = held(cfg, **kw)
    assert note.startswith("data resident on cpu (data.placement=device): ") and "held" in note and "loaded in" in note
    it = iter(loader)
    same(take(make_train_loader(cfg, **kw), 7), [next(it) for _ in range(7)])  # more than one pass


def test_colorization_and_channels_last_match_the_stream(tmp_path):
    rgb = lambda i: {"img.png": png(np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8))}  # noqa: E731
    d = write_set(tmp_path / "c", 2, 4, task="colorization", fields=rgb)
    cfg = cfg_for(d, task="colorization")
    kw = dict(batch_size=2, seed=0, rank=0, world_size=1)
    from p2p_dist.data.jitter import jitter_batch

    stream = iter(make_train_loader(cfg, **kw))
    want = [jitter_batch(next(stream), "cpu", channels_last=True) for _ in range(5)]
    it = iter(held(cfg, channels_last=True, **kw)[0])
    got = [next(it) for _ in range(5)]
    same(want, got)
    assert got[0]["A"].is_contiguous(memory_format=torch.channels_last) and set(got[0]) == {"A", "B", "rgb", "key"}


def test_bad_samples_are_replaced_as_the_stream_replaces_them(tmp_path):
    d = corrupt_set(tmp_path / "d")
    cfg = cfg_for(d, max_bad_fraction=0.5, num_workers=2)
    kw = dict(batch_size=3, seed=0, rank=0, world_size=1, start_batch=1)
    loader, note = held(cfg, **kw)
    assert "2 unreadable" in note  # s004 and s008; the truncated shard's tail is not a sample
    it = iter(loader)
    same(take(make_train_loader(cfg, **kw), 10), [next(it) for _ in range(10)])
    assert loader.bad_samples > 0


def test_each_rank_holds_its_own_split_or_says_why_it_holds_all():
    shards = [f"s{i}" for i in range(8)]
    split = [rank_shards(shards, r, 2, 2) for r in (0, 1)]  # 4 streams: shard i to stream i % 4
    assert split == [(["s0", "s1", "s4", "s5"], ""), (["s2", "s3", "s6", "s7"], "")]
    mine, why = rank_shards(shards[:3], 1, 2, 2)
    assert (
        mine == shards[:3]
        and why == "every rank holds the whole set (3 shard(s) for 4 streams: every stream reads them all)"
    )


def test_a_set_over_the_budget_is_refused_in_one_line_or_streamed(tmp_path, monkeypatch):
    d = write_set(tmp_path / "d", 2, 5, size=30)
    cfg = cfg_for(d, load_size=100, crop_size=64)  # 10 pairs at 100x100: 600,000 bytes
    monkeypatch.setattr(resident, "host_available", lambda: 1_000_000)  # budget 500,000
    kw = dict(batch_size=2, seed=0, rank=0, world_size=1)
    with pytest.raises(DataError) as err:
        held(cfg, **kw)
    assert str(err.value) == (
        "data.placement=device: this rank's share of the set (10 samples at 100x100, 6 bytes a pixel) needs "
        "600.0 kB, over the budget of 500.0 kB (50% of 1.0 MB of available host memory)"
    )
    loader, note = held(cfg, placement="auto", **kw)
    assert loader is None and note.startswith("data streamed (data.placement=auto: this rank's share")
    assert held(cfg, placement="stream", **kw) == (None, "data streamed from the shards (data.placement=stream)")


@pytest.mark.parametrize(
    ("name", "normalize", "per_pixel"),
    [("scenes-depth", "percentile", 8), ("scenes-bands", "bitdepth", 28)],
    ids=["16-bit-1-channel", "4-band"],
)
def test_16_bit_and_multichannel_sets_give_the_streams_batches(tmp_path, name, normalize, per_pixel):
    """scenes-depth (16-bit grey -> 16-bit depth, 1 channel a side) and scenes-bands (4 16-bit bands,
    an 8-bit RGB label map): held as int32 like the stream's batches (4 bytes a channel of every side),
    the size estimated before loading is the size held, and the batches are the stream's bit for bit."""
    data = build_demo(name, tmp_path, train=6, val=0, size=32, shard_size=2)["train"].out
    cfg = cfg_for(data, num_workers=2, load_size=36, crop_size=24, direction="BtoA", normalize=normalize)
    kw = dict(batch_size=2, seed=3, rank=0, world_size=1, start_batch=1)
    loader, _ = held(cfg, **kw)
    images = loader.held.images
    assert {x.dtype for x in images.values()} == {torch.int32} and images["B"].max() > 255
    assert loader.held.nbytes == 6 * 36 * 36 * per_pixel
    it = iter(loader)
    want = take(make_train_loader(cfg, **kw), 4)
    same(want, [next(it) for _ in range(4)])
    assert want[0]["B"].shape[1] == images["B"].shape[-1]
    # an 8-bit side carried as int32 (scenes-bands' label map, BtoA: A) may overshoot 255 in the bicubic
    # resize; its [-1, 1] values are clipped as the 8-bit kernel clips
    assert all(float(b[k].min()) >= -1 and float(b[k].max()) <= 1 for b in want for k in ("A", "B"))
