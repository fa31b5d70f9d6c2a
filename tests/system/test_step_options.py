"""The step's options change how it runs, never what it computes: channels_last (train.memory_format)
and fused Adam against the plain step; the memory-format and channel-padding rules; the bf16 layout
of every layer; and the throughput bench's output."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers.env import ROOT, subprocess_env
from p2p_dist.config import load_config
from p2p_dist.models import build_generator
from p2p_dist.train.build import build_models, build_optimizer
from p2p_dist.train.engines.base import pads_channels, uses_channels_last
from p2p_dist.train.loop import StepModels, train_step

sys.path.insert(0, str(ROOT / "bench"))
from flops import step_flops  # noqa: E402  (bench/flops.py)

from helpers.engines import LocalEngine

SMALL = [
    "model.ngf=8",
    "model.ndf=8",
    "model.generator=unet_128",
    "data.crop_size=128",
    "data.load_size=128",
    "train.batch_size=2",
]


def close(a, b, tol=1e-4):
    return torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, a.abs().max().item()))


def to_channels_last(*items):
    return [
        x.to(memory_format=torch.channels_last)
        if isinstance(x, nn.Module)
        else x.contiguous(memory_format=torch.channels_last)
        for x in items
    ]


def test_channels_last_preserves_results():
    torch.manual_seed(0)
    G = build_generator("unet_128", ngf=8, dropout=False).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        y = G(x)
        G_cl, x_cl = to_channels_last(copy.deepcopy(G), x)
        y_cl = G_cl(x_cl)
    assert x_cl.is_contiguous(memory_format=torch.channels_last)
    assert close(y, y_cl)


def test_memory_format_auto_is_channels_last_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cfg = load_config(None, SMALL)
    assert not uses_channels_last(cfg, cpu) and uses_channels_last(cfg, cuda)
    cfg = load_config(None, [*SMALL, "train.memory_format=channels_last"])
    assert uses_channels_last(cfg, cpu) and uses_channels_last(cfg, cuda)
    cfg = load_config(None, [*SMALL, "train.memory_format=contiguous"])
    assert not uses_channels_last(cfg, cpu) and not uses_channels_last(cfg, cuda)


def test_channel_padding_is_for_mixed_precision_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cfg = load_config(None, SMALL)
    assert cfg.train.mixed_precision == "no" and not pads_channels(cfg, cuda) and not pads_channels(cfg, cpu)
    cfg = load_config(None, [*SMALL, "train.mixed_precision=bf16"])  # fp16 is refused without CUDA
    assert pads_channels(cfg, cuda) and not pads_channels(cfg, cpu)


def test_bf16_step_layout_no_float32_inside_the_networks():
    """As prepared for bf16 on CUDA (channels_last, padded ends), run here under CPU autocast: every conv
    and every BatchNorm of G and D gets a bf16 input in NHWC memory, so BatchNorm takes torch's
    channels-last bf16 kernels (cuDNN's BatchNorm is not selected for bf16 inputs) and nothing between
    the layers goes back to float32; the ends are the padded convs."""
    from p2p_dist.models.channel_pad import PaddedConv2d, PaddedConvTranspose2d, pad_channels

    cfg = load_config(None, SMALL)
    G, D = (m.to(memory_format=torch.channels_last) for m in build_models(cfg))
    assert pad_channels(G) == pad_channels(D) == 2
    seen = []

    def record(module, args):
        seen.append((module, args[0].dtype, args[0].is_contiguous(memory_format=torch.channels_last)))

    layers = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)
    for m in [*G.modules(), *D.modules()]:
        if isinstance(m, layers):
            m.register_forward_pre_hook(record)
    A = torch.rand(2, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(A)
        D(torch.cat([A, fake], 1))
    assert fake.dtype == torch.bfloat16 and fake.is_contiguous(memory_format=torch.channels_last)
    assert len(seen) == sum(isinstance(m, layers) for m in [*G.modules(), *D.modules()])
    firsts = [m for m, *_ in seen if isinstance(m, PaddedConv2d) and m.pad_in]
    assert len(firsts) == 2 and sum(isinstance(m, PaddedConvTranspose2d) for m, *_ in seen) == 1
    inner = [(m, dtype, nhwc) for m, dtype, nhwc in seen if m not in firsts]  # the ends cast their own input
    assert all(dtype == torch.bfloat16 and nhwc for _, dtype, nhwc in inner), inner
    assert sum(isinstance(m, nn.BatchNorm2d) for m, *_ in inner) == 14  # 11 in unet_128, 3 in patch70


def test_fused_adam_follows_config():
    cfg = load_config(None, SMALL)
    G, _ = build_models(cfg)
    assert build_optimizer(G, cfg).defaults["fused"] is True
    cfg = load_config(None, [*SMALL, "optim.fused=false"])
    assert not build_optimizer(G, cfg).defaults["fused"]


def run_steps(overrides, fast: bool, steps: int = 2):
    # channels_last and fused Adam against NCHW and Adam's default kernels
    cfg = load_config(None, [*SMALL, "model.dropout=false", "train.memory_format=channels_last", *overrides])
    torch.manual_seed(0)
    G, D = build_models(cfg)
    if fast:
        G, D = to_channels_last(G, D)
        opts = {"G": build_optimizer(G, cfg), "D": build_optimizer(D, cfg)}
    else:  # the straightforward baseline: NCHW, Adam's default kernels
        opts = {
            n: torch.optim.Adam(m.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2))
            for n, m in (("G", G), ("D", D))
        }
    g = torch.Generator().manual_seed(1)
    A = torch.rand(2, 3, 128, 128, generator=g) * 2 - 1
    B = torch.rand(2, 3, 128, 128, generator=g) * 2 - 1
    if fast:
        A, B = to_channels_last(A, B)
    start = [p.detach().clone() for p in list(G.parameters()) + list(D.parameters())]
    history = []
    for _ in range(steps):
        losses = train_step(LocalEngine(opts), StepModels(G, D, D), cfg.loss, A, B).losses
        history.append({k: v.item() for k, v in losses.items()})
    params = list(G.parameters()) + list(D.parameters())
    updates = torch.cat([(p.detach() - s).flatten() for p, s in zip(params, start)])
    return history, updates


def test_default_step_gives_the_plain_steps_losses_and_updates():
    plain, plain_update = run_steps([], fast=False)
    fast, fast_update = run_steps([], fast=True)
    for a, b in zip(plain, fast):
        assert a.keys() == b.keys() == {"D_fake", "D_real", "G_GAN", "G_L1"}
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-4), k
    cosine = torch.nn.functional.cosine_similarity(plain_update, fast_update, dim=0)
    assert cosine > 0.999, f"the optimised step moved the weights elsewhere (cosine {cosine:.5f})"
    assert (plain_update - fast_update).abs().max() < 5e-4  # at most ~1 Adam step of lr 2e-4 on near-zero grads


def test_step_flops_counts_convolutions():
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 16, 16)
    assert step_flops(lambda: conv(x)) == 2 * 2 * 8 * 16 * 16 * 4 * 9


def run_bench(tmp_path, *extra):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "train_throughput.py"),
            "--generator",
            "unet_128",
            "--size",
            "128",
            "--ngf",
            "8",
            "--ndf",
            "8",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--threads",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(COLUMNS="160"),
        cwd=tmp_path,
        timeout=300,
    )


def test_bench_runs_small_and_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_bench(tmp_path, "--batch-size", "2", "--json", str(out), "--variant", "unfused:optim.fused=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["batch_size"] == 2 and data["images_per_s"] > 0 and data["eager_images_per_s"] > 0
    assert data["speedup"] == pytest.approx(data["images_per_s"] / data["eager_images_per_s"])
    run = data["training"][0]
    assert set(run["rows"]) == {"reference", "eager", "default", "unfused"}
    assert data["speedup_vs_reference"] == pytest.approx(data["images_per_s"] / data["reference_images_per_s"])
    assert run["flops_per_image"] > 0 and data["matmul_peak_gflop_per_s"] > 0
    for row in run["rows"].values():
        assert row["peak_memory_mib"] > 0 and row["fraction_of_peak"] > 0 and len(row["step_s"]) == 1
        assert row["page_faults_per_step"] >= 0
    assert set(data["translate"][0]["rows"]) == {"p2p-translate", "default"}
    assert data["device"] == "cpu"
    assert "images/s" in proc.stdout and not list(tmp_path.glob(".*tmp*"))


def test_bench_refuses_a_bad_variant_in_one_line(tmp_path):
    proc = run_bench(tmp_path, "--variant", "nchw:train.no_such_key=1", "--no-memory", "--no-translate")
    assert proc.returncode == 2
    assert "no_such_key" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_bench_dry_run_and_cuda_refusal(tmp_path):
    out = tmp_path / "dry.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "train_throughput.py"),
            "--dry-run",
            "--threads",
            "1",
            "--batch-size",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["dry_run"] and data["setup"]["generator"] == "unet_128" and data["setup"]["ngf"] == 4
    assert set(data["training"][0]["rows"]) == {"reference", "eager", "default"}
    if not torch.cuda.is_available():
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--device", "cuda", "--dry-run"],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            cwd=tmp_path,
            timeout=300,
        )
        assert proc.returncode == 2 and "no CUDA GPU" in proc.stdout and "Traceback" not in proc.stderr
