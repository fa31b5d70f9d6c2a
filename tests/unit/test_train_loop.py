"""The pix2pix step: what each phase updates, the frozen D, the ablation objectives, the LR rule."""

from __future__ import annotations

import collections
import copy

import pytest
import torch
import torch.nn.functional as F

from helpers.engines import LocalEngine
from p2p_dist.config import load_config
from p2p_dist.losses import GANLoss, l1_loss
from p2p_dist.models.statedict import unwrap_module
from p2p_dist.train.build import build_models, build_optimizer
from p2p_dist.train.engines.base import FrozenParameters, StepModels
from p2p_dist.train.loop import train_step
from p2p_dist.train.run import lr_factor

TINY = ["model.ngf=8", "model.ndf=8", "model.generator=unet_128", "data.crop_size=128", "data.load_size=128"]


def setup(*overrides):
    torch.manual_seed(0)
    cfg = load_config(
        None,
        [
            "model.ngf=8",
            "model.ndf=8",
            "model.generator=unet_128",
            "data.crop_size=128",
            "data.load_size=128",
            *overrides,
        ],
    )
    G, D = build_models(cfg)
    opts = {"G": build_optimizer(G, cfg)}
    if D is not None:
        opts["D"] = build_optimizer(D, cfg)
    engine = LocalEngine(opts, D)
    A = torch.rand(2, cfg.in_channels, 128, 128) * 2 - 1
    B = torch.rand(2, cfg.out_channels, 128, 128) * 2 - 1
    return cfg, G, D, engine, A, B


def snapshot(m):
    return [p.detach().clone() for p in m.parameters()]


def changed(before, m):
    return any(not torch.equal(b, p) for b, p in zip(before, m.parameters()))


def test_d_then_g_each_updates_its_own_network_and_d_is_frozen_for_g():
    cfg, G, D, engine, A, B = setup()
    g0, d0 = snapshot(G), snapshot(D)
    d_after_d_step = {}

    orig = engine.backward_step

    def spy(name, loss, skip=None):
        orig(name, loss, skip)
        if name == "D":
            assert not changed(g0, G), "the D step must not touch G (fake_B is detached)"
            d_after_d_step["p"] = snapshot(D)

    engine.backward_step = spy
    losses = train_step(engine, StepModels(G, D, FrozenParameters(D)), cfg.loss, A, B).losses
    assert engine.calls == ["D", "G"]
    assert set(losses) == {"D_fake", "D_real", "G_GAN", "G_L1"}
    assert changed(g0, G) and changed(d0, D)
    assert not changed(d_after_d_step["p"], D), "the G step must not update D"
    assert all(g is None for g in engine.d_grads_in_g_step), "no D gradient in the G step"
    assert all(p.requires_grad for p in D.parameters()), "D is frozen without toggling requires_grad"


def test_step_losses_match_a_hand_computation():
    """L_D = 0.5 * (BCE(D(A, G(A)), 0) + BCE(D(A, B), 1)) before D's update, and
    L_G = BCE(D'(A, G(A)), 1) + 100 * mean|B - G(A)| through the updated, frozen D'."""
    cfg, G, D, engine, A, B = setup()
    assert cfg.loss.lambda_l1 == 100
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
    seen = {}
    orig = engine.backward_step

    def spy(name, loss, skip=None):
        seen[name] = loss.detach().clone()
        if name == "G":
            seen["D_updated"] = copy.deepcopy(D)
        orig(name, loss, skip)

    engine.backward_step = spy
    torch.manual_seed(5)
    losses = train_step(engine, StepModels(G, D, FrozenParameters(D)), cfg.loss, A, B).losses
    torch.manual_seed(5)  # the same dropout masks: the step draws nothing before G(A)
    with torch.no_grad():
        fake = G_ref(A)
        l1 = 100 * (B - fake).abs().mean()
        bce_fake = F.softplus(D_ref(torch.cat([A, fake], 1))).mean()  # BCE with logits, target 0
        bce_real = F.softplus(-D_ref(torch.cat([A, B], 1))).mean()  # target 1
        g_gan = F.softplus(-seen["D_updated"](torch.cat([A, fake], 1))).mean()
    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["G_L1"], l1, **close)
    torch.testing.assert_close(losses["D_fake"], bce_fake, **close)
    torch.testing.assert_close(losses["D_real"], bce_real, **close)
    torch.testing.assert_close(seen["D"], 0.5 * (bce_fake + bce_real), **close)  # the halved D loss
    torch.testing.assert_close(losses["G_GAN"], g_gan, **close)
    torch.testing.assert_close(seen["G"], g_gan + l1, **close)


