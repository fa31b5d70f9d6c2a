"""The reference implementation's networks (junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py at
2a7afba), rebuilt for the tests and the throughput bench's `reference` row only: its nesting, module
order and in-place activations, so that state dicts have the reference's keys and outputs are the
reference's outputs."""

from __future__ import annotations

import torch
from torch import nn


# --- the reference's layout (test only) ---------------------------------------------------------------
def _ref_norm(norm, c):
    return nn.BatchNorm2d(c) if norm == "batch" else nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


class RefUnetBlock(nn.Module):
    """One nested level of the reference U-Net: a `.model` Sequential around its submodule;
    in-place activations and the skip concatenation done as the reference does them."""

    def __init__(
        self, outer, inner, in_ch=None, sub=None, outermost=False, innermost=False, norm="batch", dropout=False
    ):
        super().__init__()
        self.outermost = outermost
        bias = norm == "instance"
        in_ch = outer if in_ch is None else in_ch
        downconv = nn.Conv2d(in_ch, inner, 4, 2, 1, bias=bias)
        downrelu, uprelu = nn.LeakyReLU(0.2, True), nn.ReLU(True)
        if outermost:
            layers = [downconv, sub, uprelu, nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            layers = [
                downrelu,
                downconv,
                uprelu,
                nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias),
                _ref_norm(norm, outer),
            ]
        else:
            layers = [
                downrelu,
                downconv,
                _ref_norm(norm, inner),
                sub,
                uprelu,
                nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias),
                _ref_norm(norm, outer),
            ]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class RefUnet(nn.Module):
    def __init__(self, in_ch, out_ch, num_downs, ngf, norm="batch", dropout=True):
        super().__init__()
        block = RefUnetBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = RefUnetBlock(ngf * 8, ngf * 8, sub=block, norm=norm, dropout=dropout)
        block = RefUnetBlock(ngf * 4, ngf * 8, sub=block, norm=norm)
        block = RefUnetBlock(ngf * 2, ngf * 4, sub=block, norm=norm)
        block = RefUnetBlock(ngf, ngf * 2, sub=block, norm=norm)
        self.model = RefUnetBlock(out_ch, ngf, in_ch=in_ch, sub=block, outermost=True, norm=norm)

    def forward(self, x):
        return self.model(x)


class RefResnetBlock(nn.Module):
    def __init__(self, dim, norm, dropout, bias):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), _ref_norm(norm, dim), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), _ref_norm(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class RefResnet(nn.Module):
    def __init__(self, in_ch, out_ch, ngf, norm="batch", dropout=True, n_blocks=9):
        super().__init__()
        bias = norm == "instance"
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, bias=bias), _ref_norm(norm, ngf), nn.ReLU(True)]
        for i in range(2):
            m = 2**i
            layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, 2, 1, bias=bias), _ref_norm(norm, ngf * m * 2), nn.ReLU(True)]
        layers += [RefResnetBlock(ngf * 4, norm, dropout, bias) for _ in range(n_blocks)]
        for i in range(2):
            m = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1, bias=bias),
                _ref_norm(norm, ngf * m // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class RefNLayerDiscriminator(nn.Module):
    """The reference's PatchGAN (NLayerDiscriminator): one `.model` Sequential, in-place LeakyReLUs."""

    def __init__(self, in_ch, ndf=64, n_layers=3, norm="batch"):
        super().__init__()
        bias = norm == "instance"
        layers = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, 1, bias=bias),
                _ref_norm(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class RefGANLoss(nn.Module):
    """The reference's vanilla GANLoss: BCE with logits against a label buffer expanded to the prediction."""

    def __init__(self):
        super().__init__()
        self.register_buffer("real_label", torch.tensor(1.0))
        self.register_buffer("fake_label", torch.tensor(0.0))
        self.loss = nn.BCEWithLogitsLoss()

    def forward(self, prediction, target_is_real):
        target = self.real_label if target_is_real else self.fake_label
        return self.loss(prediction, target.expand_as(prediction))


def make_reference(arch, norm="batch", in_ch=3, out_ch=3, ngf=8, dropout=True, seed=0):
    torch.manual_seed(seed)
    if arch == "resnet_9blocks":
        net = RefResnet(in_ch, out_ch, ngf, norm, dropout)
    else:
        net = RefUnet(in_ch, out_ch, {"unet_256": 8, "unet_128": 7}[arch], ngf, norm, dropout)
    # random weights and running statistics, so that every entry matters for the comparison
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif t.is_floating_point():
                t.normal_(0, 0.05 if name.endswith("weight") and t.ndim == 4 else 0.3)
    return net
