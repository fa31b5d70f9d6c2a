"""Issue 29 end to end, through the commands a user types: a 16-bit single-channel set (grey scene
-> depth, PNG-16) and a 4-band set (16-bit four-band TIFFs -> 8-bit RGB maps) each go
p2p-data pack -> p2p-train -> p2p-translate -> p2p-eval score (of the files, and of the checkpoint).
tests/system/test_train_pixels.py takes the same kinds of sets through pack -> train -> resume
(exact); to keep this test short it trains once, and the commands but p2p-train run in this
process, through their entry points."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.training import train
from p2p_dist import imageio
from p2p_dist.data.cli import main as p2p_data
from p2p_dist.inference.cli import translate_main as p2p_translate
from p2p_eval.cli import main as p2p_eval

pytestmark = pytest.mark.slow

SIZE = 128
SETTINGS = [
    "model.generator=unet_128",
    "data.load_size=128",
    "data.crop_size=128",
    "train.max_steps=1",
    "train.checkpoint_every=100",
    "data.num_workers=0",
    "data.direction=AtoB",
]


def _smooth(rng, channels: int, top: int) -> np.ndarray:
    """A smooth random field over the whole range of `top` (a few blobs), SIZE x SIZE x channels."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = np.zeros((SIZE, SIZE, channels))
    for c in range(channels):
        for _ in range(3):
            cy, cx, s = rng.random(3)
            out[:, :, c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 + 0.2 * s))
    out -= out.min(axis=(0, 1))
    return np.round(out / out.max(axis=(0, 1)) * top)


def _folders(root, kind: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        if kind == "depth":  # 16-bit grey scene -> 16-bit depth (the scene inverted, squared)
            a = _smooth(rng, 1, 65535).astype(np.uint16)
            b = np.round((65535 - a.astype(np.float64)) ** 2 / 65535).astype(np.uint16)
            imageio.write_image(root / "A" / f"{i:03d}.png", a)
            imageio.write_image(root / "B" / f"{i:03d}.png", b)
        else:  # 4 bands at 16 bits (TIFF) -> an 8-bit RGB map of which band is brightest
            a = _smooth(rng, 4, 65535).astype(np.uint16)
            colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], np.uint8)
            imageio.write_image(root / "A" / f"{i:03d}.tif", a)
            imageio.write_image(root / "B" / f"{i:03d}.png", colours[a.argmax(axis=2)])


def _run(command, *args) -> None:
    assert command([str(a) for a in args]) == 0


@pytest.mark.parametrize("kind", ["depth", "bands"])
def test_pack_train_translate_score(tmp_path, kind):
    data, src = tmp_path / "data", tmp_path / "src"
    for split, n, seed in (("train", 6, 0), ("val", 3, 1)):
        _folders(src / split, kind, n, seed)
        _run(p2p_data, "pack", "paired", src / split / "A", src / split / "B", data / split, "--split", split)
    index = json.loads((data / "train" / "index.json").read_text())
    assert index["pixels"]["a"]["bits"] == 16 and index["pixels"]["a"]["channels"] == (1 if kind == "depth" else 4)

    run = tmp_path / "run"
    train(data, run, *SETTINGS)
    spec = json.loads((run / "final" / "generator.json").read_text())
    out_bits, out_channels = (16, 1) if kind == "depth" else (8, 3)
    assert (spec["in_channels"], spec["out_channels"]) == ((1, 1) if kind == "depth" else (4, 3))
    assert spec["input_range"]["bits"] == 16 and spec["output_range"]["bits"] == out_bits

    # translate the val shards, and the same inputs as files: the same pixels (paper mode, seeded by
    # the key = the file stem), at the output's bit depth
    ckpt = run / "final"
    _run(p2p_translate, "--checkpoint", ckpt, "--shards", data / "val", "--output", tmp_path / "t")
    _run(p2p_translate, "--checkpoint", ckpt, "--input", src / "val" / "A", "--output", tmp_path / "f")
    for name in ("000.png", "001.png", "002.png"):
        pred = imageio.read_image(tmp_path / "t" / name, "stored")
        assert pred.dtype == np.dtype(f"uint{out_bits}") and pred.shape == (SIZE, SIZE, out_channels)
        np.testing.assert_array_equal(pred, imageio.read_image(tmp_path / "f" / name, "stored"))

    scores = tmp_path / "score"
    metrics = ["--metrics", "l1,psnr,ssim,color"]
    _run(p2p_eval, "score", "--pred", tmp_path / "t", "--shards", data / "val", *metrics, "--out", scores)
    results = json.loads((scores / "scores.json").read_text())["results"]
    assert {"l1", "psnr", "ssim"} <= set(results["metrics"])
    if kind == "depth":
        assert results["unavailable"]["color"].startswith("does not apply: it expects 8-bit RGB photos")
    else:
        assert "color_lab" in results["metrics"]
    # scoring the checkpoint itself translates the same way (paper mode, seeded by key)
    _run(p2p_eval, "score", "--checkpoint", ckpt, "--shards", data / "val", *metrics, "--out", tmp_path / "s2")
    direct = json.loads((tmp_path / "s2" / "scores.json").read_text())["results"]
    assert direct["metrics"] == results["metrics"]
