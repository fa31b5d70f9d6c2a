"""Discriminators of the paper: PatchGAN with 1x1 (pixel), 16x16, 70x70 and 286x286 receptive
fields. They see cat(input, image) (6 channels for RGB->RGB) or, for the paper's unconditional
"GAN" ablation, the image alone (`in_channels=3`). Outputs are logits (no sigmoid).
"""

from __future__ import annotations

from torch import nn

from p2p_dist.models.layers import check_norm, conv_bias, init_weights, norm_layer
from p2p_dist.models.registry import DISCRIMINATORS, check_discriminator_name, discriminator_in_channels

__all__ = [
    "DISCRIMINATORS",
    "PatchDiscriminator",
    "PixelDiscriminator",
    "build_discriminator",
    "discriminator_in_channels",
    "receptive_field",
]


class PatchDiscriminator(nn.Sequential):
    """C(ndf) stride 2 without norm -> LeakyReLU, then n-1 x [conv stride 2, norm, LeakyReLU] with
    ndf*min(2^k, 8) channels, one [conv stride 1, norm, LeakyReLU], and a stride-1 conv to 1 channel.
    All convs 4x4 with padding 1; the first and the last carry a bias."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch"):
        bias = conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        super().__init__(*layers)


class PixelDiscriminator(nn.Sequential):
    """1x1 PixelGAN: conv1x1 ndf -> LeakyReLU -> conv1x1 2*ndf, norm, LeakyReLU -> conv1x1 to 1.
    As in the reference, only the first conv carries a bias under BatchNorm (9,024 parameters)."""

    def __init__(self, in_channels: int, ndf: int = 64, norm: str = "batch"):
        bias = conv_bias(norm)
        super().__init__(
            nn.Conv2d(in_channels, ndf, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf, ndf * 2, 1, bias=bias),
            norm_layer(norm, ndf * 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf * 2, 1, 1, bias=bias),
        )


def build_discriminator(
    name: str, in_channels: int = 6, ndf: int = 64, norm: str = "batch", init_gain: float = 0.02
) -> nn.Module:
    """Build a discriminator by name: pixel, patch16, patch70 (the paper's default), patch286."""
    check_discriminator_name(name)
    check_norm(norm)
    for what, v in (("in_channels", in_channels), ("ndf", ndf)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be a positive integer, got {v!r}")
    n_layers = DISCRIMINATORS[name]
    net = (
        PixelDiscriminator(in_channels, ndf, norm)
        if n_layers is None
        else PatchDiscriminator(in_channels, ndf, n_layers, norm)
    )
    return init_weights(net, init_gain)


def receptive_field(module: nn.Module) -> int:
    """Receptive field (in input pixels) of one output unit of a chain of convs, computed from
    the layers in order: rf += (kernel - 1) * dilation * jump; jump *= stride. Only valid for
    plain feed-forward stacks such as the discriminators here."""
    rf, jump = 1, 1
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            d = getattr(m, "dilation", 1)
            d = d if isinstance(d, int) else d[0]
            rf += (k - 1) * d * jump
            jump *= s
    return rf
