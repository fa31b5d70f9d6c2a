"""Health alarms: each condition on its own (unit), once per episode, state across a resume; real
runs: a discriminator that overpowers its generator trips `d_wins` and `g_climbs`, a generator
that cannot learn (all weights zero: constant outputs) trips `collapse`, and the demo recipe
trips none, with the same thresholds.

The real runs use the default thresholds (`d_loss_below`, `g_climb`, `collapse_std`,
`grad_factor`) with the windows shortened (SHORT): the defaults' 200-step windows after a 50-step
warmup need a run of 250+ steps, a minute or more per run on a loaded 2-core machine. The full
demo (`make demo`, 300 steps; and 2000 steps of recipes/demo.yaml) trips no alarm with the
defaults either: that is checked by running it, not here."""

from __future__ import annotations

import json
import re

import torch
from torch import nn

from helpers.training import train
from p2p_dist.config import HealthConfig, load_config
from p2p_dist.train.engines.base import Engine
from p2p_dist.train.health import HealthMonitor


class OneRank:
    """The engine's mean over ranks with one rank: the values as a list of floats (as Engine returns them)."""

    def mean_over_ranks(self, values):
        return values.tolist()


def monitor(**kw) -> HealthMonitor:
    G = nn.Conv2d(3, 3, 1)
    return HealthMonitor(HealthConfig(warmup=0, **kw), G, torch.device("cpu")), G


def backward_step(h: HealthMonitor, G: nn.Module, loss: torch.Tensor) -> None:
    """What an engine's backward_step does for the monitor: backward, G's gradient norm, zero_grad."""
    engine = Engine(load_config(None, []))
    engine.on_grad_norm = h.add_grad_norm
    loss.backward()
    engine.report_grad_norm("G", G.parameters())
    G.zero_grad()


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
    # logs sparser than the window: the trend is fitted over the last 5 logs (40 steps: +2.0)
    h, _ = monitor(g_climb=1.0, g_window=10)
    fired = [(s, a.kind) for s in range(10, 100, 10) for a in h.check(s, {"G_GAN": 0.7 + 0.05 * s}, OneRank())]
    assert fired == [(50, "g_climbs")]


def test_collapse_and_gradient_explosion_from_the_engines_norm_and_the_forward_hook():
    h, G = monitor(collapse_std=0.01, grad_factor=10.0)
    torch.manual_seed(0)
    for step in range(1, 6):  # varied outputs, small gradients
        backward_step(h, G, G(torch.randn(4, 3, 8, 8)).pow(2).mean())
        assert h.check(step, {}, OneRank()) == []
    backward_step(h, G, G(torch.randn(4, 3, 8, 8)).mul(1e4).pow(2).mean())  # a huge gradient
    assert [a.kind for a in h.check(6, {}, OneRank())] == ["grad_explodes_G"]
    backward_step(h, G, G(torch.randn(4, 3, 8, 8)).pow(2).mean())  # calm again: the episode ends
    assert h.check(7, {}, OneRank()) == [] and h.state.active == []
    backward_step(h, G, G(torch.randn(4, 3, 8, 8)).sum() * float("nan"))  # a non-finite gradient
    alarm = h.check(8, {}, OneRank())
    assert [a.kind for a in alarm] == ["grad_explodes_G"] and "non-finite" in alarm[0].message
    with torch.no_grad():
        G.weight.zero_()
        G.bias.fill_(0.3)
    backward_step(h, G, G(torch.randn(4, 3, 8, 8)).sum())  # every output the same: collapse
    assert "collapse" in [a.kind for a in h.check(9, {}, OneRank())]
    saved = h.state_dict()
    h2, _ = monitor()
    h2.load_state_dict(json.loads(json.dumps(saved)))
    assert h2.state.counts == h.state.counts and h2.state.active == h.state.active


def summary(stderr: str) -> str:
    """The console text with the summary table's borders and line breaks gone (any width)."""
    return re.sub(r"[\s│┃]+", " ", stderr)


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


# the default thresholds, the windows shortened to fit a 100-step run (see the docstring)
SHORT = [
    "train.health.warmup=20",
    "train.health.d_window=30",
    "train.health.g_window=80",
    "train.log_every=5",
    "train.checkpoint_every=0",
    "train.sample_every=0",
    "data.num_workers=0",
]


def test_a_discriminator_that_overpowers_its_generator_trips_d_wins_and_g_climbs(scenes_data, tmp_path):
    # G of one filter per layer (its output colours lie on one curve through RGB: it cannot paint
    # a scene) against a D of 16; L1 weight 1 so that G plays the GAN game: D soon tells every
    # fake from the real images, and G's GAN loss climbs while G fails to catch up
    proc = train(
        scenes_data,
        tmp_path / "run",
        "model.generator=resnet_9blocks",
        "model.ngf=1",
        "model.ndf=16",
        "data.load_size=36",
        "data.crop_size=32",
        "loss.lambda_l1=1",
        "optim.schedule=constant",
        "train.max_steps=120",
        *SHORT,
    )
    found = alarms(tmp_path / "run")
    assert [a["alarm"] for a in found] == ["d_wins", "g_climbs"], found
    d_wins, g_climbs = found
    assert "D has won" in d_wins["message"] and "under 0.05" in d_wins["message"]
    assert "G's GAN loss climbs steadily" in g_climbs["message"]
    stderr = proc.stderr.replace("\n", "")
    assert f"warning: step {d_wins['step']}: D has won" in stderr
    assert f"warning: step {g_climbs['step']}: G's GAN loss climbs" in stderr
    assert "health alarms d_wins x1, g_climbs x1" in summary(proc.stderr)


def test_the_demo_recipe_trips_no_alarm(scenes_data, tmp_path):
    # recipes/demo.yaml as `make demo` runs it (2 processes of batch 1), 100 of its 300 steps,
    # with the thresholds that the overpowered-D run above trips
    proc = train(
        scenes_data,
        tmp_path / "demo",
        "train.max_steps=100",
        *SHORT,
        "--config",
        "recipes/demo.yaml",
        tiny=False,
        nproc=2,
    )
    assert "unet_128 + patch70, 2 process(es)" in proc.stderr
    assert alarms(tmp_path / "demo") == [] and "warning:" not in proc.stderr
    assert "health alarms none" in summary(proc.stderr)
