"""p2p_dist.data.jitter, the one resize and the fast decoders: the batched jitter is the paper's resize
286 / crop 256 / flip (Pillow's bicubic within rounding, labels nearest and lossless), A and B get the
same crop and flip, and libjpeg-turbo / libspng give Pillow's pixels. Our shards stay readable by plain
webdataset."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from p2p_dist.data.decode import SampleSpec, decode_image, load_sample
from p2p_dist.data.errors import DataError
from p2p_dist.data.jitter import Jitter, JitterDraw, jitter_batch
from p2p_dist.data.reader import collate
from p2p_dist.data.shards import RawSample, SampleError
from p2p_dist.data.transforms import resize, resize_batch, rgb_to_lab


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


def pil_jitter(img: np.ndarray, jitter: Jitter, d: JitterDraw, nearest: bool = False) -> np.ndarray:
    """The reference implementation's transforms with Pillow: resize, crop, flip."""
    pil = Image.fromarray(img)
    if jitter.load_size:
        pil = pil.resize((jitter.load_size,) * 2, resample=Image.NEAREST if nearest else Image.BICUBIC)
    out = np.asarray(pil)
    if jitter.crop_size:
        out = out[d.top : d.top + jitter.crop_size, d.left : d.left + jitter.crop_size]
    return out[:, ::-1] if d.flip else out


def pixels(examples, spec: SampleSpec, keys=None):
    return collate(examples, keys or [f"s{i}" for i in range(len(examples))], spec)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_jitter_is_the_reference_pil_jitter_within_rounding(channels_last):
    """resize 286 (Pillow's bicubic) + crop 256 + flip, with the draws of the reader's RNG: the same
    crops and flips, pixels within 2 levels of 255, mean far below 1; label maps exactly Pillow's."""
    jitter = Jitter(286, 256, True)
    spec = SampleSpec(jitter=jitter, with_labels=True)
    samples = []
    for i in range(6):
        s = _pair(smooth_photo(256, 256, seed=i), colour_labels(256, 256, seed=i), f"s{i}")
        s.fields["label.png"] = encoded((colour_labels(256, 256, seed=i)[:, :, 0] % 19).astype(np.uint8), "PNG")
        samples.append(s)
    examples = [load_sample(s, spec, np.random.default_rng([7, i])) for i, s in enumerate(samples)]
    out = jitter_batch(pixels(examples, spec), "cpu", channels_last=channels_last)
    A, B = out["A"], out["B"]
    assert A.shape == B.shape == (6, 3, 256, 256) and A.dtype == torch.float32
    assert A.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert out["label"].shape == (6, 256, 256) and out["label"].dtype == torch.int64
    draws = [d for _, d in examples]
    assert {d.flip for d in draws} == {True, False} and len({(d.top, d.left) for d in draws}) > 3
    for i, (images, d) in enumerate(examples):
        for got, img in ((A[i], images[0]), (B[i], images[1])):
            want = torch.from_numpy(np.ascontiguousarray(pil_jitter(img, jitter, d))).permute(2, 0, 1)
            diff = (got + 1) * 127.5 - want.float()
            assert diff.abs().max() <= 2.01 and diff.abs().mean() < 0.05
        assert np.array_equal(out["label"][i].numpy(), pil_jitter(images[2], jitter, d, nearest=True))


def test_a_and_b_get_the_same_crop_and_flip():
    """B is a pixelwise function of A (255 - A) before the jitter; crops, flips and the resize keep it so."""
    a = smooth_photo(40, 40, seed=3)
    draws = [JitterDraw(3, 8, True), JitterDraw(8, 0, False)]
    for jitter in (Jitter(None, 32, True), Jitter(48, 32, True)):
        spec = SampleSpec(jitter=jitter)
        out = jitter_batch(pixels([([a, 255 - a], d) for d in draws], spec), "cpu")
        ja, jb = (((out[k] + 1) * 127.5).round().to(torch.uint8) for k in "AB")
        assert ja.shape == (2, 3, 32, 32)
        if jitter.load_size is None:  # no resize: exactly the crop and flip
            x = torch.from_numpy(a).permute(2, 0, 1)
            assert torch.equal(jb, 255 - ja)
            assert torch.equal(ja[0], x[:, 3:35, 8:40].flip(-1)) and torch.equal(ja[1], x[:, 8:40, 0:32])
        else:  # bicubic commutes with 255 - x up to rounding
            assert (jb.int() - (255 - ja.int())).abs().max() <= 1


def test_the_one_resize_is_pillows_for_photos_and_label_maps_of_any_shape():
    photo, grey = smooth_photo(37, 52, seed=4), smooth_photo(37, 52, seed=5)[:, :, 1]
    ids = np.random.default_rng(0).integers(0, 19, (37, 52), dtype=np.uint8)
    for size in ((80, 64), (20, 31)):
        for img in (photo, grey):
            want = np.asarray(Image.fromarray(img).resize(size[::-1], resample=Image.BICUBIC))
            got = resize(img, size)
            assert got.shape == want.shape and np.abs(got.astype(int) - want).max() <= 2
        want = np.asarray(Image.fromarray(ids).resize(size[::-1], resample=Image.NEAREST))
        got = resize(ids, size, nearest=True)
        assert set(np.unique(got)) <= set(np.unique(ids))  # lossless: only the map's own classes
        # Pillow's pixels, but where a sampling point falls exactly between two source pixels (52 -> 31:
        # column 15 samples 26.0) the two round differently and pick neighbouring columns
        assert np.array_equal(got, want) if size == (80, 64) else (got == want).mean() > 0.95
    x = torch.from_numpy(np.stack([photo, photo])).permute(0, 3, 1, 2)
    assert resize_batch(x, (37, 52)) is x  # the stored size: untouched


