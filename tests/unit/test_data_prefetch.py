"""data.decode and the prefetcher (p2p_dist/data/device_decode.py, prefetch.py) on the CPU: readers
that ship JPEG members encoded give, decoded by the CPU decoder in the training process, the same
pixels bit for bit as readers that decode them; the staging thread hands out the same batches in the
same order, reuses its buffers, resumes exactly, passes errors on and stops with its iterator. Shards
are real tar files of real JPEGs and PNGs written by the tests. What needs CUDA (nvJPEG, the copy
stream and its events) is the last test, skipped without CUDA."""

from __future__ import annotations

import dataclasses
import io
import threading

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image

from p2p_dist.config import ConfigError, DataConfig, load_config
from p2p_dist.data.decode import Jpeg
from p2p_dist.data.device_decode import Encoded
from p2p_dist.data.errors import DataError, TooMuchBadData
from p2p_dist.data.jitter import Pixels
from p2p_dist.data.loader import make_train_loader
from p2p_dist.data.prefetch import prefetch
from p2p_dist.data.tario import write_shard

KW = dict(seed=3, rank=0, world_size=1)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_jpeg_set(folder, task: str, *, truncated=(), shards: int = 2, per_shard: int = 6, sizes: int = 4):
    """Shards of photos as JPEG (translation: a.jpg + b.png; colorization: img.jpg), `sizes` heights
    from 20 px, one of them greyscale; the samples in `truncated` have their JPEG cut short."""
    folder.mkdir()
    for s in range(shards):
        samples = []
        for i in range(s * per_shard, (s + 1) * per_shard):
            h = 20 + i % sizes
            photo = np.random.default_rng(i).integers(0, 256, (h, h + 1, 3), dtype=np.uint8)
            grey = i == 3
            jpeg = simplejpeg.encode_jpeg(
                np.ascontiguousarray(photo[..., :1]) if grey else photo,
                quality=90,
                colorspace="GRAY" if grey else "RGB",
            )
            if i in truncated:
                jpeg = jpeg[: len(jpeg) // 2]
            name = "img.jpg" if task == "colorization" else "a.jpg"
            fields = {name: jpeg} if task == "colorization" else {name: jpeg, "b.png": png(255 - photo)}
            samples.append((f"s{i:03d}", fields))
        write_shard(folder / f"t-{s:06d}.tar", samples)
    return folder


def cfg_for(folder, task: str, **kw) -> DataConfig:
    base = dict(train=str(folder), task=task, load_size=24, crop_size=16, shuffle_buffer=4, num_workers=0, decode="cpu")
    return DataConfig(**{**base, "max_bad_fraction": 0.5, **kw})


def shipping(loader):
    """The loader with its readers shipping JPEG members encoded, as data.decode=gpu makes them."""
    spec = dataclasses.replace(loader.dataset.spec, ship_jpeg=True)
    loader.dataset = dataclasses.replace(loader.dataset, spec=spec)
    return loader


def same(x: Pixels, y: Pixels) -> bool:
    return (
        x.key == y.key
        and torch.equal(x.data, y.data)
        and [tuple(s) for s in x.shapes] == [tuple(s) for s in y.shapes]
        and np.array_equal(x.draws, y.draws)
        and x.fields == y.fields
    )


@pytest.mark.parametrize(("task", "num_workers"), [("translation", 2), ("colorization", 0)])
def test_shipped_jpegs_decoded_on_the_cpu_are_todays_pixels_bit_for_bit(tmp_path, task, num_workers):
    d = write_jpeg_set(tmp_path / "d", task, truncated={7})
    cfg = cfg_for(d, task, num_workers=num_workers)
    today = make_train_loader(cfg, batch_size=3, **KW)
    encoded = shipping(make_train_loader(cfg, batch_size=3, **KW))
    read = encoded.read(encoded=True)
    first = next(read)
    read.close()
    assert isinstance(first, Encoded)  # the readers shipped the JPEGs' bytes, the PNGs decoded
    assert any(isinstance(p, Jpeg) for p in first.parts)
    assert all(isinstance(p, Jpeg) != (f == "B") for p, f in zip(first.parts, np.repeat(first.fields, 3)))
    expected = [b for _, b in zip(range(10), today)]
    got = [b for _, b in zip(range(10), prefetch(encoded, "cpu"))]
    assert all(same(x, y) for x, y in zip(expected, got)) and len(got) == 10
    assert encoded.stats.bad == today.stats.bad >= 1  # the truncated JPEG: skipped and counted alike
    assert "s007" not in {k for b in got for k in b.key}


def test_staging_thread_gives_the_same_batches_in_order_reuses_its_buffers_and_resumes(tmp_path):
    d = write_jpeg_set(tmp_path / "d", "translation", sizes=1)
    cfg = cfg_for(d, "translation", load_size=None, crop_size=16, resize=False, num_workers=2)
    expected = [b for _, b in zip(range(12), make_train_loader(cfg, batch_size=2, **KW))]
    for start, ship in ((0, False), (5, True)):
        loader = make_train_loader(cfg, batch_size=2, start_batch=start, epoch_batches=12 - start, **KW)
        batches = prefetch(shipping(loader) if ship else loader, "cpu", threaded=True)
        buffers = set()
        for n, batch in enumerate(batches):  # each batch checked before the next is asked for
            assert same(batch, expected[start + n])
            buffers.add(batch.data.untyped_storage().data_ptr())
        assert n == 11 - start  # epoch_batches ends the stream, through the thread
        assert len(buffers) == 2  # two static slots, reused
    assert not [t for t in threading.enumerate() if t.name == "p2p-prefetch"]


def test_staging_thread_passes_errors_on_and_stops_with_its_iterator(tmp_path):
    d = write_jpeg_set(tmp_path / "d", "translation", truncated=set(range(12)))
    loader = shipping(make_train_loader(cfg_for(d, "translation", max_bad_fraction=0.1), batch_size=2, **KW))
    with pytest.raises(TooMuchBadData):
        next(prefetch(loader, "cpu", threaded=True))
    good = write_jpeg_set(tmp_path / "g", "translation")
    batches = prefetch(make_train_loader(cfg_for(good, "translation"), batch_size=2, **KW), "cpu", threaded=True)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name == "p2p-prefetch"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU machine's refusal")
def test_decode_gpu_without_cuda_is_refused_naming_the_key(tmp_path):
    d = write_jpeg_set(tmp_path / "d", "translation", shards=1, per_shard=2)
    with pytest.raises(
        DataError, match=r"^data\.decode=gpu needs a CUDA device .*data\.decode=auto or data\.decode=cpu$"
    ):
        make_train_loader(cfg_for(d, "translation", decode="gpu"), batch_size=1, **KW)
    auto = make_train_loader(cfg_for(d, "translation", decode="auto"), batch_size=1, **KW)
    assert isinstance(next(iter(auto)), Pixels)  # auto on a CPU machine: decoded by the readers, as always
    with pytest.raises(ConfigError, match="data.decode"):
        load_config(None, ["data.decode=nvjpeg"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_on_cuda_staged_batches_are_the_cpu_paths(tmp_path):
    """On a GPU: batches staged through the copy stream equal the CPU path's, PNGs bit for bit and
    nvJPEG's JPEGs within a few levels of libjpeg-turbo's; data.decode=auto picks the GPU when it can."""
    from p2p_dist.data.device_decode import decode_on_device, gpu_decode_unavailable

    d = write_jpeg_set(tmp_path / "d", "translation")
    cfg = cfg_for(d, "translation", num_workers=2)
    expected = [b for _, b in zip(range(8), make_train_loader(cfg, batch_size=3, **KW))]
    nvjpeg = gpu_decode_unavailable() is None
    assert decode_on_device("auto") == nvjpeg
    for ship in (False, True) if nvjpeg else (False,):
        loader = make_train_loader(cfg, batch_size=3, epoch_batches=8, **KW)
        for n, batch in enumerate(prefetch(shipping(loader) if ship else loader, "cuda")):
            want = expected[n]
            assert batch.data.is_cuda and batch.key == want.key and np.array_equal(batch.draws, want.draws)
            got = batch.images(batch.data.cpu())
            for name, images in want.images().items():
                for x, y in zip(images, got[name]):
                    if ship and name == "A":
                        assert (x.float() - y.float()).abs().mean() < 3
                    else:
                        assert torch.equal(x, y)
        assert n == 7
