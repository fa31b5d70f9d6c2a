"""Generators of the paper: the U-Net (with skips), the encoder-decoder (the same network without
skips) and the 9-block ResNet generator (Johnson et al.), layer by layer as in the reference
implementation (junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py): unet_256 with BatchNorm
has 54,413,955 parameters for RGB -> RGB (tests/unit/test_models.py checks the counts).

Module names are ours (`down.i` / `up.i` for U-Net level i, level 0 the outermost); the mapping
to the reference implementation's nested names lives in `p2p_dist.models.convert`.
"""

from __future__ import annotations

import torch
from torch import nn

from p2p_dist.models.layers import check_norm, conv_bias, init_weights, norm_layer
from p2p_dist.models.registry import GENERATORS, check_generator_name, native_size, size_multiple, unet_levels

__all__ = ["GENERATORS", "ResnetGenerator", "UnetGenerator", "build_generator", "native_size", "size_multiple"]


class UnetGenerator(nn.Module):
    """U-Net: `levels` stride-2 down convs (C64-C128-C256-C512...), the mirrored up path, and a skip
    concatenation of encoder level i with the decoder at level i (unless `skips=False`: the
    paper's encoder-decoder).

    Level 0 (outermost): down = [Conv], up = [ReLU, ConvT(+bias), Tanh].
    Levels 1..n-2: down = [LeakyReLU, Conv, Norm], up = [ReLU, ConvT, Norm(, Dropout)].
    Level n-1 (innermost): down = [LeakyReLU, Conv], up = [ReLU, ConvT, Norm].
    Dropout 0.5 sits on the up path of the levels whose both sides have ngf*8 channels, except the
    innermost (three levels for unet_256, two for unet_128), applied before the skip concatenation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        levels: int,
        ngf: int = 64,
        norm: str = "batch",
        dropout: bool = True,
        skips: bool = True,
    ):
        super().__init__()
        if levels < 5:
            raise ValueError("a U-Net needs at least 5 levels")
        check_norm(norm)
        self.levels, self.skips = levels, skips
        bias = conv_bias(norm)
        # channels[i] = features produced by the down conv of level i
        channels = [ngf * min(2**i, 8) for i in range(levels)]
        down, up = [], []
        for i in range(levels):
            c_in = in_channels if i == 0 else channels[i - 1]
            c_out = channels[i]
            # the up path of level i receives the output of level i+1 (plus the skip of level i+1)
            if i == levels - 1:
                up_in = c_out
            else:
                up_in = channels[i] * 2 if skips else channels[i]
            if i == 0:
                down.append(nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=bias)))
                up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(up_in, out_channels, 4, 2, 1), nn.Tanh()))
                continue
            d = [nn.LeakyReLU(0.2), nn.Conv2d(c_in, c_out, 4, 2, 1, bias=bias)]
            if i < levels - 1:
                d.append(norm_layer(norm, c_out))
            u = [nn.ReLU(), nn.ConvTranspose2d(up_in, c_in, 4, 2, 1, bias=bias), norm_layer(norm, c_in)]
            if dropout and 4 <= i <= levels - 2:
                u.append(nn.Dropout(0.5))
            down.append(nn.Sequential(*d))
            up.append(nn.Sequential(*u))
        self.down = nn.ModuleList(down)
        self.up = nn.ModuleList(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2**self.levels
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"a {self.levels}-level U-Net needs height and width that are multiples of {m}, "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        feats = []
        for block in self.down:
            x = block(x)
            feats.append(x)
        y = self.up[-1](feats[-1])
        for i in range(self.levels - 2, -1, -1):
            if self.skips:
                y = torch.cat([feats[i], y], dim=1)
            y = self.up[i](y)
        return y


class ResnetBlock(nn.Module):
    """x + [pad, conv3x3, norm, ReLU, (dropout), pad, conv3x3, norm](x), reflection padding."""

    def __init__(self, channels: int, norm: str, dropout: bool):
        super().__init__()
        bias = conv_bias(norm)
        self.conv1 = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), norm_layer(norm, channels), nn.ReLU()
        )
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()
        self.conv2 = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), norm_layer(norm, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.dropout(self.conv1(x)))


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsampling convs, `blocks` residual blocks, two stride-2
    transposed convs (output_padding 1), c7s1-out with bias, Tanh."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        norm: str = "batch",
        dropout: bool = True,
        blocks: int = 9,
    ):
        super().__init__()
        bias = conv_bias(norm)
        self.stem = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias), norm_layer(norm, ngf), nn.ReLU()
        )
        self.down = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(ngf * 2**i, ngf * 2 ** (i + 1), 3, 2, 1, bias=bias),
                    norm_layer(norm, ngf * 2 ** (i + 1)),
                    nn.ReLU(),
                )
                for i in range(2)
            ]
        )
        self.blocks = nn.Sequential(*[ResnetBlock(ngf * 4, norm, dropout) for _ in range(blocks)])
        self.up = nn.Sequential(
            *[
                nn.Sequential(
                    nn.ConvTranspose2d(ngf * 2 ** (2 - i), ngf * 2 ** (1 - i), 3, 2, 1, output_padding=1, bias=bias),
                    norm_layer(norm, ngf * 2 ** (1 - i)),
                    nn.ReLU(),
                )
                for i in range(2)
            ]
        )
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(
                f"the ResNet generator needs height and width that are multiples of 4, got {x.shape[-2]}x{x.shape[-1]}"
            )
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))


def build_generator(
    name: str,
    in_channels: int = 3,
    out_channels: int = 3,
    ngf: int = 64,
    norm: str = "batch",
    dropout: bool = True,
    init_gain: float = 0.02,
) -> nn.Module:
    """Build a generator by name (unet_256, unet_128, encoder_decoder_256, encoder_decoder_128,
    resnet_9blocks), initialised N(0, init_gain). `out_channels=2` with `in_channels=1` is the
    colorization generator (L -> ab)."""
    check_generator_name(name)
    check_norm(norm)
    for what, v in (("in_channels", in_channels), ("out_channels", out_channels), ("ngf", ngf)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be a positive integer, got {v!r}")
    if name == "resnet_9blocks":
        net = ResnetGenerator(in_channels, out_channels, ngf, norm, dropout, blocks=9)
    else:
        net = UnetGenerator(
            in_channels, out_channels, unet_levels(name), ngf, norm, dropout, skips=name.startswith("unet")
        )
    return init_weights(net, init_gain)
