"""Training-step and inference throughput: the default step against a plain eager one, same networks.

    python bench/train_throughput.py                          # batch 1 and 4, unet_256 + patch70, 256 px
    python bench/train_throughput.py --batch-size 4 --json out.json
    python bench/train_throughput.py --device cuda --batch-size 1 4 16
    python bench/train_throughput.py --variant unfused:optim.fused=false --variant bf16:train.mixed_precision=bf16
    python bench/train_throughput.py --dry-run                # tiny network, one step per row

Rows:
  reference  the reference implementation's step: its networks (junyanz/pytorch-CycleGAN-and-pix2pix at
             2a7afba, rebuilt in tests/helpers/reference.py: nesting, in-place activations, its GANLoss),
             its optimize_parameters order (D unfrozen, D step, D frozen, G step), torch.optim.Adam with
             its default kernels, NCHW float32, no host read (unet_* or resnet_9blocks with a patch D).
  eager      the straightforward step with our networks: NCHW float32, D called on the real and on the
             fake pair, torch.optim.Adam with its default kernels, `.item()` of both losses every step.
  default    what p2p-train runs: `p2p_dist.train.loop.train_step` through the Accelerate engine,
             with the config's defaults (fused Adam, train.memory_format=auto), built by the run's
             builder (`cuda_graph.step_runner`: one CUDA graph replayed per step where
             train.cuda_graph resolves on, i.e. on CUDA; else the eager step), the step's flags
             agreed on the device and read a step late as the run reads them, losses summed on
             the device.
  NAME       `--variant NAME:key=value,...`: the default step with config overrides.
One step is D step + G step. Warm-up steps are excluded (their time is reported: it holds the
compile time of train.compile=true, and the capture of train.cuda_graph, whose rows warm up with at least
its eager steps and the capture); the timed steps of all rows of one batch size run in turn,
round after round, so load from other processes hits every row alike. images/s and GFLOP/s use
the median step time (on CUDA each step ends with torch.cuda.synchronize); FLOPs are counted with
torch.utils.flop_counter; "of peak" divides by a measured float32 matmul rate of this process's
threads (of the GPU on CUDA). Peak memory on CPU is the peak resident memory (VmHWM) of a fresh
process that builds the row's models and runs two steps; on CUDA torch.cuda.max_memory_allocated
over building the row and two steps.
"page faults" is the median count of this process's minor page faults per timed step (pages the
kernel maps in and zeroes).
The translate rows time G's forward pass as p2p-translate runs it (paper mode, inference_mode)
against the same in the training's memory format (train.memory_format=auto).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from p2p_dist.config import ConfigError, load_config
from p2p_dist.errors import UserError
from p2p_dist.fsutil import atomic_write_text
from p2p_dist.losses import GANLoss, l1_loss
from p2p_dist.models import set_inference_mode
from p2p_dist.train.accounting import StepFlags
from p2p_dist.train.build import build_models
from p2p_dist.train.cuda_graph import WARMUP_STEPS, step_runner
from p2p_dist.train.engines.base import autocast_dtype, uses_channels_last
from p2p_dist.train.engines.ddp import DDPEngine
from p2p_dist.train.host_memory import keep_freed_memory
from p2p_dist.train.loop import train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import matmul_peak, step_flops, synchronize  # noqa: E402  (bench/flops.py, beside this script)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.reference import RefGANLoss, RefNLayerDiscriminator, RefResnet, RefUnet  # noqa: E402


def page_faults() -> int:
    """Minor page faults of this process so far (pages the kernel mapped in and zeroed)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def to_channels_last(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [x.contiguous(memory_format=torch.channels_last) for x in tensors]


# --- the rows -----------------------------------------------------------------------------------


class BenchEngine(DDPEngine):
    """The Accelerate engine, its step's autocast regions in the row's precision but Accelerate told
    none: one process holds rows of several precisions, and Accelerate's process-wide state takes
    only one (an fp16 row runs without the GradScaler)."""

    def __init__(self, cfg):
        super().__init__(cfg, mixed_precision="no")
        self.step_autocast = autocast_dtype(cfg.train.mixed_precision)


@dataclass
class Row:
    name: str
    overrides: list[str]
    step: object = None  # () -> None, one training step
    warmup_s: float = 0.0
    times: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)  # minor page faults of this process per timed step
    notes: str = ""


