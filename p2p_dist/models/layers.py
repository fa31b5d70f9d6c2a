"""Normalisation layers and the paper's weight initialisation, shared by G and D.

The reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix) decides whether a conv has a
bias from the normalisation that follows it: BatchNorm has its own shift, so convs followed by
BatchNorm carry no bias; InstanceNorm there is affine=False, so convs keep their bias. We follow
that rule for "batch" and "instance" (parameter counts and checkpoint layouts match the
reference). For "none" the reference also drops the bias (a side effect of its test); we keep
it, because a conv with neither a bias nor a norm after it can not shift its output.
"""

from __future__ import annotations

import torch
from torch import nn

from p2p_dist.models.registry import NORMS, check_norm

__all__ = ["NORMS", "check_norm", "conv_bias", "count_parameters", "init_weights", "norm_layer"]


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalisation layer after a conv: BatchNorm2d, InstanceNorm2d (no affine, no running
    statistics, as in the reference) or Identity."""
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def conv_bias(norm: str) -> bool:
    """Whether a conv followed by `norm` gets a bias (see the module docstring)."""
    return check_norm(norm) != "batch"


@torch.no_grad()
def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """The paper's initialisation: conv weights ~ N(0, gain), BatchNorm weights ~ N(1, gain),
    all biases 0. Returns `module`."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (what the reference prints as 'Total number of parameters')."""
    return sum(p.numel() for p in module.parameters())
