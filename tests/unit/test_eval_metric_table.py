"""The metric table (p2p_dist/metric_table.py) against what the scorer really emits: every figure
of every mode on a small real input is registered (else the reports would leave it out), every
registration is emitted by some mode, and the comparison report shows each one."""

import numpy as np
import pytest
import torch

from helpers.eval_fixtures import scene_samples
from p2p_dist.data.scenes import CLASSES, PALETTE
from p2p_dist.metric_table import GROUPS, METRICS, VALIDATION, fmt
from p2p_eval.fcn import FCN8s, FCNEvaluator
from p2p_eval.labels import ClassInfo
from p2p_eval.lpips import LPIPS
from p2p_eval.report import Variant, markdown, report_dict
from p2p_eval.scoring import Sample, Scorer
from p2p_eval.weights import checkpoints_dir

SIZE = 176  # MS-SSIM needs at least 161 px


class TinyFeatures(torch.nn.Module):
    """Stands in for Inception: 8 pooled features of a fixed random convolution."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(x.float() / 255.0).mean(dim=(2, 3))


@pytest.fixture
def scorers(tmp_path, monkeypatch):
    """A scorer per mode: class scores in the modes that have them, every group in image mode
    (the image metrics do not depend on the mode). Each network is real, with random weights:
    the figures' keys are under test, not their values."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints_dir().mkdir(parents=True)
    torch.manual_seed(0)
    classes = ClassInfo(list(CLASSES), [tuple(c) for c in PALETTE])
    fcn = FCNEvaluator(FCN8s(len(CLASSES), width=4), classes, (64, 64))
    lpips = {"lpips_alex": LPIPS("alex"), "lpips_vgg": LPIPS("vgg")}
    out = {}
    for mode in ("photo", "labels", "image"):
        if mode != "image":
            out[mode] = Scorer(["classes"], mode, fcn=fcn if mode == "photo" else None, classes=classes)
            continue
        scorer = Scorer(GROUPS, mode)
        for name, net in lpips.items():  # no weight files in this cache: the networks come in here
            scorer.nets[name] = net
            scorer.unavailable.pop(name)
        scorer.use_feature_network(TinyFeatures())
        out[mode] = scorer
    return out


def test_every_emitted_figure_is_registered_and_every_registration_emitted(scorers, tmp_path):
    data = scene_samples(2, SIZE, split="val")
    pairs = {
        "photo": [Sample(s["key"], pred=s["a"][::-1].copy(), target=s["a"], label=s["label"]) for s in data],
        "labels": [Sample(s["key"], pred=s["b"], target=s["b"], label=s["label"]) for s in data],
        "image": [Sample(s["key"], pred=s["b"], target=s["a"]) for s in data],
    }
    emitted = set()
    for mode, scorer in scorers.items():
        assert not scorer.unavailable, scorer.unavailable
        results = scorer.aggregate(scorer.score_batch(pairs[mode]))
        assert not results["unavailable"], results["unavailable"]
        keys = set(results["metrics"]) | (set(results.get("real_photos", {})) - {"per_class_iou"})
        assert keys <= set(METRICS), f"{mode}: not in p2p_dist/metric_table.py: {sorted(keys - set(METRICS))}"
        assert {METRICS[k].group for k in keys} <= set(scorer.metrics)
        emitted |= keys
        # the comparison report shows every figure, under its name in the table
        variant = Variant(mode, path=tmp_path, data={"results": results})
        md = markdown([variant], [])
        assert all(f"| {METRICS[k].title} |" in md for k in results["metrics"]), md
        assert set(report_dict([variant])["higher_is_better"]) == set(results["metrics"])
    assert emitted == set(METRICS), f"registered but never emitted: {sorted(set(METRICS) - emitted)}"


def test_validation_keys_directions_and_formats():
    assert VALIDATION["val_L1"].key == "l1" and VALIDATION["val_L1"].higher is False
    assert VALIDATION["val_PSNR"].higher is True and VALIDATION["val_FID"].higher is False
    assert {m.group for m in VALIDATION.values()} <= set(GROUPS)
    assert fmt("psnr", 31.234) == "31.23" and fmt("kid", float("nan")) == "n/a" and fmt("l1", None) == "n/a"
    assert METRICS["kid_std"].title == "KID std. over subsets" and METRICS["l1"].title == "L1 ↓"


def test_rgb_metrics_see_the_named_bands_of_16_bit_multichannel_data(scorers):
    """Every figure the table marks `rgb`, of 16-bit four-band images (B, G, R, NIR; x * 257: the
    8-bit values at 16 bits) with --rgb-bands 3,2,1, equals the figure of the 8-bit RGB images; without
    the bands each of them says that it does not apply, and L1/PSNR/SSIM are still computed."""
    data = scene_samples(2, SIZE, split="val")

    def wide(img: np.ndarray, seed: int) -> np.ndarray:
        nir = np.random.default_rng(seed).integers(0, 256, img.shape[:2])[:, :, None]
        return np.concatenate([img[:, :, ::-1], nir], axis=2).astype(np.uint16) * 257

    pairs = {
        "photo": [Sample(s["key"], pred=s["a"][::-1].copy(), target=s["a"], label=s["label"]) for s in data],
        "labels": [Sample(s["key"], pred=s["b"], target=s["b"], label=s["label"]) for s in data],
        "image": [Sample(s["key"], pred=s["b"], target=s["a"]) for s in data],
    }
    for mode, scorer in scorers.items():
        eight = scorer.aggregate(scorer.score_batch(pairs[mode]))["metrics"]
        bands = [Sample(s.key, pred=wide(s.pred, 1), target=wide(s.target, 2), label=s.label) for s in pairs[mode]]
        scorer.rgb_bands = (3, 2, 1)
        named = scorer.aggregate(scorer.score_batch(bands))
        assert not named["unavailable"], named["unavailable"]
        rgb = {k for k in eight if METRICS[k].rgb}
        assert rgb and {k: named["metrics"][k] for k in rgb} == {k: eight[k] for k in rgb}
        scorer.rgb_bands = None
        plain = scorer.aggregate(scorer.score_batch(bands))
        assert {METRICS[k].group for k in rgb} == set(plain["unavailable"])
        assert all("does not apply" in r and "16-bit, 4 channels" in r for r in plain["unavailable"].values())
        assert set(plain["metrics"]) == set(eight) - rgb
