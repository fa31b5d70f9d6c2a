"""Speed options for the training step: the same math, run faster, chosen so that they never lose.

- Memory format (`train.memory_format`): `auto` is channels_last on CUDA (tensor cores want NHWC)
  and PyTorch's default (NCHW) on CPU. On CPU the plain step's own format is the rule because
  channels_last helped on no CPU we measured (neutral to slower in float32 on AVX-512, part of the
  0.89x on AVX2, bench/README.md): keeping the eager format there cannot lose to eager.
- CPU convolution kernels (`train.cpu_conv_kernels`): oneDNN (PyTorch's choice) is several times
  slower than ATen's GEMM convolution on some of the U-Net's inner layers (tiny feature maps,
  millions of weights) on one CPU and not on another. `auto` times both kernels, forward and
  backward, on the run's real layer shapes at start-up (like cudnn.benchmark) and routes a layer to
  GEMM only where GEMM was faster, then times a whole forward + backward of G and D (copies) with
  those layers routed and without, in turn, and keeps the routing only where that step is faster too
  (a layer that wins alone can lose inside the step, bench/README.md); `onednn` is the plain step
  everywhere; `gemm` is the fixed shape rule (`weight_bound`). The measurement runs on rank 0, is
  broadcast to every rank and recorded in the run folder (`speed.json`), so every rank and every
  resume of the run uses the same kernels (bit-exact resume stays so). With
  `train.deterministic=true`, `auto` means `onednn`: two runs of the same config must run the same
  kernels, and a timing could choose otherwise the second time.
- bf16 autocast on a CPU without native bf16 runs matmuls many times slower than float32: when it
  is asked for on CPU, a bf16 and a float32 matmul are timed at start-up and a factor below 1 is
  named in one warning line.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from p2p_dist.fsutil import atomic_write_text

SPEED_FILE = "speed.json"
#: layers whose weights are fewer than this times their activations are not timed (they keep oneDNN,
#: the plain step's kernel): GEMM won only above 10x on this repository's AVX-512 CPU (bench/README.md),
#: and the large-activation layers are the expensive ones to time
CANDIDATE_RATIO = 4.0
#: the fixed rule of `train.cpu_conv_kernels=gemm`: weights / (input + output activations) above this
WEIGHT_BOUND_RATIO = 10.0
#: GEMM must beat oneDNN by this factor to be chosen (ties go to the plain step's kernel)
GEMM_MARGIN = 0.95
#: a timing round whose ratio lies outside (DECISIVE, 1 / DECISIVE) decides at once
DECISIVE = 0.7
#: the whole forward + backward with the GEMM layers must beat the plain one by this factor to keep them
STEP_MARGIN = 0.98


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
            return torch.ops.aten.convolution(
                x, weight, bias, stride, padding, dilation, transposed, output_padding, groups
            )

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        mask = [
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            ctx.bias_sizes is not None and ctx.needs_input_grad[2],
        ]
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
        return _GemmConvolution.apply(
            input, weight, bias, list(self.stride), list(self.padding), list(self.dilation), False, [0, 0], self.groups
        )


class GemmConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d computed through ATen's GEMM kernels on CPU (same math, same parameters)."""

    def forward(self, input, output_size=None):
        if not _use_gemm(input):
            return super().forward(input, output_size)
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        return _GemmConvolution.apply(
            input,
            self.weight,
            self.bias,
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            True,
            list(output_padding),
            self.groups,
        )


# --- layer shapes -------------------------------------------------------------------------------


def _convs(model: nn.Module):
    for name, m in model.named_modules():
        if type(m) in (nn.Conv2d, nn.ConvTranspose2d, GemmConv2d, GemmConvTranspose2d) and m.padding_mode == "zeros":
            yield name, m


