"""Beyond 8-bit RGB on the data side: `p2p-data pack` keeps 8/16-bit pixels of 1-N channels exactly
(PNG-16, TIFF, TIFF page stacks, per-band files), index.json records them, `transforms.normalize`
maps them to [-1, 1] and back, and the loader hands them to the step at their range."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from p2p_dist.config import ConfigError, load_config
from p2p_dist.data.cli import main
from p2p_dist.data.demo import build_demo
from p2p_dist.data.errors import DataError
from p2p_dist.data.index import pixel_ranges, read_index, run_ranges
from p2p_dist.data.loader import make_eval_loader
from p2p_dist.data.shards import expand_shards, iter_raw_samples
from p2p_dist.data.transforms import RGB8, PixelRange, denormalize, normalize, to_tensor
from p2p_dist.imageio import decode_image, write_image


def unpack(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every image member of every sample, decoded as stored."""
    out = {}
    for url in expand_shards(str(folder)):
        for s in iter_raw_samples(url, lambda *a: pytest.fail(f"bad shard {a}")):
            out[s.key] = {k: decode_image(s.read(k), "stored") for k in s.fields}
    return out


def rand(seed: int, shape: tuple, bits: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**bits, shape, dtype=np.uint16 if bits == 16 else np.uint8)


def test_paired_pack_keeps_16_bit_and_many_channels_exactly_and_records_them(tmp_path):
    """A: 16-bit one-channel PNGs; B: 6-band 16-bit TIFFs (TIFF in the shard: PNG holds 4 channels)."""
    a = {f"s{i}": rand(i, (12, 10)) for i in range(3)}
    b = {f"s{i}": rand(10 + i, (12, 10, 6)) for i in range(3)}
    for k in a:
        write_image(tmp_path / "A" / f"{k}.png", a[k])
        write_image(tmp_path / "B" / f"{k}.tif", b[k])
    assert main(["pack", "paired", str(tmp_path / "A"), str(tmp_path / "B"), str(tmp_path / "out")]) == 0
    packed = unpack(tmp_path / "out")
    assert sorted(packed) == sorted(a)
    for k in a:
        assert sorted(packed[k]) == ["a.png", "b.tif"]
        assert packed[k]["a.png"].dtype == np.uint16 and np.array_equal(packed[k]["a.png"][:, :, 0], a[k])
        assert np.array_equal(packed[k]["b.tif"], b[k])
    pixels = json.loads((tmp_path / "out" / "index.json").read_text())["pixels"]
    every_b = np.stack(list(b.values())).reshape(-1, 6)
    assert (pixels["a"]["bits"], pixels["a"]["channels"], pixels["b"]["bits"], pixels["b"]["channels"]) == (
        16,
        1,
        16,
        6,
    )
    assert pixels["b"]["min"] == every_b.min(0).tolist() and pixels["b"]["max"] == every_b.max(0).tolist()
    for p in ("0.5", "2", "98", "99.5"):
        expected = np.percentile(every_b, float(p), axis=0, method="inverted_cdf").astype(int).tolist()
        assert pixels["b"]["percentiles"][p] == expected


def test_tiff_page_stacks_and_per_band_files_become_channels(tmp_path):
    """A multi-page TIFF (3 pages) is one 3-channel sample; with --bands a folder of per-band files
    (natural order: B2 before B10) is one sample, matched by the folder's name."""
    stack = rand(1, (3, 8, 8))  # pages
    (tmp_path / "A").mkdir()
    with tifffile.TiffWriter(tmp_path / "A" / "x.tif") as tif:
        for page in stack:
            tif.write(page, photometric="minisblack")
    target = rand(2, (8, 8, 3), bits=8)
    write_image(tmp_path / "B" / "x.png", target)
    assert main(["pack", "paired", str(tmp_path / "A"), str(tmp_path / "B"), str(tmp_path / "stack")]) == 0
    got = unpack(tmp_path / "stack")["x"]
    assert np.array_equal(got["a.png"], stack.transpose(1, 2, 0)) and np.array_equal(got["b.png"], target)

    bands = {name: rand(i, (8, 8)) for i, name in enumerate(["B10", "B2", "B1"])}
    for name, band in bands.items():
        write_image(tmp_path / "bands" / "tile_7" / f"{name}.tif", band)
    write_image(tmp_path / "maps" / "tile_7.png", target)
    args = ["pack", "paired", str(tmp_path / "bands"), str(tmp_path / "maps"), str(tmp_path / "out"), "--bands"]
    assert main(args) == 0
    got = unpack(tmp_path / "out")["tile_7"]
    assert np.array_equal(got["a.png"], np.stack([bands["B1"], bands["B2"], bands["B10"]], axis=2))


