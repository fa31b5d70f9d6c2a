"""EMA of the generator (train.ema_decay): the update rule, and bit-exact resume of both the EMA
and the online generator (6 steps == 3 + 3 resumed)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from torch import nn

from helpers.training import assert_same_weights, train
from p2p_dist.train.ema import EMA_FILE, GeneratorEMA


def test_update_is_the_moving_average_and_copies_batchnorm_buffers():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = GeneratorEMA(online, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online(torch.randn(2, 3, 8, 8))  # train-mode forward: running statistics move
    ema.update(online, skipped=torch.zeros(1))
    for name, p in online.named_parameters():
        expected = before[name] + 0.1 * (p.detach() - before[name])  # 0.9 * ema + 0.1 * online
        torch.testing.assert_close(ema.module.state_dict()[name], expected, rtol=0, atol=1e-6)
    for name, b in online.named_buffers():
        assert torch.equal(ema.module.state_dict()[name], b), name
    assert not any(p.requires_grad for p in ema.module.parameters())
    # a skipped step (its flag set on the device) leaves the EMA as it was, buffers included
    kept = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        online[0].weight.add_(1.0)
    online(torch.full((2, 3, 8, 8), float("nan")))  # the NaN batch's statistics reach the online G only
    ema.update(online, skipped=torch.ones(1))
    assert all(torch.equal(kept[k], v) for k, v in ema.module.state_dict().items())


def test_ema_and_raw_generators_resume_bit_exactly(scenes_data, tmp_path):
    """The default config (validation on): straight == stopped at 3 and resumed, both generators."""
    common = ["train.max_steps=6", "train.checkpoint_every=100", "data.num_workers=0", "train.ema_decay=0.5"]
    common += ["train.val_every=2"]
    train(scenes_data, tmp_path / "whole", *common)
    train(scenes_data, tmp_path / "split", *common, "train.stop_after=3")
    assert (tmp_path / "split" / "checkpoints" / "step-0000003" / EMA_FILE).is_file()
    proc = train(scenes_data, tmp_path / "split", *common)
    assert "resumed from" in proc.stderr and "EMA of G (decay 0.5)" in proc.stderr
    for name in ("generator.safetensors", "generator_raw.safetensors"):
        whole = load_file(str(tmp_path / "whole" / "final" / name))
        split = load_file(str(tmp_path / "split" / "final" / name))
        assert_same_weights(whole, split)
    ema = load_file(str(tmp_path / "whole" / "final" / "generator.safetensors"))
    raw = load_file(str(tmp_path / "whole" / "final" / "generator_raw.safetensors"))
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if k.endswith(".weight")), "EMA equals the online G"
    for k in ema:
        if "running_" in k or "num_batches" in k:
            assert torch.equal(ema[k], raw[k]), f"BatchNorm buffer {k} not copied from the online G"
    spec = json.loads((tmp_path / "whole" / "final" / "generator.json").read_text())
    assert spec["name"] == "unet_256"


def test_ema_off_exports_the_online_generator_only(scenes_data, tmp_path):
    train(scenes_data, tmp_path / "run", "train.max_steps=1", "data.num_workers=0")
    assert sorted(p.name for p in (tmp_path / "run" / "final").iterdir()) == ["generator.json", "generator.safetensors"]
