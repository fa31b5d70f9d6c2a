"""The paper's objectives: the (conditional) GAN loss, its LSGAN variant, and the L1 term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class GANLoss:
    """Adversarial loss on D's logits against an all-real or all-fake target of the same shape.

    vanilla: binary cross-entropy with logits (D has no sigmoid layer), as in the reference.
    lsgan: least squares on the raw outputs (Mao et al.), the reference's `--gan_mode lsgan`.
    """

    def __init__(self, mode: str):
        if mode not in ("vanilla", "lsgan"):
            raise ValueError(f"GAN loss mode must be vanilla or lsgan, got {mode!r}")
        self.mode = mode

    def __call__(self, logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        logits = logits.float()
        target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)


def l1_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(fake.float(), real.float())