def test_auto_keeps_8_bit_images_rgb_and_a_side_keeps_one_format(tmp_path, capsys):
    """--pixels auto stores 8-bit greyscale as RGB (as every pack before 16-bit data); stored keeps its
    one channel; a side mixing 8 and 16-bit is refused with the sample named."""
    grey = rand(3, (8, 8), bits=8)
    write_image(tmp_path / "A" / "g.png", grey)
    write_image(tmp_path / "B" / "g.png", grey)
    main(["pack", "paired", str(tmp_path / "A"), str(tmp_path / "B"), str(tmp_path / "auto")])
    assert unpack(tmp_path / "auto")["g"]["a.png"].shape == (8, 8, 3)
    main(["pack", "paired", str(tmp_path / "A"), str(tmp_path / "B"), str(tmp_path / "kept"), "--pixels", "stored"])
    assert np.array_equal(unpack(tmp_path / "kept")["g"]["a.png"][:, :, 0], grey)
    write_image(tmp_path / "A" / "h.png", rand(4, (8, 8)))
    write_image(tmp_path / "B" / "h.png", grey)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(
            ["pack", "paired", str(tmp_path / "A"), str(tmp_path / "B"), str(tmp_path / "mixed"), "--pixels", "stored"]
        )
    assert exit_.value.code == 2 and "sample h has 16-bit 1-channel pixels on side a" in capsys.readouterr().err


