"""One pix2pix training step, as in the paper (Isola et al. 2017, section 3.3 and the reference code).

    fake_B = G(A)
    D step:  L_D = 1/2 [ GAN(D(A, B), real) + GAN(D(A, fake_B.detach()), fake) ]
    G step:  L_G = GAN(D(A, fake_B), real) + lambda * |B - fake_B|_1      (D frozen)

On CPU the step equals the reference's (tests/unit/test_train_loop.py, bit for bit). The frozen D,
gradient accumulation (`train.grad_accum`) and the masking of non-finite steps are described in
docs/architecture.md (`loop.py`). `loss.gan=none` drops D (the paper's "L1" row),
`loss.conditional=false` shows D only the image (the "GAN" rows), `loss.lambda_l1=0` drops the L1
term ("cGAN"), `loss.gan=lsgan` uses least squares. A non-finite G loss alone leaves D's update in
place (the following steps are then skipped until `train.max_nonfinite` stops the run); a skipped
step puts G's and D's buffers (BatchNorm statistics) back as they were before it. The step
returns its losses and the agreed flag, on the device; the run reads the flag a step late (run.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from p2p_dist.config import LossConfig
from p2p_dist.losses import GANLoss, l1_loss
from p2p_dist.train.engines.base import Engine, StepModels, nonfinite_flag


@dataclass
class StepResult:
    losses: dict[str, torch.Tensor]  # detached, on the device: each loss's mean over the micro-batches
    skipped: torch.Tensor  # (1,) 0/1 on the device, the same on every rank: a loss was non-finite, updates masked


def d_input(loss: LossConfig, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The conditional D sees the (input, image) pair stacked on channels; the unconditional one the image."""
    return torch.cat([condition, image], dim=1) if loss.conditional else image


def _like(x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """`x` in the dtype of G's output: under bf16 autocast D's pairs are built in bf16, as D's first
    conv would cast them (so G's output needs no float32 round trip, and a compiled D sees one dtype)."""
    return x if x.dtype == fake.dtype else x.to(fake.dtype)


def train_step(
    engine: Engine,
    models: StepModels,
    loss_cfg: LossConfig,
    real_A: torch.Tensor,
    real_B: torch.Tensor,
    *,
    micro_batches: int = 1,
) -> StepResult:
    """One step of D then G over the batch, in `micro_batches` equal slices (train.grad_accum).
    Mixed precision: the forwards of each phase run in one `engine.autocast()` region, the losses
    are taken in float32 (`p2p_dist/losses.py` casts up), the backward passes outside the regions. A
    skipped step leaves the models' buffers (BatchNorm statistics) as they were (`KeptBuffers`)."""
    G, D = models.G, models.D
    gan = GANLoss(loss_cfg.gan) if loss_cfg.gan != "none" else None
    k = micro_batches
    if real_A.shape[0] % k:
        raise ValueError(f"a batch of {real_A.shape[0]} does not split into {k} equal micro-batches")
    pieces = list(zip(real_A.chunk(k), real_B.chunk(k))) if k > 1 else [(real_A, real_B)]
    fakes = []  # per micro-batch: D's condition and G's output with its graph (the G step reuses them)
    buffers_before = models.buffers.save()
    losses: dict[str, torch.Tensor] = {}  # each loss's mean over the micro-batches: the batch's loss

    # 1. D step on detached fake pairs and real pairs, loss halved; gradients summed over the
    #    micro-batches, the inner ones without all-reduce (their forwards too: DDP arms it there)
    loss_D = None
    for i, (A, B) in enumerate(pieces):
        with engine.no_sync(i < k - 1):
            with engine.autocast():  # one region: D's weights cast once for both its calls
                fake = G(A)
                if loss_cfg.lambda_l1 > 0:  # needs no D: checked with D's loss
                    _add(losses, "G_L1", _per_micro_batch(l1_loss(fake, B) * loss_cfg.lambda_l1, k))
                if gan is not None:
                    condition = _like(A, fake) if loss_cfg.conditional else A
                    fakes.append((condition, fake))
                    d_fake = gan(D(d_input(loss_cfg, condition, fake.detach())), target_is_real=False)
                    d_real = gan(D(d_input(loss_cfg, condition, _like(B, fake))), target_is_real=True)
                    d_fake, d_real = _per_micro_batch(d_fake, k), _per_micro_batch(d_real, k)
                    _add(losses, "D_fake", d_fake)
                    _add(losses, "D_real", d_real)
                    loss_D = 0.5 * (d_fake + d_real)
            if gan is not None and i < k - 1:
                engine.backward("D", loss_D)
    skipped = engine.max_over_ranks(nonfinite_flag(*losses.values()))  # on the device: no host sync
    if loss_D is not None:
        engine.backward_step("D", loss_D, skip=skipped)  # the last micro-batch: all-reduce, then D's update

    # 2. G step through D with D's parameters frozen: fool D, and stay near the target in L1. One
    #    backward pass over the micro-batches' summed loss (G's forwards ran above; their graphs are held).
    if gan is not None:
        with engine.autocast():
            for condition, fake in fakes:
                d_out = models.D_frozen(d_input(loss_cfg, condition, fake))
                _add(losses, "G_GAN", _per_micro_batch(gan(d_out, target_is_real=True), k))
        skipped = torch.maximum(skipped, engine.max_over_ranks(nonfinite_flag(losses["G_GAN"])))
    terms = [losses[name] for name in ("G_GAN", "G_L1") if name in losses]
    engine.backward_step("G", terms[0] + terms[1] if len(terms) == 2 else terms[0], skip=skipped)
    models.buffers.restore_if(skipped, buffers_before)  # the training forwards moved them (G, D, frozen D)
    return StepResult({name: v.detach() for name, v in losses.items()}, skipped)


def _per_micro_batch(loss: torch.Tensor, k: int) -> torch.Tensor:
    return loss / k if k > 1 else loss  # no op (forward and backward) for the usual one micro-batch


def _add(losses: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
    losses[name] = value if name not in losses else losses[name] + value