def test_the_step_equals_the_reference_step_bit_for_bit():
    """The real engine's step (D frozen by `FrozenParameters`, updates masked on the device) equals the
    reference implementation's optimize_parameters (D frozen by toggling requires_grad, plain
    optimizer steps): G, D, BatchNorm buffers and Adam state after 3 steps, with dropout."""
    from p2p_dist.train.engines import build_engine

    cfg = load_config(None, [*TINY, "train.memory_format=contiguous"])
    assert cfg.model.dropout and cfg.model.norm == "batch"
    engine = build_engine(cfg)
    torch.manual_seed(0)
    models = engine.prepare(*build_models(cfg))
    G, D = (copy.deepcopy(unwrap_module(m)) for m in (models.G, models.D))  # the speed options applied alike
    opt_G, opt_D = build_optimizer(G, cfg), build_optimizer(D, cfg)
    gan = GANLoss(cfg.loss.gan)
    G.train(), D.train()
    batches = [(torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1) for _ in range(3)]
    torch.manual_seed(1)
    for A, B in batches:
        train_step(engine, models, cfg.loss, A, B)
    torch.manual_seed(1)  # the same dropout masks
    for A, B in batches:
        fake = G(A)
        D.requires_grad_(True)
        loss_D = 0.5 * (gan(D(torch.cat([A, fake.detach()], 1)), False) + gan(D(torch.cat([A, B], 1)), True))
        opt_D.zero_grad()
        loss_D.backward()
        opt_D.step()
        D.requires_grad_(False)
        loss_G = gan(D(torch.cat([A, fake], 1)), True) + l1_loss(fake, B) * cfg.loss.lambda_l1
        opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()

    def everything(G, D, opts):
        tensors = [t for m in (G, D) for t in [*m.parameters(), *m.buffers()]]
        return tensors + [v for opt in opts for st in opt.state.values() for v in st.values()]

    ours = everything(*(unwrap_module(m) for m in (models.G, models.D)), [engine._inner("G"), engine._inner("D")])
    reference = everything(G, D, [opt_G, opt_D])
    assert len(ours) == len(reference) > 100
    assert all(torch.equal(a, b) for a, b in zip(ours, reference))


def step_casts(prof) -> collections.Counter:
    """The casts of tensors in a profiled step, by (batch-sized activation or not): aten::_to_copy
    with a shaped input (the CPU fused Adam's 0-dim scalars aside, absent on CUDA)."""
    casts = collections.Counter()
    for ev in prof.events():
        if ev.name == "aten::_to_copy" and ev.input_shapes and ev.input_shapes[0]:
            casts["activations" if ev.input_shapes[0][0] == 2 else "weights"] += 1
    return casts


