"""Tiling, reflect padding and --resize pad: any image size through p2p-translate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.generators import write_small_checkpoint
from p2p_dist.data.transforms import denormalize, to_tensor
from p2p_dist.inference import translate_batch
from p2p_dist.inference.cli import translate_main
from p2p_dist.inference.tiling import axis_tiles, reflect_indices, reflect_pad, translate_tiled, window_1d
from p2p_dist.models import GeneratorSpec, load_generator, save_generator


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _noise(h, w, seed, c=3):
    shape = (h, w, c) if c > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _translate(checkpoint, src, out, *extra):
    assert translate_main([str(a) for a in ("--checkpoint", checkpoint, "--input", src, "--output", out, *extra)]) == 0


# --- the pieces ---------------------------------------------------------------------------------------------
def test_reflect_indices_mirror_without_repeating_the_edge_and_cover_any_length():
    assert reflect_indices(4, 2, 3).tolist() == [2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert reflect_indices(2, 3, 3).tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert reflect_indices(1, 2, 2).tolist() == [0] * 5
    x = torch.arange(12.0).reshape(1, 3, 4)
    expected = torch.nn.functional.pad(x[None], (3, 3, 2, 2), mode="reflect")[0]
    torch.testing.assert_close(reflect_pad(x, 2, 2, 3, 3), expected)


def test_windows_of_neighbouring_tiles_add_up_to_one():
    tile, ov = 128, 32
    w = window_1d(tile, ov)
    assert float(w.min()) > 0 and float(w.max()) == 1.0
    padded, starts = axis_tiles(tile * 3, tile, ov)
    total = torch.zeros(padded)
    for start in starts:
        total[start : start + tile] += w
    torch.testing.assert_close(total[ov : padded - ov], torch.ones(padded - 2 * ov))


@pytest.mark.parametrize("n", [1, 5, 128, 129, 700, 1000])
def test_tiles_cover_every_axis_length(n):
    padded, starts = axis_tiles(n, 128, 32)
    assert padded >= n and starts[0] == 0 and starts[-1] + 128 == padded
    assert all(b - a == 96 for a, b in zip(starts, starts[1:]))


def test_one_tile_covering_the_image_is_the_whole_image_output(checkpoint):
    G, _ = load_generator(checkpoint)
    x = to_tensor(_noise(128, 128, 1))
    run = lambda xb, keys: translate_batch(G, xb, mode="eval", keys=keys)  # noqa: E731
    whole = run(x[None], ["k"])[0]
    torch.testing.assert_close(translate_tiled(run, x, "k", tile=128, overlap=32, batch_size=4), whole)


# --- seams on a real photo --------------------------------------------------------------------------------
def _step_profile_ratio(y: torch.Tensor) -> tuple[float, float]:
    """max / median of the mean absolute step between neighbouring columns (rows), averaged along the
    other axis: a seam is a column (row) standing out."""
    y = y.double()
    col = (y[:, :, 1:] - y[:, :, :-1]).abs().mean(dim=(0, 1))
    row = (y[:, 1:, :] - y[:, :-1, :]).abs().mean(dim=(0, 2))
    return float(col.max() / col.median()), float(row.max() / row.median())


@pytest.fixture(scope="module")
def photo_and_generator():
    """scikit-image's immunohistochemistry micrograph at 1000x700 and a small ResNet generator
    trained for 80 steps to reproduce it: a trained network has the border effects that show as
    seams when tiles are cut without overlap (a random one barely has them), and unlike a barely
    trained U-Net its whole-image output has no column or row standing out of its own."""
    import skimage.data

    # the input as it always was (Pillow's bicubic): the 80 trained steps, and with them the seam
    # figures below, move with a mean change of 0.007 levels in the photo (the package's resize)
    photo = np.asarray(Image.fromarray(skimage.data.immunohistochemistry()).resize((1000, 700), Image.BICUBIC))
    x = to_tensor(photo)
    torch.manual_seed(0)
    G = GeneratorSpec(name="resnet_9blocks", ngf=8, dropout=False).build()
    opt = torch.optim.Adam(G.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        tops = torch.randint(0, 700 - 128, (4,), generator=g).tolist()
        lefts = torch.randint(0, 1000 - 128, (4,), generator=g).tolist()
        xb = torch.stack([x[:, t : t + 128, left : left + 128] for t, left in zip(tops, lefts)])
        loss = (G(xb) - xb).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x, G


def test_photo_has_no_seam_with_overlap_and_shows_them_without(photo_and_generator):
    x, G = photo_and_generator
    assert max(_step_profile_ratio(x)) < 2  # the photo itself has no column or row standing out
    run = lambda xb, keys: translate_batch(G, xb, mode="eval", keys=keys)  # noqa: E731
    cut = translate_tiled(run, x, "photo", tile=128, overlap=0, batch_size=8)
    blended = translate_tiled(run, x, "photo", tile=128, overlap=32, batch_size=8)
    assert cut.shape == blended.shape == (3, 700, 1000)
    assert min(_step_profile_ratio(cut)) >= 2, _step_profile_ratio(cut)
    assert max(_step_profile_ratio(blended)) < 2, _step_profile_ratio(blended)


# --- the command --------------------------------------------------------------------------------------------
def test_tiled_translation_keeps_every_size(tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    sizes = {"one": (1, 1), "small": (50, 30), "wide": (130, 300), "tall": (260, 129)}
    for name, (h, w) in sizes.items():
        Image.fromarray(_noise(h, w, h + w)).save(src / f"{name}.png")
    Image.fromarray(_noise(90, 70, 9, c=1)).save(src / "grey.png")  # greyscale file, RGB generator
    Image.fromarray((np.random.default_rng(3).integers(0, 65536, (70, 90))).astype(np.uint16)).save(src / "deep.png")
    for mode in ("eval", "paper"):
        out = tmp_path / mode
        _translate(checkpoint, src, out, "--tile", "auto", "--overlap", "32", "--mode", mode, "--batch-size", "3")
        for name, (h, w) in sizes.items():
            assert _read(out / f"{name}.png").shape == (h, w, 3)
        assert _read(out / "grey.png").shape == (90, 70, 3)
        assert _read(out / "deep.png").shape == (70, 90, 3)


def test_paper_mode_tiles_do_not_depend_on_batch_size(tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_noise(200, 300, 4)).save(src / "x.png")
    _translate(checkpoint, src, tmp_path / "b1", "--tile", "128", "--batch-size", "1")
    _translate(checkpoint, src, tmp_path / "b4", "--tile", "128", "--batch-size", "4")
    _translate(checkpoint, src, tmp_path / "s1", "--tile", "128", "--seed", "1")
    np.testing.assert_array_equal(_read(tmp_path / "b1" / "x.png"), _read(tmp_path / "b4" / "x.png"))
    assert not np.array_equal(_read(tmp_path / "b1" / "x.png"), _read(tmp_path / "s1" / "x.png"))


def test_resize_pad_crops_back_and_equals_whole_on_fitting_sizes(tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    fit = _noise(128, 256, 5)
    Image.fromarray(fit).save(src / "fit.png")
    Image.fromarray(_noise(100, 70, 6)).save(src / "odd.png")
    _translate(checkpoint, src, tmp_path / "pad", "--resize", "pad", "--mode", "eval")
    assert _read(tmp_path / "pad" / "odd.png").shape == (100, 70, 3)
    G, _ = load_generator(checkpoint)
    with torch.no_grad():
        expected = denormalize(G.eval()(to_tensor(fit)[None]))[0]
    np.testing.assert_array_equal(_read(tmp_path / "pad" / "fit.png"), expected)
    # the odd image equals the network on its reflect-padded version, cropped
    odd = _read(src / "odd.png")
    padded = reflect_pad(to_tensor(odd), 14, 14, 29, 29)
    with torch.no_grad():
        ref = denormalize(G.eval()(padded[None]))[0][14:114, 29:99]
    np.testing.assert_array_equal(_read(tmp_path / "pad" / "odd.png"), ref)


def test_exif_rotated_jpeg_is_translated_upright(tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    img = Image.fromarray(_noise(60, 100, 7))  # stored 100 wide, 60 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    img.save(src / "phone.jpg", exif=exif.tobytes())
    _translate(checkpoint, src, tmp_path / "out", "--tile", "auto", "--mode", "eval")
    assert _read(tmp_path / "out" / "phone.png").shape == (100, 60, 3)


def test_tiled_shards_and_colorization(tmp_path):
    from helpers.shards import write_png_shard as _write_shard

    spec = GeneratorSpec(name="unet_128", in_channels=1, out_channels=2, ngf=8)
    torch.manual_seed(1)
    save_generator(spec.build(), spec, tmp_path / "ckpt")
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_shard(shards / "c-000000.tar", [(f"k{i}", {"img.png": _noise(96, 160, 60 + i)}) for i in range(2)])
    translate_main(
        [
            str(a)
            for a in (
                "--checkpoint",
                tmp_path / "ckpt",
                "--shards",
                shards,
                "--output",
                tmp_path / "out",
                "--tile",
                "128",
                "--overlap",
                "32",
            )
        ]
    )
    assert _read(tmp_path / "out" / "k0.png").shape == (96, 160, 3)


def test_tiling_errors_are_one_line(tmp_path, checkpoint, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_noise(10, 10, 1)).save(src / "x.png")
    for extra, words in (
        (["--tile", "100"], "multiple of 128"),
        (["--tile", "128", "--overlap", "80"], "half the tile"),
        (["--tile", "big"], "number of pixels"),
        (["--overlap", "8"], "needs --tile"),
        (["--tile", "128", "--resize", "pad"], "exclude each other"),
    ):
        with pytest.raises(SystemExit) as exc:
            _translate(checkpoint, src, tmp_path / "out", *extra)
        assert exc.value.code == 2
        assert words in capsys.readouterr().err.strip().splitlines()[-1]
