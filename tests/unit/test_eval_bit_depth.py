"""`p2p-eval score` on 16-bit and multichannel image files (issue 29): L1, PSNR and SSIM on every
channel at the bit depth's range, the RGB metrics on named bands or saying that they do not apply."""

import json

import numpy as np
import pytest

from p2p_dist import imageio
from p2p_eval.cli import main

KEYS = ("a", "b", "c")


def _pairs(tmp_path, name, dtype, channels, seed=0, noise=None):
    """KEY.png/.tif targets and predictions (target + noise, clipped) in NAME/target and NAME/pred."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    for key in KEYS:
        target = rng.integers(0, top + 1, (24, 20, channels)).astype(dtype)
        delta = noise(rng, target.shape) if noise else rng.integers(-top // 20, top // 20, target.shape)
        pred = np.clip(target.astype(np.int64) + delta, 0, top).astype(dtype)
        suffix = imageio.image_suffix(channels)
        imageio.write_image(tmp_path / name / "target" / f"{key}{suffix}", target)
        imageio.write_image(tmp_path / name / "pred" / f"{key}{suffix}", pred)
    return tmp_path / name


def _refused(capsys, folder, *extra) -> str:
    with pytest.raises(SystemExit) as exc:
        _score(folder, *extra)
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    return line


def _score(folder, *extra, metrics="l1,psnr,ssim,color"):
    out = folder / "score"
    args = ["score", "--pred", str(folder / "pred"), "--target", str(folder / "target"), "--out", str(out)]
    assert main([*args, "--metrics", metrics, *extra]) == 0
    return json.loads((out / "scores.json").read_text())


def test_16_bit_single_channel_scores_at_the_bit_depth(tmp_path):
    folder = _pairs(tmp_path, "depth", np.uint16, 1)
    scores = _score(folder)
    results = scores["results"]
    # by hand: L1 on [0, 1] by 65535, PSNR with peak 65535, averaged over the images
    l1, psnr = [], []
    for key in KEYS:
        t = imageio.read_image(folder / "target" / f"{key}.png", "stored").astype(np.float64)
        p = imageio.read_image(folder / "pred" / f"{key}.png", "stored").astype(np.float64)
        l1.append(np.abs(p - t).mean() / 65535)
        psnr.append(10 * np.log10(65535.0**2 / ((p - t) ** 2).mean()))
    assert results["metrics"]["l1"] == pytest.approx(np.mean(l1), rel=1e-9)
    assert results["metrics"]["psnr"] == pytest.approx(np.mean(psnr), rel=1e-6)
    assert 0 < results["metrics"]["ssim"] < 1
    assert results["unavailable"]["color"] == (
        "does not apply: it expects 8-bit RGB photos, these images are 16-bit, 1 channel "
        "(name three bands with --rgb-bands, e.g. --rgb-bands 3,2,1)"
    )
    grid = imageio.read_image(folder / "score" / scores["grid"][0]["pred"], "stored")
    assert grid.dtype == np.uint8 and grid.shape == (24, 20, 1)  # a grey picture for the report
    # the same pixels at 8 bits scaled to 16 (x * 257 is x / 255 on [0, 1] exactly) score the same
    eight = _pairs(tmp_path, "eight", np.uint8, 1, seed=1)
    for side in ("pred", "target"):
        for key in KEYS:
            px = imageio.read_image(eight / side / f"{key}.png", "stored")
            imageio.write_image(tmp_path / "wide" / side / f"{key}.png", px.astype(np.uint16) * 257)
    low, wide = _score(eight)["results"]["metrics"], _score(tmp_path / "wide")["results"]["metrics"]
    for name in ("l1", "psnr", "ssim"):
        assert wide[name] == pytest.approx(low[name], rel=1e-6)


def test_four_bands_score_every_channel_and_rgb_metrics_use_named_bands(tmp_path, capsys):
    only_band_4 = (
        lambda rng, shape: np.concatenate(  # noqa: E731
            [np.zeros((*shape[:2], 3), np.int64), np.full((*shape[:2], 1), 1000)], axis=2
        )
    )
    folder = _pairs(tmp_path, "bands", np.uint16, 4, noise=only_band_4)
    plain = _score(folder)["results"]
    assert plain["metrics"]["l1"] > 0 and plain["metrics"]["ssim"] < 1
    assert "16-bit, 4 channels" in plain["unavailable"]["color"]
    named = _score(folder, "--rgb-bands", "3,2,1")["results"]
    assert "color" not in named["unavailable"]
    assert named["metrics"]["color_lab"] == pytest.approx(1.0)  # bands 1-3 agree exactly
    assert named["metrics"]["l1"] == plain["metrics"]["l1"]
    assert _refused(capsys, folder, "--rgb-bands", "5,2,1") == "error: --rgb-bands 5,2,1: the images have 4 channel(s)"


def test_eight_bit_four_bands_and_seven_band_tiffs(tmp_path):
    four = _score(_pairs(tmp_path, "four", np.uint8, 4))["results"]
    assert "8-bit, 4 channels" in four["unavailable"]["color"] and four["metrics"]["psnr"] > 20
    seven = _score(_pairs(tmp_path, "seven", np.uint16, 7), "--rgb-bands", "4,3,2")["results"]
    assert {"l1", "psnr", "ssim", "color_lab"} <= set(seven["metrics"])


def test_mismatched_depth_or_channels_are_refused_in_one_line(tmp_path, capsys):
    folder = _pairs(tmp_path, "mixed", np.uint16, 1)
    imageio.write_image(folder / "pred" / "a.png", np.zeros((24, 20, 1), np.uint8))
    assert (
        _refused(capsys, folder)
        == "error: 1 bit depth or channel mismatch(es): a (8-bit, 1 channel vs 16-bit, 1 channel)"
    )


def test_eight_bit_grey_rgb_and_rgba_files_still_compare_as_rgb(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (24, 20, 3)).astype(np.uint8)
    imageio.write_image(tmp_path / "t" / "target" / "a.png", rgb)
    rgba = np.concatenate([rgb, np.full((24, 20, 1), 255, np.uint8)], axis=2)
    imageio.write_image(tmp_path / "t" / "pred" / "a.png", rgba)  # matplotlib saves RGBA
    results = _score(tmp_path / "t")["results"]
    assert results["metrics"]["l1"] == 0 and results["metrics"]["color_lab"] == pytest.approx(1.0)