def test_images_of_mixed_stored_sizes_are_jittered_one_by_one():
    """A batch whose images differ in stored size: each is resized alone, then the batch is one tensor,
    the same pixels as each image jittered in a batch of its own."""
    imgs = [smooth_photo(40, 40, 1), smooth_photo(48, 36, 2)]
    draws = [JitterDraw(1, 2, True), JitterDraw(4, 0, False)]
    spec = SampleSpec(jitter=Jitter(44, 32, True))
    both = jitter_batch(pixels([([x, x], d) for x, d in zip(imgs, draws)], spec), "cpu")
    for i, (img, d) in enumerate(zip(imgs, draws)):
        one = jitter_batch(pixels([([img, img], d)], spec), "cpu")
        assert torch.equal(both["A"][i], one["A"][0]) and torch.equal(both["B"][i], one["A"][0])
    with pytest.raises(DataError, match="mixed sizes in one batch"):
        jitter_batch(pixels([([x, x], JitterDraw()) for x in imgs], SampleSpec()), "cpu")


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


def test_cpu_jitter_runs_on_one_intraop_thread_and_restores_the_setting(monkeypatch):
    """The jitter on the CPU runs with one torch thread (no spinning second thread) and gives the
    caller's thread count back, also when it raises."""
    import p2p_dist.data.jitter as jitter_module

    seen = []
    real = jitter_module._scaled

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = smooth_photo(40, 40, 1)
        batch = pixels([([a, a], JitterDraw(1, 2, True))], SampleSpec(jitter=Jitter(44, 32, True)))
        monkeypatch.setattr(jitter_module, "_scaled", spy)
        out = jitter_batch(batch, "cpu")
        assert seen == [1, 1] and torch.get_num_threads() == 2 and torch.equal(out["A"], out["B"])
        monkeypatch.setattr(jitter_module, "_scaled", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            jitter_batch(batch, "cpu")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def per_sample_jitter(batch, channels_last: bool) -> dict:
    """The jitter as it was before it was batched (one crop, flip and scaling per sample, in a Python
    loop), written plainly: the batched jitter must give these tensors bit for bit."""
    size = (batch.jitter.load_size,) * 2 if batch.jitter.load_size else None
    c, out = batch.jitter.crop_size, {}
    for name, images in batch.images().items():
        x = (images[..., None] if images.ndim == 3 else images).permute(0, 3, 1, 2)
        x = resize_batch(x, size, nearest=name == "label") if size else x
        crops = []
        for i, (top, left, flip) in enumerate(batch.draws.tolist()):
            xi = x[i].permute(1, 2, 0)
            xi = xi[top : top + c, left : left + c] if c else xi
            crops.append(xi.flip(1) if flip else xi)

        def scaled(crops):
            h, w, ch = crops[0].shape
            if channels_last:
                buf = torch.empty((len(crops), h, w, ch))
                for i, crop in enumerate(crops):
                    torch.div(crop, 127.5, out=buf[i])
                return buf.sub_(1.0).permute(0, 3, 1, 2)
            buf = torch.empty((len(crops), ch, h, w))
            for i, crop in enumerate(crops):
                torch.div(crop.permute(2, 0, 1), 127.5, out=buf[i])
            return buf.sub_(1.0)

        if name == "label":
            out["label"] = torch.stack(crops)[..., 0].long()
        elif name == "rgb":
            L, ab = rgb_to_lab(torch.stack(crops).permute(0, 3, 1, 2))
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            out["A"], out["B"] = L.contiguous(memory_format=fmt), ab.contiguous(memory_format=fmt)
            out["rgb"] = scaled(crops)
        else:
            out[name] = scaled(crops)
    return out


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("task", ["translation", "colorization"])
@pytest.mark.parametrize("jitter", [Jitter(44, 32, True), Jitter(None, 32, True), Jitter(36, None, True)])
def test_the_batched_jitter_is_the_per_sample_jitter_bit_for_bit(task, jitter, channels_last):
    """Crop and flip as one gather per field with the draws as a tensor: the per-sample loop's tensors
    exactly (translation with label maps, colorization's Lab and RGB, either memory format)."""
    spec = SampleSpec(task=task, jitter=jitter, with_labels=task == "translation")
    rng = np.random.default_rng(5)
    examples = []
    for i in range(5):
        photo = smooth_photo(40, 40, seed=i)
        if task == "colorization":
            images = [photo]
        else:
            images = [photo, 255 - smooth_photo(40, 40, seed=i + 9), colour_labels(40, 40, seed=i)[:, :, 0] % 19]
        examples.append((images, jitter.draw(rng, (40, 40))))
    assert {d.flip for _, d in examples} == {True, False}
    batch = pixels(examples, spec)
    got, want = jitter_batch(batch, "cpu", channels_last=channels_last), per_sample_jitter(batch, channels_last)
    assert set(got) == set(want) | {"key"}
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and got[k].stride() == v.stride(), k
        assert torch.equal(got[k], v), k