def base_overrides(args) -> list[str]:
    size = args.size
    return [
        f"model.generator={args.generator}",
        f"model.discriminator={args.discriminator}",
        f"model.ngf={args.ngf}",
        f"model.ndf={args.ndf}",
        f"data.crop_size={size}",
        f"data.load_size={size}",
        f"train.output_dir={args.scratch}",
    ]


def make_config(args, batch_size: int, overrides: list[str]):
    return load_config(None, base_overrides(args) + [f"train.batch_size={batch_size}", *overrides])


def batch(cfg, device: torch.device, seed: int = 1):
    """A random batch on `device` (the model's device)."""
    g = torch.Generator().manual_seed(seed)
    size, b = cfg.data.crop_size, cfg.train.batch_size
    A = torch.rand(b, cfg.in_channels, size, size, generator=g) * 2 - 1
    B = torch.rand(b, cfg.out_channels, size, size, generator=g) * 2 - 1
    return A.to(device), B.to(device)


def eager_step_fn(cfg, device: torch.device):
    """The plain step, written the straightforward way (the yardstick)."""
    torch.manual_seed(cfg.train.seed)
    G, D = build_models(cfg)
    G, D = G.to(device), D.to(device)
    o = cfg.optim
    opt_G = torch.optim.Adam(G.parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
    gan, lam = GANLoss(cfg.loss.gan), cfg.loss.lambda_l1
    A, B = batch(cfg, device)
    G.train(), D.train()

    def step():
        fake = G(A)
        loss_D = 0.5 * (gan(D(torch.cat([A, fake.detach()], 1)), False) + gan(D(torch.cat([A, B], 1)), True))
        opt_D.zero_grad()
        loss_D.backward()
        opt_D.step()
        D.requires_grad_(False)
        loss_G = gan(D(torch.cat([A, fake], 1)), True) + lam * l1_loss(fake, B)
        opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()
        D.requires_grad_(True)
        return loss_D.item(), loss_G.item()

    return step


def reference_supported(generator: str, discriminator: str) -> bool:
    return generator in ("unet_256", "unet_128", "resnet_9blocks") and discriminator.startswith("patch")


def reference_step_fn(cfg, device: torch.device):
    """The reference implementation's step (models/pix2pix_model.py optimize_parameters), on its networks."""
    from p2p_dist.models import DISCRIMINATORS, init_weights

    m, o = cfg.model, cfg.optim
    torch.manual_seed(cfg.train.seed)
    if m.generator == "resnet_9blocks":
        G = RefResnet(cfg.in_channels, cfg.out_channels, m.ngf, m.norm, m.dropout)
    else:
        G = RefUnet(
            cfg.in_channels, cfg.out_channels, {"unet_256": 8, "unet_128": 7}[m.generator], m.ngf, m.norm, m.dropout
        )
    D = RefNLayerDiscriminator(cfg.d_in_channels, m.ndf, DISCRIMINATORS[m.discriminator], m.norm)
    G, D = (init_weights(net, m.init_gain).to(device) for net in (G, D))
    opt_G = torch.optim.Adam(G.parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
    gan, l1, lam = RefGANLoss().to(device), torch.nn.L1Loss(), cfg.loss.lambda_l1
    A, B = batch(cfg, device)
    G.train(), D.train()

    def step():
        fake = G(A)  # forward()
        D.requires_grad_(True)  # set_requires_grad(netD, True)
        opt_D.zero_grad()
        loss_D = (gan(D(torch.cat((A, fake), 1).detach()), False) + gan(D(torch.cat((A, B), 1)), True)) * 0.5
        loss_D.backward()  # backward_D()
        opt_D.step()
        D.requires_grad_(False)
        opt_G.zero_grad()
        loss_G = gan(D(torch.cat((A, fake), 1)), True) + l1(fake, B) * lam
        loss_G.backward()  # backward_G()
        opt_G.step()

    return step


def default_step_fn(cfg, device: torch.device):
    """p2p-train's step: the engine, `train_step` run as the run runs it (captured and replayed with
    train.cuda_graph), no host sync for the losses."""
    if cfg.loss.gan == "none":
        raise ConfigError("the bench times the GAN step; loss.gan=none is not supported here")
    torch.manual_seed(cfg.train.seed)
    engine = BenchEngine(cfg)
    if engine.device.type != device.type:
        raise UserError(
            f"--device {device.type}: the engine runs on {engine.device.type} here "
            "(hide the GPUs with CUDA_VISIBLE_DEVICES= to time the CPU)"
        )
    G, D = build_models(cfg)
    models = engine.prepare(G, D)  # the memory format, the optimizers, train.compile
    A, B = batch(cfg, device)
    if uses_channels_last(cfg, device):
        A, B = to_channels_last(A, B)
    models.G.train(), models.D.train()
    state = {"sum": None}

    def body(A, B):
        result = train_step(engine, models, cfg.loss, A, B)
        losses = result.losses
        stacked = torch.stack([losses[k].float() for k in sorted(losses)])
        if state["sum"] is None:
            state["sum"] = stacked.clone()
        else:
            state["sum"].add_(stacked)  # in place: a replayed graph keeps adding into the same tensor
        return result

    run_step, flags, steps = step_runner(engine, body), StepFlags(engine), [0]

    def step():
        engine.set_lr(cfg.optim.lr)
        result = run_step(A, B)
        steps[0] += 1  # run.py's flags: agreed on the device, read on the host a step late
        flags.push(steps[0], False, False, result.skipped)
        flags.read()

    step.engine = engine  # engine.host_syncs counts the step's blocking host reads
    step.warmup = WARMUP_STEPS + 1 if engine.graphed else 0  # the eager warm-up steps and the capture
    return step


def build_row(row: Row, args, batch_size: int):
    if row.name == "reference":
        return reference_step_fn(make_config(args, batch_size, []), args.device)
    if row.name == "eager":
        return eager_step_fn(make_config(args, batch_size, []), args.device)
    return default_step_fn(make_config(args, batch_size, row.overrides), args.device)


def measure_cuda_memory(row: Row, args, batch_size: int) -> float:
    """Peak CUDA memory (MiB) of building the row and running two steps, in this process."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step = build_row(row, args, batch_size)
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    del step
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _memory_probe(row: Row, args, batch_size: int, queue) -> None:
    """Child process: build the row, run two steps, report the peak resident memory in MiB."""
    torch.set_num_threads(args.threads)
    import accelerate  # noqa: F401  (every row's process carries the same imports)

    step = build_row(row, args, batch_size)
    for _ in range(2):
        step()
    queue.put(peak_rss_mib())


def peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(row: Row, args, batch_size: int) -> float | None:
    if args.device.type == "cuda":
        return measure_cuda_memory(row, args, batch_size)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_probe, args=(row, args, batch_size, queue))
    proc.start()
    proc.join()
    return queue.get() if proc.exitcode == 0 and not queue.empty() else None


# --- load from other processes ------------------------------------------------------------------


class LoadMeter:
    """Share of the machine's CPU time used by other processes while the block ran."""

    def __enter__(self):
        self.busy0, self.total0 = self._stat()
        self.own0 = self._own()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy, total = self._stat()
        own = self._own() - self.own0
        ticks = max(1, total - self.total0)
        hz = os.sysconf("SC_CLK_TCK")
        self.others = max(0.0, ((busy - self.busy0) - own * hz) / ticks) if ticks > 1 else 0.0

    @staticmethod
    def _stat() -> tuple[int, int]:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except OSError:
            return 0, 0
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values) - idle, sum(values)

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


# --- timing -------------------------------------------------------------------------------------


def time_rows(rows: list[Row], warmup: int, repeats: int, device: torch.device) -> float:
    for row in rows:
        synchronize(device)
        t = time.perf_counter()
        for _ in range(max(warmup, getattr(row.step, "warmup", 0))):
            row.step()
        synchronize(device)
        row.warmup_s = time.perf_counter() - t
    with LoadMeter() as load:
        for _ in range(repeats):
            for row in rows:
                synchronize(device)
                faults, t = page_faults(), time.perf_counter()
                row.step()
                synchronize(device)
                row.times.append(time.perf_counter() - t)
                row.faults.append(page_faults() - faults)
    return load.others


def summarise(row: Row, images: int, flops: int, peak: float, memory: float | None) -> dict:
    median = statistics.median(row.times)
    return {
        "images_per_s": images / median,
        "step_s_median": median,
        "step_s_min": min(row.times),
        "step_s": row.times,
        "gflop_per_s": flops / median / 1e9,
        "fraction_of_peak": flops / median / peak,
        "warmup_s": row.warmup_s,
        "page_faults_per_step": statistics.median(row.faults) if row.faults else None,
        "peak_memory_mib": memory,
        "overrides": row.overrides,
        **({"notes": row.notes} if row.notes else {}),
    }


def bench_training(args, batch_size: int, extra: list[Row], peak: float, console: Console) -> dict:
    rows = [Row("eager", []), Row("default", []), *[Row(r.name, r.overrides) for r in extra]]
    if reference_supported(args.generator, args.discriminator):
        rows.insert(0, Row("reference", []))
    console.print(f"[bold]training step, batch {batch_size}[/]: building {len(rows)} rows")
    for row in rows:
        row.step = build_row(row, args, batch_size)
    others = time_rows(rows, args.warmup, args.repeats, args.device)
    flops = step_flops(rows[0].step)
    memory = {}
    if not args.no_memory:
        for row in rows:
            memory[row.name] = measure_memory(Row(row.name, row.overrides), args, batch_size)
    result = {
        "batch_size": batch_size,
        "flops_per_step": flops,
        "flops_per_image": flops / batch_size,
        "other_processes_cpu_share": others,
        "rows": {r.name: summarise(r, batch_size, flops, peak, memory.get(r.name)) for r in rows},
    }
    eager = result["rows"]["eager"]["images_per_s"]
    reference = result["rows"].get("reference", {}).get("images_per_s")
    for r in result["rows"].values():
        r["speedup_vs_eager"] = r["images_per_s"] / eager
        r["speedup_vs_reference"] = None if reference is None else r["images_per_s"] / reference
    return result


def bench_translate(args, batch_size: int, peak: float) -> dict:
    """G's forward pass as p2p-translate runs it, and in the training's memory format."""
    cfg = make_config(args, batch_size, ["loss.gan=none"])
    device = args.device
    torch.manual_seed(0)
    G_plain, _ = build_models(cfg)
    G_fast = build_models(cfg)[0]
    G_fast.load_state_dict(G_plain.state_dict())
    G_plain, G_fast = G_plain.to(device), G_fast.to(device)
    A, _ = batch(cfg, device)
    A_fast = A
    if uses_channels_last(cfg, device):
        G_fast, (A_fast,) = G_fast.to(memory_format=torch.channels_last), to_channels_last(A)
    set_inference_mode(G_plain, "paper"), set_inference_mode(G_fast, "paper")
    rows = [Row("p2p-translate", []), Row("default", [])]

    def run(G, x):
        def step():
            with torch.inference_mode():
                G(x)

        return step

    rows[0].step, rows[1].step = run(G_plain, A), run(G_fast, A_fast)
    others = time_rows(rows, args.warmup, args.repeats * 2, device)
    flops = step_flops(rows[0].step)
    result = {
        "batch_size": batch_size,
        "flops_per_image": flops / batch_size,
        "other_processes_cpu_share": others,
        "rows": {r.name: summarise(r, batch_size, flops, peak, None) for r in rows},
    }
    base = result["rows"]["p2p-translate"]["images_per_s"]
    for r in result["rows"].values():
        r["speedup_vs_eager"] = r["images_per_s"] / base
    return result


def host_sync_cost(args) -> dict:
    """What the run's per-step flags cost in one process (StepFlags: one collective of 3 flags on the
    device, queued for the host and read a step late), and how many blocking host syncs one optimised
    step makes (Engine.host_syncs)."""
    cfg = make_config(args, 1, [])
    engine = BenchEngine(cfg)
    flags, skipped = StepFlags(engine), torch.zeros(1, device=engine.device)
    n = 2000
    t = time.perf_counter()
    for i in range(n):
        flags.push(i, False, False, skipped)
        flags.read()
    us = (time.perf_counter() - t) / n * 1e6
    step = default_step_fn(cfg, args.device)
    step()  # warm-up
    before = step.engine.host_syncs
    for _ in range(3):
        step()
    return {
        "world_size": engine.world_size,
        "us_per_step": us,
        "host_syncs_per_step": (step.engine.host_syncs - before) / 3,
    }


# --- output -------------------------------------------------------------------------------------


def table(title: str, results: list[dict], memory: bool) -> Table:
    t = Table(title=title)
    for col in (
        "batch",
        "row",
        "images/s",
        "x reference",
        "x eager",
        "GFLOP/s",
        "of peak",
        "median ms",
        "min ms",
        "warm-up s",
        "page faults",
    ):
        t.add_column(col, justify="right")
    if memory:
        t.add_column("peak MiB", justify="right")
    t.add_column("notes")
    for res in results:
        for name, r in res["rows"].items():
            cells = [
                str(res["batch_size"]),
                name,
                f"{r['images_per_s']:.2f}",
                "-" if r.get("speedup_vs_reference") is None else f"{r['speedup_vs_reference']:.2f}",
                f"{r['speedup_vs_eager']:.2f}",
                f"{r['gflop_per_s']:.0f}",
                f"{r['fraction_of_peak']:.0%}",
                f"{r['step_s_median'] * 1e3:.0f}",
                f"{r['step_s_min'] * 1e3:.0f}",
                f"{r['warmup_s']:.1f}",
                "-" if r.get("page_faults_per_step") is None else f"{r['page_faults_per_step']:.0f}",
            ]
            if memory:
                cells.append("-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}")
            cells.append(r.get("notes", ""))
            t.add_row(*cells)
    return t


def parse_variant(text: str) -> Row:
    name, sep, spec = text.partition(":")
    if not sep or not name or name in ("reference", "eager", "default"):
        raise UserError(
            f"--variant {text!r}: expected NAME:section.key=value[,section.key=value...] "
            "(NAME not reference/eager/default)"
        )
    return Row(name, [s for s in spec.split(",") if s])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(args) -> str:
    if args.device.type == "cuda":
        return torch.cuda.get_device_name(args.device)
    return f"{cpu_name()}, {args.threads} threads"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[1, 4],
        help="batch sizes to time (default 1 4); the JSON's top-level figures are the first one's",
    )
    p.add_argument("--json", default=None, help="write all figures to this JSON file")
    p.add_argument("--size", type=int, default=256, help="image size (default 256)")
    p.add_argument("--generator", default="unet_256", help="model.generator (default unet_256)")
    p.add_argument("--discriminator", default="patch70", help="model.discriminator (default patch70)")
    p.add_argument("--ngf", type=int, default=64, help="model.ngf (default 64)")
    p.add_argument("--ndf", type=int, default=64, help="model.ndf (default 64)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row first (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per row (default 5; translate: twice that)")
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help=f"torch threads (default {torch.get_num_threads()}, this machine's default)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="an extra row: the default step with these config overrides (repeatable)",
    )
    p.add_argument(
        "--glibc-memory",
        action="store_true",
        help="leave glibc's malloc thresholds at their defaults (the reference implementation's process) "
        "instead of keeping freed memory as p2p-train does (p2p_dist/train/host_memory.py)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--no-translate", action="store_true", help="skip the inference rows")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the rows run (default auto: cuda when a GPU is visible, else cpu)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check that the bench runs: a tiny network (unet_128, 128 px, ngf/ndf 4), one warm-up "
        "and one timed step per row, no memory processes; the figures mean nothing",
    )
    return p


