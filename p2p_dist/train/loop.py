"""One pix2pix training step, as in the paper (Isola et al. 2017, section 3.3 and the reference code).

    fake_B = G(A)
    D step:  L_D = 1/2 [ GAN(D(A, B), real) + GAN(D(A, fake_B.detach()), fake) ]
    G step:  L_G = GAN(D(A, fake_B), real) + lambda * |B - fake_B|_1      (D frozen)

`loss.gan=none` drops D (the paper's "L1" row), `loss.conditional=false` shows D only the image
(the "GAN" rows), `loss.lambda_l1=0` drops the L1 term ("cGAN"), `loss.gan=lsgan` uses least
squares. The step returns the detached losses, or None when a non-finite loss made every rank skip
it together. G's output (through the L1 term) and the D loss are checked before either network
changes, so such a step leaves both untouched; only a GAN term that turns non-finite through D's
fresh update can come after D's update (D is then broken, and the following steps are skipped until
`train.max_nonfinite` stops the run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from p2p_dist.config import LossConfig
from p2p_dist.losses import GANLoss, l1_loss
from p2p_dist.train.engine import Engine


@dataclass
class StepModels:
    G: nn.Module  # as prepared by the engine (DDP / DeepSpeed wrapper)
    D: nn.Module | None  # None for the L1-only objective
    D_frozen: nn.Module | None  # D's plain module, called in the G step where D gets no update


def d_input(loss: LossConfig, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The conditional D sees the (input, image) pair stacked on channels; the unconditional one the image."""
    return torch.cat([condition, image], dim=1) if loss.conditional else image


def discriminate_pairs(
    D: nn.Module, fake_in: torch.Tensor, real_in: torch.Tensor, fused: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """D on fake and real pairs: two calls (exact for BatchNorm) or one call on the concatenation."""
    if fused:
        out = D(torch.cat([fake_in, real_in], dim=0))
        return out[: fake_in.shape[0]], out[fake_in.shape[0] :]
    return D(fake_in), D(real_in)


def train_step(
    engine: Engine,
    models: StepModels,
    loss_cfg: LossConfig,
    real_A: torch.Tensor,
    real_B: torch.Tensor,
    *,
    fused_d_forward: bool = False,
) -> dict[str, torch.Tensor] | None:
    G, D = models.G, models.D
    gan = GANLoss(loss_cfg.gan) if loss_cfg.gan != "none" else None
    losses: dict[str, torch.Tensor] = {}

    with engine.autocast():
        fake_B = G(real_A)
    if loss_cfg.lambda_l1 > 0:
        losses["G_L1"] = l1_loss(fake_B, real_B) * loss_cfg.lambda_l1  # needs no D: checked with D's loss

    # 1. D step on real pairs and detached fake pairs, loss halved.
    if gan is not None:
        D.requires_grad_(True)
        with engine.autocast():
            pred_fake, pred_real = discriminate_pairs(
                D, d_input(loss_cfg, real_A, fake_B.detach()), d_input(loss_cfg, real_A, real_B), fused_d_forward
            )
        losses["D_fake"] = gan(pred_fake, target_is_real=False)
        losses["D_real"] = gan(pred_real, target_is_real=True)
        loss_D = 0.5 * (losses["D_fake"] + losses["D_real"])
        if not engine.all_finite(loss_D + losses["G_L1"].detach() if "G_L1" in losses else loss_D):
            return None  # nothing updated yet
        engine.backward_step("D", loss_D)
        D.requires_grad_(False)  # 2. freeze D entirely for the G step

    # 2. G step through the frozen D: fool D, and stay near the target in L1.
    loss_G = torch.zeros((), device=real_A.device)
    if gan is not None:
        with engine.autocast():
            pred = models.D_frozen(d_input(loss_cfg, real_A, fake_B))
        losses["G_GAN"] = gan(pred, target_is_real=True)
        loss_G = loss_G + losses["G_GAN"]
    if "G_L1" in losses:
        loss_G = loss_G + losses["G_L1"]
    if not engine.all_finite(loss_G):
        return None
    engine.backward_step("G", loss_G)
    return {k: v.detach() for k, v in losses.items()}
