"""Health alarms: each condition on its own (unit), once per episode, state across a resume; a
real run whose generator cannot learn (all weights zero: constant outputs, D unopposed) trips
the collapse alarm, and a short normal run with the default thresholds trips none."""

from __future__ import annotations

import json

import torch
from torch import nn

from helpers.training import train
from p2p_dist.config import HealthConfig
from p2p_dist.train.health import HealthMonitor


class OneRank:
    """The engine's mean over ranks with one rank: the values as a list of floats (as Engine returns them)."""

    def mean_over_ranks(self, values):
        return values.tolist()


def monitor(**kw) -> HealthMonitor:
    G = nn.Conv2d(3, 3, 1)
    return HealthMonitor(HealthConfig(warmup=0, **kw), G, None, torch.device("cpu")), G


def test_d_wins_fires_once_per_episode_and_rearms():
    h, _ = monitor(d_loss_below=0.05, d_window=3)
    kinds = []
    for step, d in enumerate([0.5, 0.01, 0.01, 0.01, 0.01, 0.5, 0.01, 0.01, 0.01], start=1):
        kinds.append([a.kind for a in h.check(step, {"D_real": d, "D_fake": d}, OneRank())])
    assert kinds == [[], [], [], ["d_wins"], [], [], [], [], ["d_wins"]]
    assert h.state.counts == {"d_wins": 2}


def test_g_gan_climb_and_no_alarm_on_a_flat_loss():
    h, _ = monitor(g_climb=1.0, g_window=10)
    fired = [a.kind for s in range(1, 12) for a in h.check(s, {"G_GAN": 0.7 + 0.2 * s}, OneRank())]
    assert fired == ["g_climbs"]
    h, _ = monitor(g_climb=1.0, g_window=10)
    assert not [a for s in range(1, 30) for a in h.check(s, {"G_GAN": 0.7 + 0.01 * (s % 3)}, OneRank())]


def test_collapse_and_gradient_explosion_from_the_hooks():
    h, G = monitor(collapse_std=0.01, grad_factor=10.0)
    torch.manual_seed(0)
    for step in range(1, 6):  # varied outputs, small gradients
        G(torch.randn(4, 3, 8, 8)).pow(2).mean().backward()
        G.zero_grad()
        assert h.check(step, {}, OneRank()) == []
    G(torch.randn(4, 3, 8, 8)).mul(1e4).pow(2).mean().backward()  # a huge gradient
    assert [a.kind for a in h.check(6, {}, OneRank())] == ["grad_explodes_G"]
    with torch.no_grad():
        G.weight.zero_()
        G.bias.fill_(0.3)
    G(torch.randn(4, 3, 8, 8)).sum().backward()  # every output the same: collapse
    assert "collapse" in [a.kind for a in h.check(7, {}, OneRank())]
    saved = h.state_dict()
    h2, _ = monitor()
    h2.load_state_dict(json.loads(json.dumps(saved)))
    assert h2.state.counts == h.state.counts and h2.state.active == h.state.active


def alarms(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"alarm"' in x]


def test_a_generator_that_cannot_learn_trips_the_collapse_alarm(scenes_data, tmp_path):
    proc = train(
        scenes_data,
        tmp_path / "dead",
        "train.max_steps=60",
        "train.log_every=10",
        "model.init_gain=0",
        "data.num_workers=0",
        "train.checkpoint_every=0",
    )
    found = alarms(tmp_path / "dead")
    assert [a["alarm"] for a in found] == ["collapse"] and found[0]["step"] == 50  # the first log after warmup
    assert "warning: step 50: outputs collapse" in proc.stderr.replace("\n", "")
    assert "collapse x1" in proc.stderr


def test_a_normal_short_run_trips_no_alarm(scenes_data, tmp_path):
    proc = train(
        scenes_data,
        tmp_path / "ok",
        "train.max_steps=80",
        "train.log_every=10",
        "data.num_workers=0",
        "train.checkpoint_every=0",
    )
    assert alarms(tmp_path / "ok") == [] and "warning:" not in proc.stderr
