"""p2p_dist.imageio: the one place for image extensions, listing, reading, writing and sample keys."""

import io
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from p2p_dist import imageio
from p2p_dist.data import decode
from p2p_dist.data.pack import PackOptions, pack_colorization
from p2p_dist.data.shards import SampleError
from p2p_dist.errors import UserError


def _bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_one_extension_tuple_for_listing_and_shard_fields(tmp_path):
    names = ["a.png", "b.JPG", "c.jpeg", "d.bmp", "e.webp", "f.tif", "g.TIFF", "h.ppm", "i.npy"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    for n in ("notes.txt", ".hidden.png", "x.gif"):
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.png").write_bytes(b"")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "skip.png").write_bytes(b"")
    assert [p.name for p in imageio.list_images(tmp_path)] == names
    listed = [p.relative_to(tmp_path).as_posix() for p in imageio.list_images(tmp_path, recursive=True)]
    assert listed == sorted(names + ["sub/deep.png"])
    assert set(decode.FIELD_EXTS) == {e[1:] for e in imageio.IMAGE_EXTENSIONS}
    assert imageio.is_image_field("a.png") and imageio.is_image_field("label.PNG")
    assert not imageio.is_image_field("meta.json") and not imageio.is_image_field("a.cls")
    assert set(imageio.LOSSLESS_EXTENSIONS) < set(imageio.IMAGE_EXTENSIONS)


def test_list_images_refuses_missing_folder_and_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        imageio.list_images(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(UserError, match="is not a folder"):
        imageio.list_images(tmp_path / "f.png", recursive=True)


@pytest.mark.parametrize(
    ("rel", "key"),
    [
        ("a.png", "a"),
        ("city/a b.1.png", "city/a_b_1"),
        ("x+y-z_w.JPG", "x+y-z_w"),
        ("d/e.f/g.jpg", "d/e_f/g"),
        ("aachen_000000_000019", "aachen_000000_000019"),  # a Cityscapes stem (no suffix)
        ("straße.png", "stra_e"),
    ],
)
def test_sample_key(rel, key):
    assert imageio.sample_key(rel) == key


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    """Orientation 6: stored 40 wide x 20 high, shown turned 90 degrees clockwise (20 x 40): the
    stored left half (red) ends up on top."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"phone.{fmt.lower()}"
    path.write_bytes(_bytes(Image.fromarray(arr), fmt, exif=exif))
    img = imageio.read_image(path)
    assert img.shape == (40, 20, 3)
    assert imageio.image_size(path) == (40, 20)  # from the header, agreeing with the pixels
    top, bottom = img[:20].reshape(-1, 3).mean(0), img[20:].reshape(-1, 3).mean(0)
    assert top[0] > 240 and top[2] < 15 and bottom[2] > 240 and bottom[0] < 15
    plain = tmp_path / f"plain.{fmt.lower()}"
    plain.write_bytes(_bytes(Image.fromarray(arr), fmt))
    assert imageio.read_image(plain).shape == (20, 40, 3) and imageio.image_size(plain) == (20, 40)


def test_16_bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 257, 257 * 128, 32767, 65535]], np.uint16)  # 32767 / 257 = 127.5 -> 127
    data = _bytes(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    assert imageio.decode_image(data, "L").tolist() == [[0, 1, 128, 127, 255]]
    rgb = imageio.decode_image(data, "RGB")
    assert rgb.shape == (1, 5, 3) and (rgb == rgb[:, :, :1]).all() and rgb[0, :, 0].tolist() == [0, 1, 128, 127, 255]


def test_16_bit_rgb_png():
    arr = np.array([[[0, 257 * 128, 65535], [257 * 10, 257 * 200, 257 * 77]]], np.uint16)
    assert imageio.decode_image(_png16_rgb(arr)).tolist() == [[[0, 128, 255], [10, 200, 77]]]
    stored = imageio.decode_image(_png16_rgb(arr), "stored")
    assert stored.dtype == np.uint16 and (stored == arr).all()


def _pixels(dtype, channels: int, seed: int = 0) -> np.ndarray:
    """Noise over the whole range of `dtype`, both extremes included."""
    top = np.iinfo(dtype).max
    arr = np.random.default_rng(seed).integers(0, top + 1, (6, 9, channels)).astype(dtype)
    arr[0, 0], arr[0, 1] = 0, top
    return arr


@pytest.mark.parametrize(
    ("suffix", "channels"),
    [(".png", c) for c in (1, 2, 3, 4)] + [(".tif", c) for c in (1, 3, 4, 7)] + [(".npy", c) for c in (1, 3, 6)],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_stored_round_trip_is_bit_identical(tmp_path, suffix, channels, dtype):
    arr = _pixels(dtype, channels)
    path = imageio.write_image(tmp_path / f"x{suffix}", arr)
    for back in (imageio.read_image(path, "stored"), imageio.decode_image(path.read_bytes(), "stored")):
        assert back.dtype == dtype and back.shape == arr.shape and (back == arr).all()
    assert imageio.image_size(path) == (6, 9)
    assert [p.name for p in tmp_path.iterdir()] == [f"x{suffix}"]  # no temporary file left
    if channels == 1:  # an H x W array is a one-channel image
        assert (imageio.decode_image(imageio.encode_image(arr[:, :, 0], suffix), "stored") == arr).all()
    # one pixel, as moved from channels-first (C-contiguous, with strides a writer may refuse)
    pixel = np.moveaxis(np.ascontiguousarray(np.moveaxis(arr[:1, :1], -1, 0)), 0, -1)
    assert (imageio.decode_image(imageio.encode_image(pixel, suffix), "stored") == arr[:1, :1]).all()


def test_writer_picks_png_up_to_four_channels_and_tiff_beyond(tmp_path):
    assert [imageio.image_suffix(c) for c in (1, 3, 4, 5, 13)] == [".png"] * 3 + [".tif"] * 2
    assert imageio.encode_image(_pixels(np.uint16, 3)).startswith(b"\x89PNG")
    assert imageio.encode_image(_pixels(np.uint8, 5))[:4] == b"II*\x00"
    # what other readers see: Pillow reads the 16-bit greyscale PNG as 16 bits, the 8-bit RGB one as is
    grey = _pixels(np.uint16, 1)
    with Image.open(io.BytesIO(imageio.encode_image(grey))) as im:
        assert im.mode == "I;16" and (np.asarray(im) == grey[:, :, 0]).all()
    with pytest.raises(ValueError, match="PNG holds at most 4 channels"):
        imageio.write_image(tmp_path / "five.png", _pixels(np.uint8, 5))
    with pytest.raises(TypeError, match="uint8 or uint16"):
        imageio.encode_image(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="cannot write '.jpg'"):
        imageio.write_image(tmp_path / "x.jpg", _pixels(np.uint8, 3))
    assert list(tmp_path.iterdir()) == []


def test_tiff_stacks_and_planes_become_channels(tmp_path):
    import tifffile

    bands = _pixels(np.uint16, 5)
    pages = tmp_path / "pages.tif"  # one page per band, written one after another (no shape metadata)
    with tifffile.TiffWriter(pages) as tif:
        for c in range(5):
            tif.write(bands[:, :, c], metadata=None)
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(bands, 2, 0), photometric="minisblack", planarconfig="separate")
    for path in (pages, planar):
        assert (imageio.read_image(path, "stored") == bands).all()
        assert imageio.image_size(path) == (6, 9)
        # the uint8 modes read what Pillow cannot from the stored pixels: the first bands, rounded to 8 bits
        assert (imageio.read_image(path, "RGB") == (bands[:, :, :3].astype(np.int64) * 255 + 32767) // 65535).all()
    odd = tmp_path / "odd.tif"
    with tifffile.TiffWriter(odd) as tif:
        tif.write(bands[:, :, 0], metadata=None)
        tif.write(bands[:3, :, 0], metadata=None)
    with pytest.raises(UserError, match="different sizes"):
        imageio.read_image(odd, "stored")


def test_npy_reads_only_plain_unsigned_arrays(tmp_path):
    grey = _pixels(np.uint8, 1)[:, :, 0]
    np.save(tmp_path / "grey.npy", grey)
    assert imageio.read_image(tmp_path / "grey.npy", "L").tolist() == grey.tolist()
    assert imageio.read_image(tmp_path / "grey.npy", "RGB").shape == (6, 9, 3)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "float.npy", np.zeros((4, 4), np.float32))
    np.save(tmp_path / "signed.npy", np.zeros((4, 4), np.int16))
    np.save(tmp_path / "cube.npy", np.zeros((2, 4, 4, 3), np.uint8))
    for name, reason in [
        ("objects", "allow_pickle"),
        ("float", "float32 pixels"),
        ("signed", "int16 pixels"),
        ("cube", "H x W or H x W x C"),
    ]:
        with pytest.raises(UserError, match=f"cannot read image .*{name}.npy: .*{reason}"):
            imageio.read_image(tmp_path / f"{name}.npy", "stored")


def test_stored_mode_of_8_bit_files_matches_the_rgb_and_l_modes():
    colour = _pixels(np.uint8, 3)
    for fmt in ("PNG", "BMP", "TIFF"):
        data = _bytes(Image.fromarray(colour), fmt)
        assert (imageio.decode_image(data, "stored") == imageio.decode_image(data, "RGB")).all()
    grey = _bytes(Image.fromarray(colour[:, :, 0]))
    assert (imageio.decode_image(grey, "stored")[:, :, 0] == imageio.decode_image(grey, "L")).all()
    sixteen = _bytes(Image.fromarray(_pixels(np.uint16, 1)[:, :, 0]))
    assert (imageio.decode_image(sixteen, "stored") == _pixels(np.uint16, 1)).all()


def test_greyscale_palette_and_alpha_inputs():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = imageio.decode_image(_bytes(Image.fromarray(grey)))
    assert rgb.shape == (3, 4, 3) and (rgb == grey[:, :, None]).all()
    assert (imageio.decode_image(_bytes(Image.fromarray(grey)), "L") == grey).all()
    assert (imageio.decode_image(_bytes(Image.fromarray(grey).convert("LA")))[:, :, 1] == grey).all()
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (200, 10, 10)
    assert imageio.decode_image(_bytes(Image.fromarray(colour).convert("RGBA"))).tolist() == colour.tolist()
    pal = Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette images with transparency" warning
        assert imageio.decode_image(_bytes(pal)).tolist() == colour.tolist()
    bilevel = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")
    assert imageio.decode_image(_bytes(bilevel), "L").tolist() == [[0, 255]]


def test_label_maps_keep_their_ids():
    ids = np.array([[0, 7, 33, 254]], np.uint8)
    assert imageio.decode_image(_bytes(Image.fromarray(ids)), "label").tolist() == ids.tolist()
    wide = np.array([[7, 300, 65535]], np.uint16)  # ids above 255 are the ignore id
    assert imageio.decode_image(_bytes(Image.fromarray(wide)), "label").tolist() == [[7, 255, 255]]
    with pytest.raises(ValueError, match="label map has mode RGB"):
        imageio.decode_image(_bytes(Image.fromarray(np.zeros((2, 2, 3), np.uint8))), "label")
    with pytest.raises(ValueError, match="mode must be one of"):
        imageio.decode_image(_bytes(Image.fromarray(ids)), "CMYK")


def test_unreadable_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*bad.png"):
        imageio.read_image(bad)
    with pytest.raises(UserError, match="cannot read image .*bad.png"):
        imageio.image_size(bad)
    with pytest.raises(imageio.READ_ERRORS):
        imageio.decode_image(b"garbage")
    with pytest.raises(SampleError, match="cannot decode image"):
        decode.decode_image(b"garbage")


def test_packing_reads_through_the_image_module(tmp_path):
    """A sideways phone photo is packed upright; a 16-bit greyscale one is skipped as greyscale."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8
    (src / "turned.png").write_bytes(_bytes(Image.fromarray(arr), exif=exif))
    (src / "grey16.tif").write_bytes(_bytes(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "TIFF"))
    result = pack_colorization(src, tmp_path / "out", opts=PackOptions(format="png"))
    assert result.index["total"] == 1 and result.skipped == {"greyscale": 1}
    assert result.index["image_size"] == [32, 16]  # H x W after turning


def test_models_registry_and_config_do_not_import_torch():
    code = "import sys, p2p_dist.config, p2p_dist.models.registry, p2p_dist.models.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
