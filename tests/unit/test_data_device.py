"""p2p_dist.data.device and the fast decoders: the on-device jitter is the paper's resize 286 / crop 256 /
flip (PIL's bicubic within rounding, labels nearest and lossless), A and B get the same crop and flip,
and libjpeg-turbo / libspng give Pillow's pixels. Our shards stay readable by plain webdataset."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from p2p_dist.data.decode import SampleSpec, decode_image, load_example, load_pixels
from p2p_dist.data.device import draws_tensor, host_jitter, jitter_batch, prepare_batch, resize_bicubic
from p2p_dist.data.shards import RawSample, SampleError
from p2p_dist.data.transforms import Jitter, JitterDraw, resize, to_tensor


def encoded(img: np.ndarray | Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def smooth_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like image (smooth gradients plus noise), so JPEG and resizing behave as on photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def colour_labels(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A label-colour map: flat regions of a few colours with hard edges."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    ids = (np.add.outer(np.arange(h) // 7, np.arange(w) // 11) + rng.integers(0, 6)) % 6
    return palette[ids]


def pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("case", ["jpeg444", "jpeg420", "jpeg_grey", "png_rgb", "png_grey", "png_palette", "png_rgba"])
def test_fast_decoders_give_pillows_pixels(case):
    photo = smooth_photo(37, 52, seed=1)
    data = {
        "jpeg444": lambda: encoded(photo, "JPEG", quality=95, subsampling=0),
        "jpeg420": lambda: encoded(photo, "JPEG", quality=80, subsampling=2),
        "jpeg_grey": lambda: encoded(photo[:, :, 0], "JPEG", quality=90),
        "png_rgb": lambda: encoded(colour_labels(37, 52), "PNG"),
        "png_grey": lambda: encoded(photo[:, :, 1], "PNG"),
        "png_palette": lambda: encoded(Image.fromarray(colour_labels(37, 52)).quantize(6), "PNG"),
        "png_rgba": lambda: encoded(np.dstack([photo, photo[:, :, :1]]), "PNG"),
    }[case]()
    out = decode_image(data)
    assert out.dtype == np.uint8 and out.shape == (37, 52, 3)
    assert np.array_equal(out, pil_decode(data))


def test_label_maps_decode_losslessly_and_bad_bytes_still_raise():
    ids = (np.arange(30 * 20).reshape(30, 20) % 19).astype(np.uint8)
    assert np.array_equal(decode_image(encoded(ids, "PNG"), "label"), ids)
    photo = encoded(smooth_photo(16, 16), "JPEG")
    for bad in (photo[: len(photo) // 2], photo[:40], encoded(ids, "PNG")[:60], b"\xff\xd8\xff garbage"):
        with pytest.raises(SampleError, match="cannot decode"):
            decode_image(bad)


def _pair(a: np.ndarray, b: np.ndarray, key: str = "k") -> RawSample:
    return RawSample(
        key=key,
        shard="mem",
        fields={"a.jpg": encoded(a, "JPEG", quality=95, subsampling=0), "b.png": encoded(b, "PNG")},
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_device_jitter_is_the_reference_pil_jitter_within_rounding(channels_last):
    """resize 286 (PIL bicubic) + crop 256 + flip, as `load_example` does it with Pillow on the host:
    the same crops and flips (drawn from the same RNG), pixels within 2 levels of 255, mean far below 1."""
    jitter = Jitter(286, 256, True)
    spec = SampleSpec(jitter=jitter)
    samples = [_pair(smooth_photo(256, 256, seed=i), colour_labels(256, 256, seed=i), f"s{i}") for i in range(6)]
    pixels = [load_pixels(s, spec, np.random.default_rng([7, i])) for i, s in enumerate(samples)]
    batch = {
        "A": torch.from_numpy(np.stack([p[0] for p in pixels])),
        "B": torch.from_numpy(np.stack([p[1] for p in pixels])),
        "draws": draws_tensor([p[2] for p in pixels]),
        "jitter": jitter,
    }
    A, B = prepare_batch(batch, "cpu", channels_last=channels_last)
    assert A.shape == B.shape == (6, 3, 256, 256) and A.dtype == torch.float32
    assert A.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert {p[2].flip for p in pixels} == {True, False} and len({(p[2].top, p[2].left) for p in pixels}) > 3
    for i, s in enumerate(samples):
        ref = load_example(s, spec, np.random.default_rng([7, i]))
        for got, want in ((A[i], ref["A"]), (B[i], ref["B"])):
            diff = (got - want).abs() * 127.5
            assert diff.max() <= 2.01 and diff.mean() < 0.05


def test_a_and_b_get_the_same_crop_and_flip_on_the_device():
    """B is a pixelwise function of A (255 - A) before the jitter; crops, flips and the resize keep it so."""
    a = smooth_photo(40, 40, seed=3)
    x = torch.from_numpy(np.stack([a, a])).permute(0, 3, 1, 2)
    y = 255 - x
    draws = draws_tensor([JitterDraw(3, 8, True), JitterDraw(8, 0, False)])
    for jitter in (Jitter(None, 32, True), Jitter(48, 32, True)):
        ja, jb = jitter_batch(x, draws, jitter), jitter_batch(y, draws, jitter)
        assert ja.shape == (2, 3, 32, 32)
        if jitter.load_size is None:  # no resize: exactly the crop and flip
            assert torch.equal(jb, 255 - ja)
            assert torch.equal(ja[0], x[0, :, 3:35, 8:40].flip(-1)) and torch.equal(ja[1], x[1, :, 8:40, 0:32])
        else:  # bicubic commutes with 255 - x up to rounding
            assert (jb.int() - (255 - ja.int())).abs().max() <= 1


def test_label_maps_are_resized_with_nearest_neighbours_losslessly():
    ids = np.random.default_rng(0).integers(0, 19, (40, 40), dtype=np.uint8)
    x = torch.from_numpy(np.stack([ids, ids]))[:, None]
    draws = draws_tensor([JitterDraw(2, 5, True), JitterDraw(0, 16, False)])
    jitter = Jitter(56, 40, True)
    out = jitter_batch(x, draws, jitter, nearest=True)
    for i, (top, left, flip) in enumerate(draws.tolist()):
        want = jitter.apply(ids, JitterDraw(top, left, bool(flip)), nearest=True)
        assert np.array_equal(out[i, 0].numpy(), want)  # PIL's nearest neighbours, exactly
    assert set(np.unique(out.numpy())) <= set(np.unique(ids))


def test_uint8_and_float_kernels_agree():
    """The float kernel is the route on CUDA; on the CPU both exist and agree within rounding."""
    x = torch.from_numpy(np.stack([smooth_photo(64, 64, s) for s in range(3)])).permute(0, 3, 1, 2)
    u = resize_bicubic(x, 80, uint8_kernel=True)
    f = resize_bicubic(x, 80, uint8_kernel=False)
    assert u.dtype == f.dtype == torch.uint8 and u.shape == (3, 3, 80, 80)
    diff = (u.int() - f.int()).abs()
    assert diff.max() <= 4 and diff.float().mean() < 0.3  # the uint8 kernel rounds between its passes, as PIL
    pil = np.stack([resize(x[i].permute(1, 2, 0).numpy(), (80, 80)) for i in range(3)])
    assert np.abs(u.permute(0, 2, 3, 1).numpy().astype(int) - pil).max() <= 2


def test_host_jitter_matches_the_device_jitter():
    """Batches of mixed stored sizes are jittered in the stream, sample by sample, with the same code."""
    imgs = [smooth_photo(40, 40, 1), smooth_photo(48, 36, 2)]
    draws = [JitterDraw(1, 2, True), JitterDraw(4, 0, False)]
    jitter = Jitter(44, 32, True)
    out = host_jitter(imgs, draws, jitter)
    for img, d, got in zip(imgs, draws, out):
        one = jitter_batch(torch.from_numpy(img).permute(2, 0, 1)[None], draws_tensor([d]), jitter)
        assert got.shape == (32, 32, 3) and np.array_equal(got, one[0].permute(1, 2, 0).numpy())


def test_float_batches_are_only_moved():
    a = to_tensor(smooth_photo(8, 8))[None]
    A, B = prepare_batch({"A": a, "B": -a, "key": ["x"]}, "cpu")
    assert torch.equal(A, a) and torch.equal(B, -a)


def test_plain_webdataset_reads_our_shards(tmp_path):
    import webdataset as wds

    from p2p_dist.data.demo import build_demo

    build_demo("scenes", tmp_path, train=5, val=0, size=32, shard_size=3)
    shards = sorted(str(p) for p in (tmp_path / "train").glob("*.tar"))
    assert len(shards) == 2
    samples = list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [f"{i:06d}" for i in range(5)]
    for s in samples:
        assert {"a.jpg", "b.png", "label.png"} <= set(s)
        assert decode_image(s["a.jpg"]).shape == (32, 32, 3) and decode_image(s["b.png"]).shape == (32, 32, 3)
        assert decode_image(s["label.png"], "label").shape == (32, 32)


def test_cpu_jitter_runs_on_one_intraop_thread_and_restores_the_setting():
    """prepare_batch on the CPU jitters with one torch thread (no spinning second thread) and gives the
    caller's thread count back, also when the jitter raises."""
    import p2p_dist.data.device as device

    seen = []
    real = device._jittered_float

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.from_numpy(np.stack([smooth_photo(40, 40, 1)]))
        batch = {"A": a, "B": a, "draws": draws_tensor([JitterDraw(1, 2, True)]), "jitter": Jitter(44, 32, True)}
        device._jittered_float = spy
        A, B = prepare_batch(batch, "cpu")
        assert seen == [1, 1] and torch.get_num_threads() == 2 and torch.equal(A, B)
        device._jittered_float = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
        with pytest.raises(RuntimeError, match="boom"):
            prepare_batch(batch, "cpu")
        assert torch.get_num_threads() == 2
    finally:
        device._jittered_float = real
        torch.set_num_threads(before)
