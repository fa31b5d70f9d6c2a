"""Image and perceptual metrics: scikit-image agreement, LPIPS and FID/KID through weight files
the tests write into a temporary torch cache (TORCH_HOME), and clear 'unavailable' reasons."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from p2p_eval import perceptual
from p2p_eval.inception import FIDInceptionV3, load_fid_inception
from p2p_eval.lpips import CHANNELS, LPIPS, load_lpips
from p2p_eval.scoring import Sample, Scorer
from p2p_eval.weights import MetricUnavailable, checkpoints_dir


def _pair(size=64, seed=0, noise=30):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-noise, noise + 1, a.shape), 0, 255).astype(np.uint8)
    return a, b


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = checkpoints_dir()
    folder.mkdir(parents=True)
    return folder


def test_psnr_and_ssim_match_scikit_image():
    for seed in range(3):
        a, b = _pair(seed=seed)
        p, t = perceptual.to_unit(a[None]), perceptual.to_unit(b[None])
        assert float(perceptual.psnr(p, t)[0]) == pytest.approx(sk_psnr(a, b, data_range=255), rel=1e-6)
        ref = sk_ssim(
            a / 255.0,
            b / 255.0,
            channel_axis=2,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert float(perceptual.ssim(p, t)[0]) == pytest.approx(ref, abs=1e-3)
        assert float(perceptual.l1(p, t)[0]) == pytest.approx(np.abs(a / 255.0 - b / 255.0).mean())


def test_ms_ssim_small_images_unavailable_large_ok():
    a, b = _pair(64)
    with pytest.raises(MetricUnavailable, match="smaller than 161"):
        perceptual.ms_ssim(perceptual.to_unit(a[None]), perceptual.to_unit(b[None]))
    a, b = _pair(176, noise=10)
    v = float(perceptual.ms_ssim(perceptual.to_unit(a[None]), perceptual.to_unit(b[None]))[0])
    assert 0.5 < v < 1.0


def _write_alexnet(folder, seed=0):
    """Real-shaped random AlexNet conv weights in torchvision's layout (no classifier: ~10 MB)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    state = {}
    for i, shape in shapes.items():
        state[f"features.{i}.weight"] = torch.randn(shape, generator=g) * (2.0 / np.prod(shape[1:])) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(shape[0])
    torch.save(state, folder / "alexnet-owt-7be5be79.pth")
    return state


def test_lpips_identity_symmetry_and_cache_lookup(torch_home):
    _write_alexnet(torch_home)
    lin_dir = torch_home / "lpips_v0.1"
    lin_dir.mkdir()
    torch.save(
        {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS["alex"])}, lin_dir / "alex.pth"
    )
    model = load_lpips("alex")
    assert isinstance(model, LPIPS)
    a, b = _pair(64)
    x = perceptual.to_unit(a[None]).float() * 2 - 1
    y = perceptual.to_unit(b[None]).float() * 2 - 1
    assert float(model(x, x)[0]) == 0.0
    d_xy, d_yx = float(model(x, y)[0]), float(model(y, x)[0])
    assert d_xy > 0 and d_xy == pytest.approx(d_yx, rel=1e-6)
    # the Scorer runs it per sample and averages
    scorer = Scorer(["lpips_alex"], "image")
    assert "lpips_alex" not in scorer.unavailable
    rec = scorer.score(Sample("k", pred=a, target=b))
    assert rec["lpips_alex"] == pytest.approx(d_xy, rel=1e-5)


def test_lpips_missing_backbone_names_file(torch_home):
    with pytest.raises(MetricUnavailable, match=r"vgg16-397923af\.pth.*" + str(torch_home).replace("/", ".")):
        load_lpips("vgg")
    (torch_home / "alexnet-owt-7be5be79.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MetricUnavailable, match="could not be read"):
        load_lpips("alex")


def test_inception_key_check_and_features(torch_home):
    net = FIDInceptionV3()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.zeros(1008, 2048)  # classifier head of the FID weights: ignored
    missing = dict(state)
    del missing["Mixed_6c.branch7x7_2.conv.weight"]
    torch.save(missing, torch_home / "pt_inception-2015-12-05-6726825d.pth")
    with pytest.raises(MetricUnavailable, match=r"lack key\(s\) Mixed_6c\.branch7x7_2\.conv\.weight"):
        load_fid_inception()
    bad = dict(state)
    bad["Conv2d_1a_3x3.conv.weight"] = torch.zeros(32, 3, 5, 5)
    torch.save(bad, torch_home / "pt_inception-2015-12-05-6726825d.pth")
    with pytest.raises(MetricUnavailable, match="wrong shapes: Conv2d_1a_3x3.conv.weight"):
        load_fid_inception()
    torch.save(state, torch_home / "pt_inception-2015-12-05-6726825d.pth")
    loaded = load_fid_inception()
    feats = loaded(torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


def test_missing_weights_leave_other_metrics_running(torch_home):
    scorer = Scorer(["l1", "psnr", "fid", "kid", "lpips_vgg"], "image")
    assert "pt_inception-2015-12-05-6726825d.pth" in scorer.unavailable["fid"]
    assert str(torch_home) in scorer.unavailable["kid"]
    assert "vgg16-397923af.pth" in scorer.unavailable["lpips_vgg"]
    a, b = _pair()
    out = scorer.aggregate([scorer.score(Sample("x", pred=a, target=b)), scorer.score(Sample("y", pred=b, target=a))])
    assert set(out["metrics"]) == {"l1", "psnr"}
    assert set(out["unavailable"]) == {"fid", "kid", "lpips_vgg"}


class TinyFeatures(torch.nn.Module):
    """A small fixed feature extractor: uint8 images -> 8 pooled conv features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)

    @torch.no_grad()
    def forward(self, x):
        return torch.relu(self.conv(x.float() / 255.0)).mean(dim=(2, 3))


def test_fid_and_kid_of_a_set_against_itself_near_zero(torch_home):
    scorer = Scorer(["fid", "kid"], "image")
    scorer.use_feature_network(TinyFeatures())
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(24)]
    same = scorer.aggregate([scorer.score(Sample(f"{i}", pred=im, target=im)) for i, im in enumerate(imgs)])
    assert abs(same["metrics"]["fid"]) < 1e-6
    darker = scorer.aggregate([scorer.score(Sample(f"{i}", pred=im // 2, target=im)) for i, im in enumerate(imgs)])
    assert darker["metrics"]["fid"] > 1e-3
    # KID's unbiased estimate over random subsets is only near 0 for identical sets
    assert abs(same["metrics"]["kid"]) < 1e-2 * darker["metrics"]["kid"]
    # deterministic: the same records give the same KID (seeded subsets)
    again = scorer.aggregate([scorer.score(Sample(f"{i}", pred=im // 2, target=im)) for i, im in enumerate(imgs)])
    assert again["metrics"] == darker["metrics"]
