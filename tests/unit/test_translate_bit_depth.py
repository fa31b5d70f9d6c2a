"""p2p-translate with generators trained on 16-bit and multichannel data (issue 29): inputs read as
stored and mapped with the checkpoint's input range, outputs mapped back to its output range and
written at its bit depth (PNG up to 4 channels, TIFF beyond)."""

from __future__ import annotations

import numpy as np
import torch

from p2p_dist import imageio
from p2p_dist.data.transforms import PixelRange, denormalize, normalize
from p2p_dist.inference.cli import translate_main as main
from p2p_dist.models import GeneratorSpec, load_generator, save_generator


def _checkpoint(folder, in_range: PixelRange, out_range: PixelRange, gain: float = 1.0):
    """A unet_128 generator with the given ranges; `gain` scales its last layer so that its tanh
    saturates (outputs reaching -1 and 1)."""
    spec = GeneratorSpec(
        name="unet_128",
        ngf=8,
        in_channels=in_range.channels,
        out_channels=out_range.channels,
        input_range=in_range,
        output_range=out_range,
    )
    torch.manual_seed(0)
    G = spec.build()
    (last,) = [
        m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d) and m.out_channels == spec.out_channels
    ]
    with torch.no_grad():
        last.weight.mul_(gain)
    save_generator(G, spec, folder)
    return folder


def _noise(dtype, h, w, c, seed):
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, (h, w, c)).astype(dtype)


def _translate(*argv):
    return main([str(a) for a in argv])


def test_16_bit_output_uses_the_full_range(tmp_path):
    ckpt = _checkpoint(tmp_path / "g", PixelRange.full(16, 1), PixelRange.full(16, 1), gain=3000.0)
    src = tmp_path / "in"
    img = _noise(np.uint16, 128, 128, 1, 0)
    imageio.write_image(src / "depth.png", img)
    out = tmp_path / "out"
    assert _translate("--checkpoint", ckpt, "--input", src, "--output", out, "--mode", "eval") == 0
    pred = imageio.read_image(out / "depth.png", "stored")
    assert pred.dtype == np.uint16 and pred.shape == (128, 128, 1)
    assert pred.min() == 0 and pred.max() == 65535
    assert len(np.unique(pred)) > 1000  # not 256 levels stretched: 16-bit steps in between
    # exactly the generator's output mapped back: (y + 1) * 65535 / 2, rounded
    G, spec = load_generator(ckpt)
    x = normalize(torch.from_numpy(img.astype(np.int32).transpose(2, 0, 1)), spec.input_range, dim=-3)
    with torch.no_grad():
        expected = denormalize(G.eval()(x[None])[0], spec.output_range)
    np.testing.assert_array_equal(pred, expected)


def test_measured_ranges_map_back_per_channel_and_many_bands_write_tiff(tmp_path):
    in_range = PixelRange(16, (100.0, 0.0, 0.0, 5000.0), (60000.0, 65535.0, 30000.0, 40000.0))
    out_range = PixelRange(16, (1000.0,) * 3 + (0.0,) * 3, (50000.0,) * 3 + (65535.0,) * 3)
    ckpt = _checkpoint(tmp_path / "g", in_range, out_range, gain=3000.0)
    src = tmp_path / "in"
    imageio.write_image(src / "scene.png", _noise(np.uint16, 96, 80, 4, 1))  # resized for the net and back
    out = tmp_path / "out"
    assert _translate("--checkpoint", ckpt, "--input", src, "--output", out, "--mode", "eval") == 0
    assert [p.name for p in out.iterdir()] == ["scene.tif"]
    pred = imageio.read_image(out / "scene.tif", "stored")
    assert pred.dtype == np.uint16 and pred.shape == (96, 80, 6)
    assert pred[:, :, :3].min() >= 1000 and pred[:, :, :3].max() <= 50000
    assert pred[:, :, 3:].max() > 50000


def test_an_input_of_another_depth_or_channel_count_is_skipped_with_its_reason(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "g", PixelRange.full(16, 1), PixelRange.full(8, 3))
    src = tmp_path / "in"
    imageio.write_image(src / "good.png", _noise(np.uint16, 128, 128, 1, 2))
    imageio.write_image(src / "rgb.png", _noise(np.uint8, 128, 128, 3, 3))
    out = tmp_path / "out"
    assert _translate("--checkpoint", ckpt, "--input", src, "--output", out) == 65  # done, some skipped
    assert "rgb.png is 8-bit with 3 channel(s); the generator takes 16-bit images with 1" in capsys.readouterr().err
    written = imageio.read_image(out / "good.png", "stored")
    assert written.dtype == np.uint8 and written.shape == (128, 128, 3)


def test_export_metadata_records_the_pixel_ranges():
    """p2p-export's FILE.json says how a 16-bit multichannel generator's pixels map (the ONNX runtime
    reads the spec with its ranges back, tests/unit/test_inference_export.py runs the files)."""
    from p2p_dist.inference.export import value_ranges

    spec = GeneratorSpec(
        name="unet_128",
        in_channels=4,
        out_channels=6,
        input_range=PixelRange.full(16, 4),
        output_range=PixelRange(16, (100.0,) * 6, (60000.0,) * 6),
    )
    inp, out = value_ranges(spec)
    assert inp["encoding"] == "16-bit pixels, per channel (x - lo) / ((hi - lo) / 2) - 1" and inp["hi"] == [65535.0] * 4
    assert (out["bits"], out["lo"], out["hi"]) == (16, [100.0] * 6, [60000.0] * 6)
    assert GeneratorSpec.from_dict(spec.to_dict()) == spec
