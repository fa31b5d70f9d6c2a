"""Convolutions whose channel counts are padded to a multiple of 8 while they compute, exactly.

Tensor-core convolution kernels want channel counts that are multiples of 8 in bf16/fp16; the
networks' ends are not (G's first conv sees 3 channels, or 1 for colorization; G's last transposed
conv makes 3, or 2; D's first conv sees 6, or 3; D's last makes 1), and cuDNN gives them slow
kernels. `pad_channels` turns such convs into their padded kind in place: the input gets zero
channels and the weight zero rows/columns inside `forward`, the extra output channels are sliced off.
The parameters keep their shapes and objects, so state dicts, checkpoints, export and the optimizers
are those of the plain network, and the result is the plain conv's plus terms that are exactly zero
(tests/unit/test_models.py compares outputs and gradients). Applied under bf16/fp16 on CUDA
(`p2p_dist.train.engines.base.ready_for_engine`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MULTIPLE = 8


def _missing(channels: int, multiple: int) -> int:
    return -channels % multiple


class _Padded:
    """The padding shared by both kinds: `pad_in` zero input channels, `pad_out` zero output channels."""

    pad_in = 0
    pad_out = 0

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # weight: Conv2d (out, in, kh, kw), ConvTranspose2d (in, out, kh, kw); F.pad pads dim 1 then dim 0
        dim0, dim1 = (
            (self.pad_in, self.pad_out) if isinstance(self, nn.ConvTranspose2d) else (self.pad_out, self.pad_in)
        )
        weight = self.weight
        if torch.is_autocast_enabled(x.device.type):  # cast, then pad: no float32 copy of the padded tensors
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        weight = F.pad(weight, (0, 0, 0, 0, 0, dim1, 0, dim0))
        bias = None if self.bias is None else F.pad(self.bias, (0, self.pad_out))
        if self.pad_in:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_in))
        return x, weight, bias

    def _cropped(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, : self.out_channels] if self.pad_out else y


class PaddedConv2d(_Padded, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, bias = self._padded(x)
        return self._cropped(self._conv_forward(x, weight, bias))


class PaddedConvTranspose2d(_Padded, nn.ConvTranspose2d):
    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        x, weight, bias = self._padded(x)
        y = F.conv_transpose2d(x, weight, bias, self.stride, self.padding, output_padding, 1, self.dilation)
        return self._cropped(y)


_KINDS = {nn.Conv2d: PaddedConv2d, nn.ConvTranspose2d: PaddedConvTranspose2d}


def pad_channels(module: nn.Module | None, multiple: int = MULTIPLE) -> int:
    """Make every plain (groups=1) Conv2d / ConvTranspose2d of `module` whose input or output channel
    count is not a multiple of `multiple` compute padded to it. In place; returns how many convs changed."""
    changed = 0
    for m in [] if module is None else module.modules():
        kind = _KINDS.get(type(m))
        if kind is None or m.groups != 1 or m.padding_mode != "zeros":
            continue
        pad_in, pad_out = _missing(m.in_channels, multiple), _missing(m.out_channels, multiple)
        if pad_in or pad_out:
            m.__class__ = kind
            m.pad_in, m.pad_out = pad_in, pad_out
            changed += 1
    return changed