DRY_RUN = {"generator": "unet_128", "size": 128, "ngf": 4, "ndf": 4, "warmup": 1, "repeats": 1, "no_memory": True}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch (torch.cuda.is_available() is False)")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=max(Console().width, 132))
    if args.dry_run:
        vars(args).update(DRY_RUN)
    try:
        if any(b < 1 for b in args.batch_size) or args.repeats < 1 or args.warmup < 0 or args.threads < 1:
            raise UserError("--batch-size, --repeats and --threads must be positive, --warmup not negative")
        extra = [parse_variant(v) for v in args.variant]
        args.device = resolve_device(args.device)
        kept = False if args.glibc_memory else keep_freed_memory()
        torch.set_num_threads(args.threads)
        if args.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as p2p-train sets it without train.deterministic
        with tempfile.TemporaryDirectory(prefix="p2p-bench-") as scratch:
            args.scratch = scratch
            for b in args.batch_size:  # refuse bad overrides before any timing
                make_config(args, b, [])
                for row in extra:
                    make_config(args, b, row.overrides)
            peak = matmul_peak(n=512 if args.dry_run else 2048, device=args.device)
            console.print(
                f"float32 matmul peak: {peak / 1e9:.0f} GFLOP/s on {device_name(args)}; torch {torch.__version__}; "
                f"freed host memory {'kept (as p2p-train)' if kept else 'glibc default'}",
                soft_wrap=True,
            )
            training = [bench_training(args, b, extra, peak, console) for b in args.batch_size]
            translate = [] if args.no_translate else [bench_translate(args, b, peak) for b in args.batch_size]
            syncs = host_sync_cost(args)
    except UserError as exc:
        console.print(f"error: {exc}")
        return 2
    what = f"{args.generator} + {args.discriminator}, {args.size}x{args.size}, ngf {args.ngf}, ndf {args.ndf}"
    console.print(table(f"training step (D step + G step): {what}", training, not args.no_memory))
    if translate:
        console.print(
            table(f"inference (G forward, paper mode): {args.generator}, {args.size}x{args.size}", translate, False)
        )
    console.print(
        f"per-step flags (one collective of 3 flags on the device, read a step late, {syncs['world_size']} process): "
        f"{syncs['us_per_step']:.0f} us per step; {syncs['host_syncs_per_step']:g} blocking host "
        "sync(s) per training step"
    )
    busiest = max(r["other_processes_cpu_share"] for r in training + translate)
    if busiest > 0.1:
        console.print(
            f"[yellow]warning: other processes used up to {busiest:.0%} of the CPU while timing; "
            "absolute figures are low, the ratios between rows still hold[/]"
        )
    first = training[0]["rows"]
    summary = {
        "batch_size": args.batch_size[0],
        "images_per_s": first["default"]["images_per_s"],
        "eager_images_per_s": first["eager"]["images_per_s"],
        "speedup": first["default"]["speedup_vs_eager"],
        "reference_images_per_s": first.get("reference", {}).get("images_per_s"),
        "speedup_vs_reference": first["default"]["speedup_vs_reference"],
        "matmul_peak_gflop_per_s": peak / 1e9,
        "device": args.device.type,
        "device_name": device_name(args),
        "dry_run": args.dry_run,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "setup": {
            "generator": args.generator,
            "discriminator": args.discriminator,
            "size": args.size,
            "ngf": args.ngf,
            "ndf": args.ndf,
            "warmup": args.warmup,
            "repeats": args.repeats,
        },
        "training": training,
        "translate": translate,
        "host_syncs": syncs,
        "host_syncs_per_step": syncs["host_syncs_per_step"],
    }
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(summary, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
