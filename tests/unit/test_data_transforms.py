"""p2p_dist.data.transforms, decode and jitter: tensors, Lab (scikit-image's), the paper's jitter on A and B
(one sample through the reader's decode and the batched jitter, as the step gets it)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from p2p_dist.config import DataConfig
from p2p_dist.data.decode import SampleSpec, load_sample
from p2p_dist.data.jitter import Jitter, jitter_batch
from p2p_dist.data.reader import collate
from p2p_dist.data.shards import RawSample, SampleError
from p2p_dist.data.transforms import denormalize, lab_tensors_to_rgb, rgb_to_lab_tensors, to_tensor


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def load_example(sample: RawSample, spec: SampleSpec, rng: np.random.Generator) -> dict:
    """One sample decoded by the reader and jittered by `jitter_batch` on the CPU, unbatched."""
    out = jitter_batch(collate([load_sample(sample, spec, rng)], [sample.key], spec), "cpu")
    return {k: v[0] for k, v in out.items() if k != "key"}


def noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_to_tensor_and_back_is_exact():
    img = noise_image(12, 20)
    t = to_tensor(img)
    assert t.shape == (3, 12, 20) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert np.array_equal(denormalize(t), img)
    assert np.array_equal(denormalize(torch.stack([t, t])), np.stack([img, img]))
    assert to_tensor(img[:, :, 0]).shape == (1, 12, 20)
    assert np.array_equal(denormalize(torch.full((1, 2, 2), 5.0))[..., 0], np.full((2, 2), 255))  # clipped


def test_lab_round_trip_and_ranges():
    # smooth colours well inside the sRGB gamut, plus pure greys
    rng = np.random.default_rng(1)
    rgb = rng.integers(20, 236, (16, 16, 3), dtype=np.uint8)
    rgb[0] = 128  # a grey row
    L, ab = rgb_to_lab_tensors(rgb)
    assert L.shape == (1, 16, 16) and ab.shape == (2, 16, 16)
    assert L.min() >= -1 and L.max() <= 1 and ab.abs().max() <= 1
    assert torch.allclose(ab[:, 0], torch.zeros_like(ab[:, 0]), atol=1e-3)  # grey has no colour
    back = lab_tensors_to_rgb(L, ab)
    assert back.dtype == np.uint8 and back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1
    batched = lab_tensors_to_rgb(torch.stack([L, L]), torch.stack([ab, ab]))
    assert batched.shape == (2, 16, 16, 3) and np.array_equal(batched[1], back)


def test_lab_is_scikit_images():
    from skimage.color import rgb2lab

    rgb = noise_image(24, 20, seed=9)
    rgb[0, :4] = [[0, 0, 0], [255, 255, 255], [1, 2, 3], [10, 10, 10]]  # both branches of gamma and f
    lab = rgb2lab(rgb.astype(np.float64) / 255.0).astype(np.float32)
    L, ab = rgb_to_lab_tensors(rgb)
    assert torch.allclose(L[0], torch.from_numpy(lab[:, :, 0]) / 50.0 - 1.0, atol=1e-6, rtol=0)
    assert torch.allclose(ab, torch.from_numpy(lab[:, :, 1:]).permute(2, 0, 1) / 110.0, atol=1e-6, rtol=0)


def test_lab_tensors_to_rgb_rejects_bad_shapes():
    with pytest.raises(ValueError):
        lab_tensors_to_rgb(torch.zeros(3, 4, 4), torch.zeros(2, 4, 4))


def test_jitter_from_config_matches_the_options():
    assert Jitter.from_config(DataConfig()) == Jitter(286, 256, True)
    assert Jitter.from_config(DataConfig(crop=False)) == Jitter(256, None, True)
    assert Jitter.from_config(DataConfig(resize=False, flip=False)) == Jitter(None, 256, False)
    assert Jitter.from_config(DataConfig(resize=False, crop=False)) == Jitter(None, None, True)


def _pair_sample(a: np.ndarray, b: np.ndarray, label: np.ndarray | None = None) -> RawSample:
    fields = {"a.png": png(a), "b.png": png(b)}
    if label is not None:
        fields["label.png"] = png(label)
    return RawSample(key="k", shard="mem", fields=fields)


@pytest.mark.parametrize("load_size", [None, 48])
def test_same_crop_and_flip_for_a_and_b(load_size):
    a = noise_image(40, 40, seed=2)
    # B is a pixelwise function of A: the same crop and flip keep it so (resizing: B == A)
    b = a.copy() if load_size else 255 - a
    label = (a[:, :, 0] // 32).astype(np.uint8)
    spec = SampleSpec(jitter=Jitter(load_size, 32, True), with_labels=True)
    crops, flips = set(), set()
    for seed in range(24):
        ex = load_example(_pair_sample(a, b, label), spec, np.random.default_rng(seed))
        assert ex["A"].shape == (3, 32, 32) and ex["label"].shape == (32, 32)
        assert torch.allclose(ex["B"], ex["A"] if load_size else -ex["A"], atol=1e-6, rtol=0)
        d = spec.jitter.draw(np.random.default_rng(seed), (40, 40))
        if not load_size:  # the label map got exactly the images' crop and flip
            expected = label[d.top : d.top + 32, d.left : d.left + 32]
            assert np.array_equal(ex["label"].numpy(), expected[:, ::-1] if d.flip else expected)
        crops.add((d.top, d.left))
        flips.add(d.flip)
    assert len(crops) > 10 and flips == {True, False}  # the jitter really is random


def test_label_follows_the_images_crop():
    a = noise_image(32, 32, seed=3)
    label = (np.arange(32)[None, :] * np.ones((32, 1))).astype(np.uint8)  # label = column index
    spec = SampleSpec(jitter=Jitter(None, 16, True), with_labels=True)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        d = spec.jitter.draw(np.random.default_rng(seed), (32, 32))
        ex = load_example(_pair_sample(a, a, label), spec, rng)
        cols = np.arange(d.left, d.left + 16)
        expected = cols[::-1] if d.flip else cols
        assert np.array_equal(ex["label"][0].numpy(), expected)


def test_direction_swaps_sides():
    a, b = noise_image(8, 8, 4), noise_image(8, 8, 5)
    sample = _pair_sample(a, b)
    fwd = load_example(sample, SampleSpec(direction="AtoB"), np.random.default_rng(0))
    rev = load_example(sample, SampleSpec(direction="BtoA"), np.random.default_rng(0))
    assert torch.equal(fwd["A"], rev["B"]) and torch.equal(fwd["B"], rev["A"])
    assert np.array_equal(denormalize(fwd["A"]), a)


def test_colorization_sample_gives_L_and_ab():
    rgb = noise_image(24, 24, 6)
    sample = RawSample(key="c", shard="mem", fields={"img.png": png(rgb)})
    ex = load_example(sample, SampleSpec(task="colorization", jitter=Jitter(None, 16, False)), np.random.default_rng(0))
    assert ex["A"].shape == (1, 16, 16) and ex["B"].shape == (2, 16, 16) and ex["rgb"].shape == (3, 16, 16)
    back = lab_tensors_to_rgb(ex["A"], ex["B"])
    assert np.abs(back.astype(int) - denormalize(ex["rgb"]).astype(int)).max() <= 2


def test_bad_samples_raise_sample_error():
    a = noise_image(8, 8)
    with pytest.raises(SampleError, match="missing member"):
        load_example(RawSample("k", "s", {"a.png": png(a)}), SampleSpec(), np.random.default_rng(0))
    with pytest.raises(SampleError, match="cannot decode"):
        load_example(
            RawSample("k", "s", {"a.png": png(a), "b.png": b"not an image"}), SampleSpec(), np.random.default_rng(0)
        )
    with pytest.raises(SampleError, match="smaller than the crop"):
        load_example(_pair_sample(a, a), SampleSpec(jitter=Jitter(None, 16, False)), np.random.default_rng(0))
    with pytest.raises(SampleError, match="b is"):
        load_example(_pair_sample(a, noise_image(8, 9)), SampleSpec(), np.random.default_rng(0))