def test_normalize_maps_ranges_to_unit_and_back_exactly():
    x8 = torch.randint(0, 256, (5, 6, 3), dtype=torch.uint8)
    assert torch.equal(normalize(x8), x8.float() / 127.5 - 1)  # 8-bit RGB: as before
    assert np.array_equal(denormalize(to_tensor(x8.numpy())), x8.numpy())
    sixteen = PixelRange.full(16, 2)
    x16 = torch.from_numpy(rand(5, (7, 9, 2)).astype(np.int32))
    y = normalize(x16.permute(2, 0, 1), sixteen, dim=-3)
    assert y.min() >= -1 and y.max() <= 1
    back = denormalize(y, sixteen)
    assert back.dtype == np.uint16 and np.array_equal(back, x16.numpy())
    measured = PixelRange(16, (1000.0, 0.0), (3000.0, 500.0))  # percentiles: beyond them clipped
    y = normalize(torch.tensor([[[0, 0], [2000, 250], [9000, 500]]]), measured)
    assert y.tolist() == [[[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]]
    assert denormalize(y.permute(2, 0, 1), measured)[0].tolist() == [[1000, 0], [2000, 250], [3000, 500]]


def test_demo_sets_train_at_their_range(tmp_path):
    """scenes-depth and scenes-bands: the index's formats, the run's channels (Config), and the
    eval loader's [-1, 1] tensors equal to normalize() of the stored pixels."""
    build_demo("scenes-depth", tmp_path / "depth", train=2, val=0, size=32)
    build_demo("scenes-bands", tmp_path / "bands", train=2, val=0, size=32)
    cfg = load_config(None, [f"data.train={tmp_path / 'bands' / 'train'}", "data.direction=BtoA"])
    assert (cfg.in_channels, cfg.out_channels, cfg.d_in_channels) == (3, 4, 7)
    ranges = cfg.pixel_ranges
    assert ranges == (RGB8, PixelRange.full(16, 4))
    loader = make_eval_loader(
        str(tmp_path / "bands" / "train"), task="translation", direction="BtoA", size=None, batch_size=2, scale=ranges
    )
    batch = next(iter(loader))
    stored = unpack(tmp_path / "bands" / "train")
    a = torch.from_numpy(np.stack([stored[k]["a.png"] for k in batch["key"]]).astype(np.int32))
    assert torch.equal(batch["B"], normalize(a.permute(0, 3, 1, 2), ranges[1], dim=-3))
    assert batch["A"].shape == (2, 3, 32, 32)
    index = json.loads((tmp_path / "depth" / "train" / "index.json").read_text())
    assert [(s["bits"], s["channels"]) for s in index["pixels"].values()] == [(16, 1), (16, 1)]
    lo, hi = run_ranges(index, "AtoB", "percentile", 0)
    assert lo.lo == (float(index["pixels"]["a"]["min"][0]),) and hi.hi == (float(index["pixels"]["b"]["max"][0]),)


def test_percentile_needs_recorded_statistics():
    with pytest.raises(DataError, match="needs the measured percentiles"):
        pixel_ranges(None, "percentile")
    assert pixel_ranges(None) == {"a": RGB8, "b": RGB8}
    with pytest.raises(ConfigError, match="data.percentile"):
        load_config(None, ["data.percentile=3"])


def test_shards_of_several_packs_must_share_a_pixel_format(tmp_path):
    """An older 8-bit RGB pack (no "pixels" in its index) reads with a new one; not with 16-bit data."""
    for name in ("scenes", "scenes-depth"):
        build_demo(name, tmp_path / name, train=1, val=0, size=32)
    old = tmp_path / "scenes" / "train" / "index.json"
    index = json.loads(old.read_text())
    del index["pixels"]
    old.write_text(json.dumps(index))
    new = build_demo("scenes", tmp_path / "new", train=1, val=0, size=32)["train"].out
    assert read_index(f"{old.parent}::{new}")["pixels"] is None
    with pytest.raises(DataError, match="mix pixel formats"):
        read_index(f"{old.parent}::{tmp_path / 'scenes-depth' / 'train'}")


def test_aligned_16_bit_pairs_keep_both_halves_and_resize_at_16_bits(tmp_path):
    pair = rand(6, (8, 16, 3))
    write_image(tmp_path / "src" / "p.png", pair)
    assert main(["pack", "aligned", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    got = unpack(tmp_path / "out")["p"]
    assert np.array_equal(got["a.png"], pair[:, :8]) and np.array_equal(got["b.png"], pair[:, 8:])
    assert main(["pack", "aligned", str(tmp_path / "src"), str(tmp_path / "small"), "--resize", "4"]) == 0
    small = unpack(tmp_path / "small")["p"]["a.png"]
    assert small.dtype == np.uint16 and small.shape == (4, 4, 3) and small.max() > 255


@pytest.mark.parametrize("name", ["scenes-depth", "scenes-bands"])
def test_new_demo_sets_are_deterministic_whatever_the_workers(tmp_path, name):
    one = build_demo(name, tmp_path / "one", train=3, val=0, size=32, shard_size=2)["train"].out
    two = build_demo(name, tmp_path / "two", train=3, val=0, size=32, shard_size=2, workers=2)["train"].out
    for shard in sorted(p.name for p in one.glob("*.tar")):
        assert (one / shard).read_bytes() == (two / shard).read_bytes()
    assert (one / "index.json").read_text() == (two / "index.json").read_text()


def test_depth_grows_towards_the_horizon_and_the_sky_is_far():
    from p2p_dist.data import scenes

    _, scene = scenes.make_scene_layout(0, 1, 64)
    depth = scenes.depth_map(scene)
    road = scene.label == scenes.ROAD
    rows = [y for y in range(64) if road[y].any()]
    nearest, farthest = depth[rows[-1]][road[rows[-1]]].max(), depth[rows[0]][road[rows[0]]].min()
    assert nearest < farthest
    assert (depth[scene.label == scenes.SKY] == 65535).all()


def test_staged_16_bit_batches_keep_their_values(tmp_path):
    """The prefetcher's static buffers take the 16-bit batches' int32 values, not bytes."""
    from p2p_dist.config import DataConfig
    from p2p_dist.data.loader import make_train_loader
    from p2p_dist.data.prefetch import prefetch

    build_demo("scenes-depth", tmp_path / "d", train=4, val=0, size=32)
    cfg = DataConfig(train=str(tmp_path / "d" / "train"), load_size=32, crop_size=16, num_workers=0)
    kw = dict(batch_size=2, seed=0, rank=0, world_size=1, epoch_batches=3)
    expected = [b.data.clone() for b in make_train_loader(cfg, **kw)]
    staged = [b.data.clone() for b in prefetch(make_train_loader(cfg, **kw), "cpu", threaded=True)]
    assert expected[0].dtype == torch.int32 and expected[0].max() > 255
    assert all(torch.equal(a, b) for a, b in zip(expected, staged, strict=True))
