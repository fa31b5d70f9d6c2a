"""p2p_dist.data.loader / shards / index: sources, splitting over ranks and workers, exact resume,
bad data. Shards are real tar files of real PNGs written by the tests."""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from p2p_dist.config import DataConfig
from p2p_dist.data.errors import DataError, TooMuchBadData
from p2p_dist.data.index import read_index, sizes_summary, write_index
from p2p_dist.data.jitter import jitter_batch
from p2p_dist.data.loader import expand_shards, make_eval_loader, make_train_loader
from p2p_dist.data.order import worker_batches_before
from p2p_dist.data.tario import write_shard
from p2p_dist.data.transforms import denormalize
from p2p_dist.errors import UserError


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def pair_fields(i: int, size: int = 20) -> dict[str, bytes]:
    a = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {"a.png": png(a), "b.png": png(255 - a)}


def write_set(
    folder: Path,
    n_shards: int,
    per_shard: int,
    *,
    task: str = "translation",
    size: int = 20,
    fields=None,
    index: bool = True,
    name: str = "t",
) -> Path:
    """Shards t-000000.tar ... with keys s000, s001, ... and an index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    fields = fields or (lambda i: pair_fields(i, size))
    entries = []
    for s in range(n_shards):
        samples = [(f"s{i:03d}", fields(i)) for i in range(s * per_shard, (s + 1) * per_shard)]
        write_shard(folder / f"{name}-{s:06d}.tar", samples)
        entries.append({"name": f"{name}-{s:06d}.tar", "samples": per_shard})
    if index:
        write_index(
            folder,
            {
                "format": 1,
                "task": task,
                "dataset": "t",
                "source": "test",
                "split": "train",
                "shards": entries,
                "total": n_shards * per_shard,
                "has_labels": False,
                **sizes_summary([(size, size)] * n_shards * per_shard),
            },
        )
    return folder


def cfg_for(source, **kw) -> DataConfig:
    base = dict(train=str(source), load_size=24, crop_size=16, shuffle_buffer=5, num_workers=0, max_bad_fraction=0.2)
    base.update(kw)
    return DataConfig(**base)


def ready(batch) -> dict:
    """A batch as the training step sees it: jittered on the device (p2p_dist/data/jitter.py)."""
    return jitter_batch(batch, "cpu")


def take(loader, n: int) -> list[dict]:
    it = iter(loader)
    return [ready(next(it)) for _ in range(n)]


def same_batches(xs: list[dict], ys: list[dict]) -> bool:
    return len(xs) == len(ys) and all(
        x["key"] == y["key"] and torch.equal(x["A"], y["A"]) and torch.equal(x["B"], y["B"]) for x, y in zip(xs, ys)
    )


# --- sources and index --------------------------------------------------------------------------


def test_expand_shards_folder_glob_brace_and_joined(tmp_path):
    d = write_set(tmp_path / "d", 3, 2)
    e = write_set(tmp_path / "e", 2, 2, name="u")
    names = lambda urls: [Path(u).name for u in urls]  # noqa: E731
    assert names(expand_shards(str(d))) == ["t-000000.tar", "t-000001.tar", "t-000002.tar"]
    assert names(expand_shards(f"{d}/t-{{000001..000002}}.tar")) == ["t-000001.tar", "t-000002.tar"]
    assert names(expand_shards(f"{d}/*.tar::{e}")) == [
        "t-000000.tar",
        "t-000001.tar",
        "t-000002.tar",
        "u-000000.tar",
        "u-000001.tar",
    ]
    assert expand_shards("pipe:cat x-{0..2}.tar") == ["pipe:cat x-0.tar", "pipe:cat x-1.tar", "pipe:cat x-2.tar"]
    with pytest.raises(DataError, match="matches no files"):
        expand_shards(f"{d}/nothing-*.tar")
    with pytest.raises(DataError, match="2 of the 4 shards"):
        expand_shards(f"{d}/t-{{000001..000004}}.tar")
    with pytest.raises(DataError, match="holds no"):
        expand_shards(str(tmp_path / "d" / ".."))
    with pytest.raises(DataError, match="does not exist"):
        expand_shards(str(tmp_path / "missing.tar"))


def test_read_index_merges_and_counts_only_selected_shards(tmp_path):
    d = write_set(tmp_path / "d", 3, 4)
    e = write_set(tmp_path / "e", 1, 5, name="u")
    assert read_index(str(d))["total"] == 12
    assert read_index(f"{d}/t-00000{{0..1}}.tar")["total"] == 8
    merged = read_index(f"{d}::{e}")
    assert merged["total"] == 17 and len(merged["shards"]) == 4 and merged["task"] == "translation"
    bare = write_set(tmp_path / "bare", 1, 2, index=False)
    assert read_index(str(bare)) is None
    assert read_index(f"{d}::{bare}")["total"] is None  # partly indexed: no trustworthy total
    c = write_set(tmp_path / "c", 1, 2, task="colorization")
    with pytest.raises(DataError, match="mix tasks"):
        read_index(f"{d}::{c}")
    (tmp_path / "d" / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_index(str(d))


# --- splitting over ranks and workers ---------------------------------------------------------


@pytest.mark.parametrize("n_shards,per_shard", [(4, 5), (5, 3), (1, 9)])
def test_finite_read_covers_every_sample_once_over_2_ranks_x_2_workers(tmp_path, n_shards, per_shard):
    d = write_set(tmp_path / "d", n_shards, per_shard)
    keys = []
    for rank in range(2):
        loader = make_eval_loader(
            str(d),
            task="translation",
            direction="AtoB",
            size=None,
            batch_size=2,
            rank=rank,
            world_size=2,
            num_workers=2,
        )
        for batch in loader:
            assert batch["A"].shape[1:] == (3, 20, 20)
            keys += batch["key"]
    assert sorted(keys) == [f"s{i:03d}" for i in range(n_shards * per_shard)]


def test_eval_loader_resizes_and_keeps_order(tmp_path):
    d = write_set(tmp_path / "d", 2, 3)
    batches = list(make_eval_loader(str(d), task="translation", direction="BtoA", size=12, batch_size=4))
    assert [len(b["key"]) for b in batches] == [4, 2]
    assert batches[0]["key"] == ["s000", "s001", "s002", "s003"]
    assert batches[0]["A"].shape == (4, 3, 12, 12)


def test_resampled_stream_gives_every_rank_the_same_number_of_batches(tmp_path):
    d = write_set(tmp_path / "d", 3, 4)  # 3 shards over 2 ranks x 2 workers: uneven on purpose
    counts, seen = [], Counter()
    for rank in range(2):
        loader = make_train_loader(
            cfg_for(d), batch_size=3, seed=0, rank=rank, world_size=2, num_workers=2, epoch_batches=7
        )
        batches = [ready(b) for b in loader]
        counts.append(len(batches))
        assert len(loader) == 7
        for b in batches:
            assert b["A"].shape == (3, 3, 16, 16) and b["B"].shape == (3, 3, 16, 16)
            seen.update(b["key"])
    assert counts == [7, 7]
    assert len(seen) >= 10  # the ranks' streams draw from all over the set


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_start_batch_resumes_exactly(tmp_path, world_size, num_workers):
    d = write_set(tmp_path / "d", 4, 5)
    cfg = cfg_for(d)
    for rank in range(world_size):
        kw = dict(batch_size=2, seed=3, rank=rank, world_size=world_size, num_workers=num_workers)
        full = take(make_train_loader(cfg, **kw), 12)
        resumed = take(make_train_loader(cfg, start_batch=5, **kw), 7)
        assert same_batches(full[5:], resumed)
        # the stream keeps going past the shard set (resampled): more batches than samples
        assert sum(len(b["key"]) for b in full) > 20 // world_size


def test_streams_depend_on_seed_and_rank_only(tmp_path):
    d = write_set(tmp_path / "d", 4, 5)
    cfg = cfg_for(d)
    a = take(make_train_loader(cfg, batch_size=2, seed=1, rank=0, world_size=2), 6)
    b = take(make_train_loader(cfg, batch_size=2, seed=1, rank=0, world_size=2), 6)
    c = take(make_train_loader(cfg, batch_size=2, seed=2, rank=0, world_size=2), 6)
    r1 = take(make_train_loader(cfg, batch_size=2, seed=1, rank=1, world_size=2), 6)
    assert same_batches(a, b)
    assert not same_batches(a, c)
    assert not set(sum((x["key"] for x in a), [])) & set(sum((x["key"] for x in r1), []))  # disjoint shards


def test_train_loader_does_not_touch_the_global_torch_rng(tmp_path):
    d = write_set(tmp_path / "d", 2, 4)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    take(make_train_loader(cfg_for(d), batch_size=2, seed=0, rank=0, world_size=1, num_workers=2), 3)
    assert torch.equal(torch.rand(3), expected)


def test_pipe_urls_are_streamed(tmp_path):
    d = write_set(tmp_path / "d", 2, 3)
    source = f"pipe:cat {d}/t-{{000000..000001}}.tar"
    keys = [
        k
        for b in make_eval_loader(source, task="translation", direction="AtoB", size=None, batch_size=4)
        for k in b["key"]
    ]
    assert keys == [f"s{i:03d}" for i in range(6)]
    full = take(make_train_loader(cfg_for(source), batch_size=2, seed=0, rank=0, world_size=1), 5)
    resumed = take(make_train_loader(cfg_for(source), batch_size=2, seed=0, rank=0, world_size=1, start_batch=2), 3)
    assert same_batches(full[2:], resumed)


def test_colorization_batches(tmp_path):
    rgb = lambda i: {"img.png": png(np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8))}  # noqa: E731
    d = write_set(tmp_path / "c", 2, 3, task="colorization", fields=rgb)
    batch = take(make_train_loader(cfg_for(d, task="colorization"), batch_size=2, seed=0, rank=0, world_size=1), 1)[0]
    assert batch["A"].shape == (2, 1, 16, 16) and batch["B"].shape == (2, 2, 16, 16)
    ev = next(iter(make_eval_loader(str(d), task="colorization", direction="AtoB", size=None, batch_size=3)))
    assert ev["A"].shape == (3, 1, 20, 20) and ev["rgb"].shape == (3, 3, 20, 20)


# --- refusals ----------------------------------------------------------------------------------


def test_refuses_wrong_task_missing_shards_and_mixed_sizes(tmp_path):
    d = write_set(tmp_path / "d", 2, 2)
    kw = dict(batch_size=1, seed=0, rank=0, world_size=1)
    with pytest.raises(DataError, match="holds translation shards .* data.task is colorization"):
        make_train_loader(cfg_for(d, task="colorization"), **kw)
    bare = write_set(tmp_path / "bare", 1, 2, index=False)  # no index: the first sample tells
    with pytest.raises(DataError, match="holds translation samples"):
        make_train_loader(cfg_for(bare, task="colorization"), **kw)
    with pytest.raises(UserError, match="matches no files"):
        make_train_loader(cfg_for(f"{d}/x-*.tar"), **kw)
    with pytest.raises(DataError, match="rank 2 is outside"):
        make_train_loader(cfg_for(d), batch_size=1, seed=0, rank=2, world_size=2)

    mixed = tmp_path / "mixed"
    write_shard(mixed.mkdir() or mixed / "m-000000.tar", [("x", pair_fields(0, 20)), ("y", pair_fields(1, 24))])
    write_index(
        mixed,
        {
            "format": 1,
            "task": "translation",
            "shards": [{"name": "m-000000.tar", "samples": 2}],
            "total": 2,
            **sizes_summary([(20, 20), (24, 24)]),
        },
    )
    with pytest.raises(DataError, match="mixed sizes"):
        make_train_loader(cfg_for(mixed, resize=False, crop=False), **kw)
    with pytest.raises(DataError, match="below the crop size"):
        make_train_loader(cfg_for(mixed, resize=False, crop=True, crop_size=22), **kw)
    take(make_train_loader(cfg_for(mixed), **kw), 2)  # resizing on: fine
    with pytest.raises(DataError, match="mixed sizes"):
        make_eval_loader(str(mixed), task="translation", direction="AtoB", size=None, batch_size=2)
    native = list(make_eval_loader(str(mixed), task="translation", direction="AtoB", size=None, batch_size=1))
    assert [tuple(b["A"].shape[2:]) for b in native] == [(20, 20), (24, 24)]  # batch size 1: stored sizes
    (mixed / "index.json").unlink()  # without an index the batch itself tells
    with pytest.raises(DataError, match="mixed sizes in one batch"):
        list(make_eval_loader(str(mixed), task="translation", direction="AtoB", size=None, batch_size=2))


# --- bad data -----------------------------------------------------------------------------------


def corrupt_set(folder: Path) -> Path:
    """3 shards x 6 samples: s004 has a garbage image, s008 lacks b.png, shard 2 is truncated."""

    def fields(i):
        f = pair_fields(i)
        if i == 4:
            f["a.png"] = f["a.png"][:40]
        if i == 8:
            del f["b.png"]
        return f

    write_set(folder, 3, 6, fields=fields)
    last = folder / "t-000002.tar"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    return folder


def test_eval_skips_counts_and_logs_bad_samples(tmp_path, caplog):
    d = corrupt_set(tmp_path / "d")
    loader = make_eval_loader(
        str(d), task="translation", direction="AtoB", size=None, batch_size=4, max_bad_fraction=1.0
    )
    with caplog.at_level(logging.WARNING, logger="p2p_dist.data"):
        keys = [k for b in loader for k in b["key"]]
    assert "s004" not in keys and "s008" not in keys
    assert {f"s{i:03d}" for i in range(12)} - {"s004", "s008"} <= set(keys)
    assert len(keys) < 16  # the truncated shard lost its tail
    assert loader.stats.bad == 3 and loader.bad_samples == 3
    text = caplog.text
    assert "t-000000.tar" in text and "s004" in text and "cannot decode" in text
    assert "s008" in text and "missing member" in text
    assert "t-000002.tar" in text and "unreadable tar data" in text


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_survives_bad_samples_and_resumes_exactly(tmp_path, num_workers):
    d = corrupt_set(tmp_path / "d")
    cfg = cfg_for(d, max_bad_fraction=0.5)
    kw = dict(batch_size=3, seed=0, rank=0, world_size=1, num_workers=num_workers)
    loader = make_train_loader(cfg, **kw)
    full = take(loader, 14)
    assert all(len(b["key"]) == 3 for b in full)  # a bad sample is replaced, batches stay full
    assert loader.stats.bad > 0 and loader.stats.samples > 0
    assert not {"s004", "s008"} & set(k for b in full for k in b["key"])
    resumed = take(make_train_loader(cfg, start_batch=6, **kw), 8)
    assert same_batches(full[6:], resumed)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_too_much_bad_data_stops_with_one_line(tmp_path, num_workers):
    def fields(i):
        f = pair_fields(i)
        if i % 2:
            f["b.png"] = b"garbage"
        return f

    d = write_set(tmp_path / "d", 2, 40, fields=fields)
    loader = make_train_loader(
        cfg_for(d, max_bad_fraction=0.1), batch_size=4, seed=0, rank=0, world_size=1, num_workers=num_workers
    )
    with pytest.raises(TooMuchBadData) as err:
        take(loader, 100)
    message = str(err.value)
    assert "\n" not in message and "max_bad_fraction=0.1" in message and "cannot decode" in message
    assert isinstance(err.value, UserError)


def test_all_bad_shards_stop_instead_of_spinning(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "t-000000.tar").write_bytes(b"this is not a tar file at all" * 40)
    loader = make_train_loader(cfg_for(d, max_bad_fraction=1.0), batch_size=1, seed=0, rank=0, world_size=1)
    with pytest.raises(DataError, match="no readable samples"):
        take(loader, 1)


def test_worker_batches_before():
    # batch i comes from worker i % W: worker w has served ceil((k - w) / W) batches before batch k
    for W in (1, 2, 3):
        for k in range(10):
            for w in range(W):
                assert worker_batches_before(k, w, W) == sum(1 for i in range(k) if i % W == w)


def test_rewritten_shards_are_read_fresh_in_the_same_process(tmp_path):
    d = write_set(tmp_path / "d", 1, 3)
    first = list(make_eval_loader(str(d), task="translation", direction="AtoB", size=None, batch_size=3))[0]
    write_set(tmp_path / "d", 1, 3, fields=lambda i: pair_fields(i + 50))  # same names, new content
    second = list(make_eval_loader(str(d), task="translation", direction="AtoB", size=None, batch_size=3))[0]
    assert not torch.equal(first["A"], second["A"])
    assert np.array_equal(
        denormalize(second["A"][0]), np.random.default_rng(50).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    )


def test_pixel_batches_cross_a_worker_queue_as_one_tensor_and_equal_the_in_process_ones(tmp_path):
    # A worker's batch crosses its queue as one shared-memory tensor (A's images, then B's) and the
    # draws as an array; the loader yields the same `Pixels` batches as the in-process reader.
    src = write_set(tmp_path / "set", 2, 6)
    raw = {}
    for w in (0, 1):
        it = iter(make_train_loader(cfg_for(src, num_workers=w), batch_size=3, seed=1, rank=0, world_size=1))
        raw[w] = [next(it) for _ in range(4)]
    for x, y in zip(raw[0], raw[1]):
        assert x.key == y.key and np.array_equal(x.draws, y.draws) and x.jitter == y.jitter
        assert torch.equal(x.data, y.data) and x.fields == y.fields == ("A", "B")
        images = y.images()
        # decoded, untransformed: stored 20 px (load_size 24 is the jitter's job, on the device)
        assert y.data.dtype == torch.uint8 and y.data.ndim == 1 and images["A"].shape == (3, 20, 20, 3)
        assert images["A"].untyped_storage().data_ptr() == images["B"].untyped_storage().data_ptr()
        assert y.draws.dtype == np.int64 and y.draws.shape == (3, 3)
    assert same_batches([ready(b) for b in raw[0]], [ready(b) for b in raw[1]])