def layer_shapes(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Input and output shape of every zero-padded Conv2d/ConvTranspose2d of `model` for inputs shaped
    like `example_input`. One forward pass in eval mode without gradients: no BatchNorm statistics
    change and no random numbers are drawn."""
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, (inp[0].shape, out.shape)))
        for name, m in _convs(model)
    ]
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
    return shapes


def weight_ratio(conv: nn.Module, input_shape: torch.Size, output_shape: torch.Size) -> float:
    return conv.weight.numel() / (input_shape.numel() + output_shape.numel())


def weight_bound(conv: nn.Module, input_shape: torch.Size, output_shape: torch.Size) -> bool:
    """The fixed rule (`train.cpu_conv_kernels=gemm`): weights outnumber input and output activations
    WEIGHT_BOUND_RATIO times over (where GEMM won 1.2-3x on the AVX-512 CPU of bench/README.md)."""
    return weight_ratio(conv, input_shape, output_shape) > WEIGHT_BOUND_RATIO


def route(model: nn.Module, names, gemm: bool = True) -> list[str]:
    """Switch the named conv layers (in place, keeping parameters and state_dict keys) to the GEMM
    convolution, or with `gemm=False` back to PyTorch's own classes. Returns the names switched."""
    names = set(names)
    routed = []
    for name, m in _convs(model):
        if name in names:
            if isinstance(m, nn.Conv2d):
                m.__class__ = GemmConv2d if gemm else nn.Conv2d
            else:
                m.__class__ = GemmConvTranspose2d if gemm else nn.ConvTranspose2d
            routed.append(name)
    return routed


def route_weight_bound_convs(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """The fixed rule: route the weight-bound layers (for inputs shaped like `example_input`); returns their names."""
    shapes = layer_shapes(model, example_input)
    return route(model, [n for n, m in _convs(model) if n in shapes and weight_bound(m, *shapes[n])])


# --- measuring ----------------------------------------------------------------------------------


def _conv_args(conv: nn.Module):
    transposed = isinstance(conv, nn.ConvTranspose2d)
    output_padding = list(conv.output_padding) if transposed else [0, 0]
    return (list(conv.stride), list(conv.padding), list(conv.dilation), transposed, output_padding, conv.groups)


def time_conv(
    conv: nn.Module, in_shape: torch.Size, out_shape: torch.Size, fmt: torch.memory_format, repeats: int = 3
) -> dict[str, float]:
    """Best forward + backward time (ms) of this layer's convolution at `in_shape`, through oneDNN and
    through GEMM, the two timed in turn. Runs on copies of the weights with inputs from a private
    generator: the model, its gradients and the global RNG are left alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(in_shape, generator=g).contiguous(memory_format=fmt)
    w = conv.weight.detach().clone().contiguous(memory_format=fmt)
    b = None if conv.bias is None else conv.bias.detach().clone()
    grad = torch.randn(out_shape, generator=g).contiguous(memory_format=fmt)
    args = _conv_args(conv)
    bias_sizes = None if b is None else list(b.shape)

    def run():
        torch.ops.aten.convolution(x, w, b, *args)
        torch.ops.aten.convolution_backward(grad, x, w, bias_sizes, *args, [True, True, b is not None])

    def timed(kind: str) -> float:
        with _mkldnn_off() if kind == "gemm" else contextlib.nullcontext():
            t = time.perf_counter()
            run()
            return (time.perf_counter() - t) * 1e3

    with torch.no_grad():
        return _race(timed, repeats)


def _race(timed, repeats: int, swap_order: bool = False) -> dict[str, float]:
    """Best of `repeats` rounds of `timed("onednn")` and `timed("gemm")` (ms each), after a warm-up round
    (oneDNN builds its primitives, the allocator its pools); with `swap_order` the two take turns at
    running first. Stops early when one is far ahead (outside DECISIVE): more rounds would not change
    the choice."""
    best = {"onednn": float("inf"), "gemm": float("inf")}
    for i in range(repeats + 1):
        for kind in ("gemm", "onednn") if swap_order and i % 2 == 0 else ("onednn", "gemm"):
            dt = timed(kind)
            if i:
                best[kind] = min(best[kind], dt)
        if i and not DECISIVE < best["gemm"] / best["onednn"] < 1 / DECISIVE:
            break
    return best


def measure_layers(model: nn.Module, shapes: dict, fmt: torch.memory_format) -> dict[str, dict]:
    """Time the candidate layers (weights at least CANDIDATE_RATIO x their activations) both ways."""
    out = {}
    for name, m in _convs(model):
        if name in shapes and weight_ratio(m, *shapes[name]) >= CANDIDATE_RATIO:
            t = time_conv(m, *shapes[name], fmt)
            out[name] = {
                "input": list(shapes[name][0]),
                "onednn_ms": round(t["onednn"], 3),
                "gemm_ms": round(t["gemm"], 3),
                "kernel": "gemm" if t["gemm"] < GEMM_MARGIN * t["onednn"] else "onednn",
            }
    return out


def time_step(models: dict, names: list[str], fmt: torch.memory_format, repeats: int = 2) -> dict[str, float]:
    """Best time (ms) of one forward + backward of every model in `models` ({"G": (G, example), "D": ...},
    loss = sum of the output means), with the layers `names` ("G.down.7.1", ...) through oneDNN and
    through GEMM, timed in turn. Runs on deep copies in training mode under a forked RNG: the models,
    their gradients and BatchNorm statistics and the global RNG are left alone."""
    copies = {}
    for prefix, (m, ex) in models.items():
        c = copy.deepcopy(m).train().to(memory_format=fmt)
        layers = [n[len(prefix) + 1 :] for n in names if n.startswith(prefix + ".")]
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(ex.shape, generator=g) * 2 - 1).contiguous(memory_format=fmt)
        copies[prefix] = (c, x, layers)

    def run(kind: str) -> float:
        for c, _, layers in copies.values():
            route(c, layers, gemm=kind == "gemm")
            for p in c.parameters():
                p.grad = None
        t = time.perf_counter()
        loss = sum(c(x).float().mean() for c, x, _ in copies.values())
        loss.backward()
        return (time.perf_counter() - t) * 1e3

    with torch.random.fork_rng(devices=[]):
        return _race(run, repeats, swap_order=True)


def matmul_ms(dtype: torch.dtype, n: int = 256, repeats: int = 5) -> float:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def bf16_speed_factor() -> float:
    """float32 matmul time / bf16 matmul time on this CPU (above 1: bf16 is faster)."""
    fp32, bf16 = matmul_ms(torch.float32), matmul_ms(torch.bfloat16)
    fp32 = min(fp32, matmul_ms(torch.float32))  # interleaved so a load burst hits both
    return fp32 / bf16


# --- the plan -----------------------------------------------------------------------------------


@dataclass
class SpeedPlan:
    """What the run uses, as recorded in speed.json."""

    device: str
    memory_format: str  # "channels_last" | "contiguous"
    cpu_conv_kernels: str  # the config value
    batch_size: int
    image_size: int
    gemm_layers: list[str] = field(default_factory=list)  # "G.down.6.1", ...
    timings: dict = field(default_factory=dict)  # layer -> {onednn_ms, gemm_ms, kernel}
    # the whole forward + backward with the layers that won alone, against without: {onednn_ms, gemm_ms, kept}
    step_check: dict = field(default_factory=dict)
    bf16_speed_factor: float | None = None
    measure_s: float = 0.0
    cpu_capability: str = ""
    source: str = "rule"  # "measured" | "rule" | "reused <path>" (not recorded)
    recorded: str = ""  # where the plan was written (not recorded)

    @property
    def channels_last(self) -> bool:
        return self.memory_format == "channels_last"

    def key(self) -> tuple:
        return (
            self.device,
            self.memory_format,
            self.cpu_conv_kernels,
            self.batch_size,
            self.image_size,
            self.cpu_capability,
        )

    def messages(self) -> list[str]:
        lines = []
        if self.device == "cpu" and self.cpu_conv_kernels == "auto" and self.timings:
            where = f"; recorded in {self.recorded}" if self.recorded else ""
            won = sum(row["kernel"] == "gemm" for row in self.timings.values())
            line = (
                f"CPU conv kernels ({self.source}, {self.measure_s:.1f} s): {won} of "
                f"{len(self.timings)} timed layers run faster through GEMM than oneDNN"
            )
            check = self.step_check
            if check:
                ratio = check["gemm_ms"] / check["onednn_ms"]
                line += f"; forward + backward with them {ratio:.2f}x the time without: " + (
                    f"{len(self.gemm_layers)} routed to GEMM" if check["kept"] else "all stay with oneDNN"
                )
            lines.append(line + where)
        if self.bf16_speed_factor is not None and self.bf16_speed_factor < 1:
            lines.append(
                f"warning: train.mixed_precision=bf16 on this CPU ({self.cpu_capability}, no native bf16): "
                f"bf16 matmuls run {1 / self.bf16_speed_factor:.1f}x slower than float32 (measured); "
                "use train.mixed_precision=no here"
            )
        return lines


def memory_format_for(cfg, device: torch.device) -> str:
    value = cfg.train.memory_format
    if value == "auto":
        return "channels_last" if device.type == "cuda" else "contiguous"
    return value


def uses_channels_last(cfg, device: torch.device) -> bool:
    """Whether the run's models and batches are channels_last (`train.memory_format`)."""
    return memory_format_for(cfg, device) == "channels_last"


def _examples(cfg, fmt):
    b, size = cfg.train.batch_size, cfg.data.crop_size
    x = torch.zeros(b, cfg.in_channels, size, size).contiguous(memory_format=fmt)
    d_in = cfg.d_in_channels
    y = torch.zeros(b, d_in, size, size).contiguous(memory_format=fmt)
    return x, y


def _read_plan(path: Path) -> SpeedPlan | None:
    try:
        data = json.loads(path.read_text())
        return SpeedPlan(
            **{
                f.name: data[f.name]
                for f in dataclasses.fields(SpeedPlan)
                if f.name in data and f.name not in ("source", "recorded")
            }
        )
    except (OSError, ValueError, TypeError):
        return None


def _broadcast(obj):
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def _is_main() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def plan_speed(cfg, G: nn.Module, D: nn.Module | None, device: torch.device, run_dir: Path | None = None) -> SpeedPlan:
    """The run's memory format and CPU conv kernels. With `cpu_conv_kernels=auto` on CPU (float32,
    no compile), rank 0 times the layers or reuses the choice recorded in `run_dir/speed.json` for
    the same shapes and CPU, and every rank receives rank 0's plan (call it on all ranks together)."""
    t = cfg.train
    run_dir = None if run_dir is None else Path(run_dir)
    fmt_name = memory_format_for(cfg, device)
    fmt = torch.channels_last if fmt_name == "channels_last" else torch.contiguous_format
    plan = SpeedPlan(
        device=device.type,
        memory_format=fmt_name,
        cpu_conv_kernels=t.cpu_conv_kernels,
        batch_size=t.batch_size,
        image_size=cfg.data.crop_size,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )
    measure_bf16 = device.type == "cpu" and t.mixed_precision == "bf16"
    if t.cpu_conv_kernels == "auto" and t.deterministic:
        # a timing may choose otherwise in the next run: deterministic runs keep PyTorch's kernels
        plan.cpu_conv_kernels = "onednn"
    routing = device.type == "cpu" and not t.compile and t.mixed_precision == "no" and plan.cpu_conv_kernels != "onednn"
    if not routing and not measure_bf16:
        return plan
    x, y = _examples(cfg, fmt)
    models = {"G": (G, x)} if D is None else {"G": (G, x), "D": (D, y)}
    if routing and plan.cpu_conv_kernels == "gemm":
        for prefix, (m, ex) in models.items():
            shapes = layer_shapes(m, ex)
            plan.gemm_layers += [f"{prefix}.{n}" for n, c in _convs(m) if n in shapes and weight_bound(c, *shapes[n])]
        return plan
    # the measured choices: on rank 0, shared with every rank
    if _is_main():
        stored = _read_plan(run_dir / SPEED_FILE) if run_dir is not None else None
        if stored is not None and stored.key() == plan.key():
            plan = dataclasses.replace(stored, source=f"reused from {run_dir / SPEED_FILE}")
        else:
            t0 = time.perf_counter()
            if routing:
                for prefix, (m, ex) in models.items():
                    for name, row in measure_layers(m, layer_shapes(m, ex), fmt).items():
                        plan.timings[f"{prefix}.{name}"] = row
                won = [n for n, row in plan.timings.items() if row["kernel"] == "gemm"]
                if won:  # a layer that wins alone can still lose in the step: the whole step decides
                    t_step = time_step(models, won, fmt)
                    kept = t_step["gemm"] < STEP_MARGIN * t_step["onednn"]
                    plan.step_check = {
                        "onednn_ms": round(t_step["onednn"], 3),
                        "gemm_ms": round(t_step["gemm"], 3),
                        "kept": kept,
                    }
                    plan.gemm_layers = won if kept else []
            if measure_bf16:
                plan.bf16_speed_factor = round(bf16_speed_factor(), 3)
            plan.measure_s = round(time.perf_counter() - t0, 3)
            plan.source = "measured"
            if run_dir is not None and Path(run_dir).is_dir():
                record = {k: v for k, v in dataclasses.asdict(plan).items() if k not in ("source", "recorded")}
                atomic_write_text(Path(run_dir) / SPEED_FILE, json.dumps(record, indent=2) + "\n")
                plan.recorded = str(Path(run_dir) / SPEED_FILE)
    return _broadcast(plan)


def apply_plan(plan: SpeedPlan, G: nn.Module, D: nn.Module | None):
    """Lay the models out and route their layers as the plan says. Returns (G, D, routed layer names)."""
    if plan.channels_last:
        G, D = to_channels_last(G, D)
    routed = route(G, [n[2:] for n in plan.gemm_layers if n.startswith("G.")])
    routed = [f"G.{n}" for n in routed]
    if D is not None:
        routed += [f"D.{n}" for n in route(D, [n[2:] for n in plan.gemm_layers if n.startswith("D.")])]
    return G, D, routed


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


def apply_speed_options(
    cfg, G: nn.Module, D: nn.Module | None, device: torch.device, run_dir: Path | None = None, *, say=None
):
    """Plan and apply the speed options before the engine wraps the models (all ranks together).
    `say` receives the plan's one-line messages on rank 0 (default: print to stderr).
    Returns (G, D, names of routed layers)."""
    plan = plan_speed(cfg, G, D, device, run_dir)
    if _is_main():
        for line in plan.messages():
            (say or (lambda s: print(s, file=sys.stderr, flush=True)))(line)
    G, D, routed = apply_plan(plan, G, D)
    return G, D, routed


def compile_step_models(models):
    """`train.compile`: torch.compile G, D and the frozen D of a StepModels (same math, fused kernels).
    Measured on the 2-core CPU it is slower than eager and costs over a minute (bench/README.md);
    meant for GPUs."""
    return dataclasses.replace(
        models,
        G=torch.compile(models.G),
        D=None if models.D is None else torch.compile(models.D),
        D_frozen=None if models.D_frozen is None else torch.compile(models.D_frozen),
    )


__all__ = [
    "SPEED_FILE",
    "WEIGHT_BOUND_RATIO",
    "GemmConv2d",
    "GemmConvTranspose2d",
    "SpeedPlan",
    "apply_plan",
    "apply_speed_options",
    "bf16_speed_factor",
    "compile_step_models",
    "layer_shapes",
    "memory_format_for",
    "plan_speed",
    "route",
    "route_weight_bound_convs",
    "time_conv",
    "time_step",
    "to_channels_last",
    "uses_channels_last",
    "weight_bound",
]