def test_a_bf16_step_casts_each_weight_once_per_phase_and_stays_near_the_float32_step():
    """train.mixed_precision=bf16 on the DDP engine (CPU autocast; unet_128 + patch70, ngf/ndf 8,
    batch 2), the second step profiled: 66 casts, 82 when each Accelerate-wrapped forward was its own
    autocast region with float32 outputs. What remains, and why: 51 are float32 master weights cast
    to bf16 and their gradients cast back: G's 15 tensors once each way, D's 7 once each way in the
    D step (one region for its two calls) and once more for the frozen D of the G step (D has been
    updated in between); 15 are activations: A for G's first conv and once for D's three pairs, B
    for the real pair, D's three outputs up to float32 for the losses and their gradients back, G's
    output up for L1 and its gradient back, and 4 inside CPU BatchNorm's backward. G's output
    reaches D's pairs in bf16. The losses are finite and within 2% of the float32 step's."""
    from p2p_dist.train.engines import build_engine

    losses, casts = {}, {}
    for precision in ("no", "bf16"):
        cfg = load_config(None, [*TINY, f"train.mixed_precision='{precision}'"])
        engine = build_engine(cfg)
        torch.manual_seed(0)
        models = engine.prepare(*build_models(cfg))
        A, B = (torch.rand(2, 3, 128, 128) * 2 - 1 for _ in "AB")
        train_step(engine, models, cfg.loss, A, B)  # creates Adam's state
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            result = train_step(engine, models, cfg.loss, A, B)
        losses[precision], casts[precision] = result.losses, step_casts(prof)
    assert casts["no"] == {} and casts["bf16"] == {"weights": 51, "activations": 15}, casts
    for name, value in losses["bf16"].items():
        assert torch.isfinite(value) and abs(value - losses["no"][name]) <= 0.02 * abs(losses["no"][name]), name


def test_l1_only_unconditional_and_gan_only_objectives():
    cfg, G, D, engine, A, B = setup("loss.gan=none")
    assert D is None
    assert set(train_step(engine, StepModels(G, None, None), cfg.loss, A, B).losses) == {"G_L1"}
    cfg, G, D, engine, A, B = setup("loss.conditional=false", "loss.lambda_l1=0")
    assert set(train_step(engine, StepModels(G, D, FrozenParameters(D)), cfg.loss, A, B).losses) == {
        "D_fake",
        "D_real",
        "G_GAN",
    }


