"""One translate_batch: p2p-translate and p2p-eval score --checkpoint give the same images; the
paper-mode seed rule; batched scoring equals one-at-a-time scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.eval_fixtures import write_scene_shards
from p2p_dist.inference import translate_batch
from p2p_dist.inference.cli import translate_main
from p2p_dist.models import GeneratorSpec, save_generator
from p2p_eval.cli import main as eval_main

SPEC = GeneratorSpec(name="unet_128", ngf=8, image_size=128, direction="BtoA")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("same")
    torch.manual_seed(0)
    G = SPEC.build()
    with torch.no_grad():
        G(torch.randn(4, 3, 128, 128))
    save_generator(G, SPEC, root / "ckpt")
    shards = write_scene_shards(root / "val", 5, size=128, seed=3)
    return root, shards, G


@pytest.mark.parametrize("mode", ["paper", "eval"])
def test_translate_and_score_give_the_same_images(setup, tmp_path, mode):
    root, shards, _ = setup
    extra = ["--mode", "eval"] if mode == "eval" else []
    assert (
        translate_main(
            [
                str(a)
                for a in (
                    "--checkpoint",
                    root / "ckpt",
                    "--shards",
                    shards,
                    "--output",
                    tmp_path / "tr",
                    "--seed",
                    "3",
                    "--batch-size",
                    "2",
                    *extra,
                )
            ]
        )
        == 0
    )
    score_extra = ["--eval-mode"] if mode == "eval" else []
    assert (
        eval_main(
            [
                str(a)
                for a in (
                    "score",
                    "--checkpoint",
                    root / "ckpt",
                    "--shards",
                    shards,
                    "--out",
                    tmp_path / "sc",
                    "--seed",
                    "3",
                    "--metrics",
                    "l1",
                    "--grid",
                    "5",
                    "--batch-size",
                    "2",
                    *score_extra,
                )
            ]
        )
        == 0
    )
    grid = json.loads((tmp_path / "sc" / "scores.json").read_text())["grid"]
    assert len(grid) == 5
    for entry in grid:
        scored = np.asarray(Image.open(tmp_path / "sc" / entry["pred"]).convert("RGB"))
        translated = np.asarray(Image.open(tmp_path / "tr" / f"{entry['key']}.png").convert("RGB"))
        np.testing.assert_array_equal(scored, translated)


def test_paper_mode_depends_on_key_and_seed_not_on_batching(setup):
    _, _, G = setup
    x = torch.rand(4, 3, 128, 128) * 2 - 1
    keys = ["a", "b", "c", "d"]
    whole = translate_batch(G, x, mode="paper", keys=keys, seed=1)
    halves = torch.cat(
        [
            translate_batch(G, x[:2], mode="paper", keys=keys[:2], seed=1),
            translate_batch(G, x[2:], mode="paper", keys=keys[2:], seed=1),
        ]
    )
    torch.testing.assert_close(whole, halves, rtol=0, atol=0)
    assert not torch.equal(whole, translate_batch(G, x, mode="paper", keys=keys, seed=2))
    assert not torch.equal(whole[:1], translate_batch(G, x[:1], mode="paper", keys=["z"], seed=1))


def test_translate_batch_leaves_the_model_as_it_was(setup):
    _, _, G = setup
    G.train()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    x = torch.rand(2, 3, 128, 128)
    rng = torch.get_rng_state()
    translate_batch(G, x, mode="paper")
    translate_batch(G, x, mode="eval")
    assert G.training and all(m.training for m in G.modules())
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_bf16_autocast_stays_close_to_fp32(setup):
    _, _, G = setup
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    y32 = translate_batch(G, x, mode="eval")
    y16 = translate_batch(G, x, mode="eval", precision="bf16")
    assert y16.dtype == torch.float32 and float((y16 - y32).abs().mean()) < 0.05


def test_batched_scoring_equals_scoring_one_at_a_time():
    from p2p_eval.scoring import Sample, Scorer

    rng = np.random.default_rng(0)
    img = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    samples = [Sample(f"s{i}", img(64, 64), img(64, 64)) for i in range(3)] + [Sample("odd", img(40, 72), img(40, 72))]
    scorer = Scorer(["l1", "psnr", "ssim", "color"], "image")
    batched = scorer.score_batch(samples)
    single = [scorer.score(s) for s in samples]
    assert [r["key"] for r in batched] == [s.key for s in samples]
    for a, b in zip(batched, single):
        for name in ("l1", "psnr", "ssim"):
            assert a[name] == pytest.approx(b[name], rel=1e-6)
        for c in a["hist_pred"]:
            np.testing.assert_array_equal(a["hist_pred"][c], b["hist_pred"][c])
