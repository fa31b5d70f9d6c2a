"""Beyond 8-bit RGB end to end on the data side: folders of 16-bit one-channel PNGs and of per-band
16-bit files are packed with `p2p-data pack`, trained with the default config (tiny networks), and a
run stopped and resumed ends with the same generator as one run straight through (that one streamed,
data.placement=stream; the resumed one with the set resident, the default's choice for so small a set);
the generator's channels and ranges follow the shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.training import assert_same_weights, final_weights, train
from p2p_dist.data import scenes
from p2p_dist.data.cli import main
from p2p_dist.imageio import write_image


def depth_folders(root: Path, n: int) -> list[str]:
    """A: the scene in 16-bit grey (PNG-16), B: its 16-bit depth map."""
    for i in range(n):
        photo, scene = scenes.make_scene_layout(0, i, 32)
        write_image(root / "grey" / f"{i:03d}.png", scenes.grey16(photo))
        write_image(root / "depth" / f"{i:03d}.png", scenes.depth_map(scene))
    return [str(root / "grey"), str(root / "depth")]


def band_folders(root: Path, n: int) -> list[str]:
    """A: one folder per tile with four single-band 16-bit TIFFs (red, green, blue, near-infrared: the
    way Landsat and Sentinel-2 ship), B: the tile's colour label map."""
    for i in range(n):
        photo, scene = scenes.make_scene_layout(0, i, 32)
        rgb = scenes.sixteen_bit(photo)
        bands = [rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2], scenes.near_infrared(scene, photo, np.random.default_rng(i))]
        for b, band in enumerate(bands, 1):
            write_image(root / "tiles" / f"t{i:03d}" / f"B{b}.tif", np.ascontiguousarray(band))
        write_image(root / "maps" / f"t{i:03d}.png", scenes.colourize(scene.label))
    return [str(root / "tiles"), str(root / "maps"), "--bands"]


@pytest.mark.parametrize(
    "make, channels",
    [(depth_folders, (1, 1)), (band_folders, (3, 4))],  # TINY trains BtoA: B -> A
    ids=["16-bit-1-channel", "4-band"],
)
def test_pack_train_resume_exactly(tmp_path, make, channels):
    src = make(tmp_path / "src", 6)
    data = tmp_path / "data"
    for split in ("train", "val"):  # the command's entry point, in this process
        assert main(["pack", "paired", *src[:2], str(data / split), "--split", split, *src[2:]]) == 0
    common = ["train.max_steps=2", "train.checkpoint_every=100", "data.num_workers=1"]
    train(data, tmp_path / "whole", *common, "data.placement=stream")
    first = train(data, tmp_path / "split", *common, "train.stop_after=1")
    assert "data resident on cpu (data.placement=auto)" in first.stderr
    assert "resumed from" in train(data, tmp_path / "split", *common).stderr
    assert_same_weights(final_weights(tmp_path / "whole"), final_weights(tmp_path / "split"))
    spec = json.loads((tmp_path / "split" / "final" / "generator.json").read_text())
    assert (spec["in_channels"], spec["out_channels"]) == channels
    assert spec["output_range"] == {"bits": 16, "lo": [0.0] * channels[1], "hi": [65535.0] * channels[1]}
