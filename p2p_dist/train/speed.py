"""Speed helpers for the training step and the benchmark: the same math, run faster.

- `route_weight_bound_convs`: on CPU, oneDNN is several times slower than ATen's GEMM convolution
  on the U-Net's inner layers (1x1 to 8x8 feature maps, 4-8M weights each): there the weights
  outnumber the activations by far and oneDNN re-lays them out on every call. Those layers are
  switched (in place, keeping their parameters and state_dict keys) to a convolution that runs
  forward and backward through the GEMM kernels. The choice is a fixed rule on shapes, not a
  timing, so every run and every rank makes the same one (bitwise reproducible runs stay so).
- `to_channels_last`: conv weights and activations in NHWC (oneDNN's preferred CPU layout).
- `step_flops`: FLOPs of a callable, counted by `torch.utils.flop_counter`.
- `matmul_peak`: a measured float32 matmul rate, the yardstick for "fraction of peak".

Measurements behind each choice are in bench/README.md.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
from torch import nn

#: a convolution counts as weight-bound when weights / (input + output activations) exceeds this
WEIGHT_BOUND_RATIO = 10.0


class _mkldnn_off:
    """Disable oneDNN convolutions for the calls inside (ATen then uses its GEMM kernels)."""

    def __enter__(self):
        self.prev = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)

    def __exit__(self, *exc):
        torch._C._set_mkldnn_enabled(self.prev)


class _GemmConvolution(torch.autograd.Function):
    """aten.convolution forward and backward with oneDNN disabled for both (ATen picks the backend
    again at backward time, so the backward must run under the same switch)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
        ctx.conv = (stride, padding, dilation, transposed, output_padding, groups)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        ctx.save_for_backward(x, weight)
        with _mkldnn_off():
            return torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, transposed,
                                              output_padding, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.bias_sizes is not None and ctx.needs_input_grad[2]]
        with _mkldnn_off():
            gx, gw, gb = torch.ops.aten.convolution_backward(grad, x, weight, ctx.bias_sizes, *ctx.conv, mask)
        return gx, gw, gb, None, None, None, None, None, None


def _use_gemm(x: torch.Tensor) -> bool:
    # oneDNN stays in charge of anything but plain float32 CPU tensors (bf16 autocast, CUDA)
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


class GemmConv2d(nn.Conv2d):
    """nn.Conv2d computed through ATen's GEMM kernels on CPU (same math, same parameters)."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or not _use_gemm(input):
            return super()._conv_forward(input, weight, bias)
        return _GemmConvolution.apply(input, weight, bias, list(self.stride), list(self.padding),
                                      list(self.dilation), False, [0, 0], self.groups)


class GemmConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d computed through ATen's GEMM kernels on CPU (same math, same parameters)."""

    def forward(self, input, output_size=None):
        if not _use_gemm(input):
            return super().forward(input, output_size)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              2, self.dilation)
        return _GemmConvolution.apply(input, self.weight, self.bias, list(self.stride), list(self.padding),
                                      list(self.dilation), True, list(output_padding), self.groups)


def weight_bound(conv: nn.Module, input_shape: torch.Size, output_shape: torch.Size) -> bool:
    """True when the layer's weights outnumber its input and output activations WEIGHT_BOUND_RATIO
    times over (measured on a 2-core AVX-512 CPU: GEMM wins 1.2-3x there, oneDNN wins elsewhere)."""
    activations = input_shape.numel() + output_shape.numel()
    return conv.weight.numel() > WEIGHT_BOUND_RATIO * activations


def route_weight_bound_convs(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Switch `model`'s weight-bound Conv2d/ConvTranspose2d layers (for inputs shaped like
    `example_input`) to the GEMM convolution; returns their names. Call on CPU models only, before
    wrapping them (DDP, compile). The probe is one forward pass in eval mode without gradients:
    no BatchNorm statistics change and no random numbers are drawn."""
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = []
    for name, m in model.named_modules():
        if type(m) in (nn.Conv2d, nn.ConvTranspose2d):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: shapes.__setitem__(name, (inp[0].shape, out.shape))))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    routed = []
    for name, m in model.named_modules():
        if name in shapes and m.padding_mode == "zeros" and weight_bound(m, *shapes[name]):
            m.__class__ = GemmConv2d if type(m) is nn.Conv2d else GemmConvTranspose2d
            routed.append(name)
    return routed


def to_channels_last(*items):
    """Modules and 4-D tensors in channels_last (NHWC) memory format; None passes through."""
    out = []
    for x in items:
        if isinstance(x, nn.Module):
            x = x.to(memory_format=torch.channels_last)
        elif isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(x)
    return out if len(out) != 1 else out[0]


def apply_speed_options(cfg, G: nn.Module, D: nn.Module | None, device: torch.device):
    """The config's layout and kernel choices, before the engine wraps the models: channels_last
    (`train.channels_last`) and, on CPU without `train.compile`, the GEMM route for weight-bound
    convs (`train.gemm_small_convs`) at the training shape. Returns (G, D, names of routed layers)."""
    if cfg.train.channels_last:
        G, D = to_channels_last(G, D)
    routed: list[str] = []
    if device.type == "cpu" and cfg.train.gemm_small_convs and not cfg.train.compile:
        b, size = cfg.train.batch_size, cfg.data.crop_size
        fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        x = torch.zeros(b, cfg.in_channels, size, size).contiguous(memory_format=fmt)
        routed += [f"G.{n}" for n in route_weight_bound_convs(G, x)]
        if D is not None:
            d_in = cfg.d_in_channels
            y = torch.zeros(b, d_in, size, size).contiguous(memory_format=fmt)
            routed += [f"D.{n}" for n in route_weight_bound_convs(D, y)]
    return G, D, routed


def compile_step_models(models):
    """`train.compile`: torch.compile G, D and the frozen D of a StepModels (same math, fused kernels).
    Measured on the 2-core CPU it is slower than eager and costs over a minute (bench/README.md);
    meant for GPUs."""
    return dataclasses.replace(
        models, G=torch.compile(models.G),
        D=None if models.D is None else torch.compile(models.D),
        D_frozen=None if models.D_frozen is None else torch.compile(models.D_frozen),
    )


def step_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of one call of `fn` (forward and backward ops), as torch.utils.flop_counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 matmul rate of this process's threads, in FLOP/s (n x n times n x n)."""
    g = torch.Generator().manual_seed(0)  # leaves the global RNG alone
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


__all__ = [
    "WEIGHT_BOUND_RATIO", "GemmConv2d", "GemmConvTranspose2d", "apply_speed_options", "compile_step_models",
    "matmul_peak", "route_weight_bound_convs", "step_flops", "to_channels_last", "weight_bound",
]