def test_unconditional_discriminator_sees_only_the_image():
    cfg, G, D, *_ = setup("loss.conditional=false")
    first = next(m for m in D.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 3
    cfg, G, D, *_ = setup()
    first = next(m for m in D.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 6
    cfg, G, D, *_ = setup("data.task=colorization")
    first = next(m for m in D.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 3  # L (1) + ab (2)


def test_nonfinite_loss_skips_the_step():
    cfg, G, D, engine, A, B = setup()
    g0, d0, buffers = snapshot(G), snapshot(D), [b.clone() for m in (G, D) for b in m.buffers()]
    A[0, 0, 0, 0] = float("nan")
    assert train_step(engine, StepModels(G, D, FrozenParameters(D)), cfg.loss, A, B).skipped.item() == 1
    assert engine.calls == [] and not changed(g0, G) and not changed(d0, D)
    assert all(torch.equal(a, b) for a, b in zip(buffers, (b for m in (G, D) for b in m.buffers())))  # BN statistics


def test_nonfinite_l1_skips_the_step_before_d_is_updated():
    """D's loss finite, the L1 term not (it overflows float32): the step must not half-happen."""
    cfg, G, D, engine, A, B = setup("loss.lambda_l1=1e39")
    g0, d0 = snapshot(G), snapshot(D)
    assert train_step(engine, StepModels(G, D, FrozenParameters(D)), cfg.loss, A, B).skipped.item() == 1
    assert engine.calls == [] and not changed(g0, G) and not changed(d0, D)


def test_gan_losses():
    logits = torch.tensor([0.0, 2.0])
    assert torch.isclose(GANLoss("vanilla")(logits, True), torch.nn.functional.softplus(-logits).mean())
    assert torch.isclose(GANLoss("lsgan")(logits, False), (logits**2).mean())
    with pytest.raises(ValueError):
        GANLoss("wgan")


def test_linear_decay_matches_the_reference_shape():
    assert lr_factor(0, 100, "linear_decay", 0.5) == 1.0
    assert lr_factor(49, 100, "linear_decay", 0.5) == 1.0
    assert lr_factor(50, 100, "linear_decay", 0.5) == 1.0
    assert lr_factor(75, 100, "linear_decay", 0.5) == pytest.approx(0.5)
    assert lr_factor(99, 100, "linear_decay", 0.5) == pytest.approx(0.02)
    assert lr_factor(99, 100, "constant", 0.5) == 1.0


# --- gradient accumulation (train.grad_accum) -----------------------------------------------------


def accumulation_run(micro_batches, steps=2):
    """The real engine (Accelerate, one process): `steps` steps on batches of 4, in `micro_batches`
    slices; returns G's and D's gradients as each optimizer saw them, and the final weights. In
    float64: the conv biases before instance norm have a gradient of pure rounding noise, which Adam
    would scale up to +-lr in float32 (its eps is 1e-8)."""
    from p2p_dist.train.engines import build_engine

    cfg = load_config(
        None,
        [
            *("model.ngf=8", "model.ndf=8", "model.generator=unet_128", "data.crop_size=128"),
            *("data.load_size=128", "model.norm=instance", "model.dropout=false"),
            *("train.memory_format=contiguous", f"train.grad_accum={micro_batches}"),
        ],
    )
    engine = build_engine(cfg)
    torch.manual_seed(0)
    models = engine.prepare(*(m.double() for m in build_models(cfg)))
    grads = {"G": [], "D": []}
    for name in grads:
        engine._inner(name).register_step_pre_hook(
            lambda opt, *_, name=name: grads[name].append(
                [p.grad.clone() for g in opt.param_groups for p in g["params"]]
            )
        )
    data = torch.Generator().manual_seed(3)
    for _ in range(steps):
        A, B = (torch.rand(4, 3, 128, 128, generator=data, dtype=torch.float64) * 2 - 1 for _ in "AB")
        train_step(engine, models, cfg.loss, A, B, micro_batches=micro_batches)
    weights = [p.detach().clone() for m in (models.G, models.D) for p in unwrap_module(m).parameters()]
    return grads, weights


def test_grad_accum_is_the_math_of_a_bigger_batch_with_instance_norm():
    """batch 4 in 2 micro-batches of 2 == batch 4 in one, on D's and G's gradients and weights."""
    (grads2, weights2), (grads1, weights1) = accumulation_run(2), accumulation_run(1)
    for name in ("D", "G"):
        assert len(grads2[name]) == len(grads1[name]) == 2  # one optimizer step per train_step
        for step2, step1 in zip(grads2[name], grads1[name]):
            a, b = flat(step2), flat(step1)
            assert (a - b).norm() <= 1e-6 * b.norm(), f"{name}'s gradient differs beyond float rounding"
    a, b = flat(weights2), flat(weights1)
    assert (a - b).norm() <= 1e-6 * b.norm() and (a - b).abs().max() < 1e-6, "the weights differ"


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def test_grad_accum_skips_a_step_with_a_non_finite_micro_batch_and_drops_its_gradients():
    cfg, G, D, engine, A, B = setup()
    A, B = torch.cat([A, A]), torch.cat([B, B])
    A[3, 0, 0, 0] = float("nan")  # in the second of two micro-batches: the first one's D backward ran
    g0, d0 = snapshot(G), snapshot(D)
    assert train_step(engine, StepModels(G, D, FrozenParameters(D)), cfg.loss, A, B, micro_batches=2).skipped.item()
    assert engine.calls == [] and not changed(g0, G) and not changed(d0, D)
    assert all(p.grad is None for p in D.parameters()), "the inner micro-batch's D gradients must go"
    with pytest.raises(ValueError, match="does not split into 3 equal micro-batches"):
        train_step(engine, StepModels(G, D, FrozenParameters(D)), cfg.loss, A, B, micro_batches=3)


def test_epochs_count_optimizer_steps_of_grad_accum_micro_batches():
    from p2p_dist.train.run import resolve_max_steps

    cfg = load_config(None, ["train.epochs=1", "data.epoch_samples=16", "train.batch_size=2", "train.grad_accum=2"])
    assert resolve_max_steps(cfg, world_size=2) == 2  # 16 samples / (2 per micro-batch x 2 x 2 processes)
