"""The speed options change how the step runs, never what it computes: GEMM-routed convs, channels_last,
fused Adam and the whole default step against the plain one; the start-up kernel choice (measured on
rank 0, shared, recorded and reused); and the throughput bench's output."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers.env import ROOT, free_port, subprocess_env
from p2p_dist.config import load_config
from p2p_dist.models import build_generator
from p2p_dist.train.build import build_models, build_optimizer
from p2p_dist.train.loop import StepModels, train_step
from p2p_dist.train.speed import (
    SPEED_FILE,
    GemmConv2d,
    GemmConvTranspose2d,
    SpeedPlan,
    apply_speed_options,
    plan_speed,
    route_weight_bound_convs,
    to_channels_last,
    weight_bound,
)

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


@pytest.mark.parametrize("transposed", [False, True])
def test_gemm_convolution_matches_the_default_forward_and_backward(transposed):
    torch.manual_seed(0)
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    ref = cls(32, 16, 4, 2, 1, bias=True)
    gemm = copy.deepcopy(ref)
    gemm.__class__ = GemmConvTranspose2d if transposed else GemmConv2d
    x = torch.randn(2, 32, 4, 4)
    xr, xg = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yg = ref(xr), gemm(xg)
    assert yr.shape == yg.shape and close(yr, yg)
    g = torch.randn_like(yr)
    yr.backward(g)
    yg.backward(g)
    assert close(xr.grad, xg.grad)
    assert close(ref.weight.grad, gemm.weight.grad) and close(ref.bias.grad, gemm.bias.grad)


def test_gemm_convolution_skips_gradients_nobody_asked_for():
    conv = nn.Conv2d(8, 8, 4, 2, 1, bias=False)
    conv.__class__ = GemmConv2d
    conv.weight.requires_grad_(False)
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is None


def test_routing_picks_the_inner_levels_keeps_parameters_and_draws_no_random_numbers():
    torch.manual_seed(0)
    G = build_generator("unet_128", ngf=8)
    ref = copy.deepcopy(G)
    buffers = {n: b.clone() for n, b in G.named_buffers()}
    x = torch.randn(2, 3, 128, 128)
    rng = torch.get_rng_state()
    routed = route_weight_bound_convs(G, x)
    assert torch.equal(torch.get_rng_state(), rng), "the probe must not draw random numbers"
    assert all(torch.equal(b, buffers[n]) for n, b in G.named_buffers()), "the probe must not touch BN statistics"
    assert G.training, "train/eval flags are restored"
    # weight-bound: the innermost levels (tiny feature maps); the outermost full-size levels stay with oneDNN
    assert "down.6.1" in routed and "up.6.1" in routed
    assert "down.0.0" not in routed and "up.0.1" not in routed
    assert G.state_dict().keys() == ref.state_dict().keys()
    assert all(isinstance(dict(G.named_modules())[n], (GemmConv2d, GemmConvTranspose2d)) for n in routed)
    G.eval(), ref.eval()
    with torch.no_grad():
        assert close(G(x), ref(x))


def test_weight_bound_rule():
    conv = nn.Conv2d(512, 512, 4, 2, 1)
    assert weight_bound(conv, torch.Size([1, 512, 8, 8]), torch.Size([1, 512, 4, 4]))
    assert not weight_bound(conv, torch.Size([16, 512, 64, 64]), torch.Size([16, 512, 32, 32]))


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


def test_fused_adam_follows_config():
    cfg = load_config(None, SMALL)
    G, _ = build_models(cfg)
    assert build_optimizer(G, cfg).defaults["fused"] is True
    cfg = load_config(None, [*SMALL, "optim.fused=false", "optim.foreach=true"])
    opt = build_optimizer(G, cfg)
    assert not opt.defaults["fused"] and opt.defaults["foreach"] is True


def test_speed_options_respect_device_and_config():
    cfg = load_config(None, [*SMALL, "train.cpu_conv_kernels=gemm"])
    G, D = build_models(cfg)
    G, D, routed = apply_speed_options(cfg, G, D, torch.device("cpu"))
    assert routed and all(n.startswith(("G.", "D.")) for n in routed)
    # memory_format=auto: the plain step's layout on CPU, channels_last where CUDA runs
    assert not G.down[1][1].weight.is_contiguous(memory_format=torch.channels_last)
    assert plan_speed(cfg, G, D, torch.device("cuda")).memory_format == "channels_last"
    cfg = load_config(None, [*SMALL, "train.memory_format=channels_last"])
    G = apply_speed_options(cfg, *build_models(cfg), torch.device("cpu"))[0]
    assert G.down[1][1].weight.is_contiguous(memory_format=torch.channels_last)
    for override in ("train.cpu_conv_kernels=onednn", "train.compile=true", "train.mixed_precision=bf16"):
        cfg = load_config(None, [*SMALL, override])
        assert apply_speed_options(cfg, *build_models(cfg), torch.device("cpu"), say=lambda s: None)[2] == []
    cfg = load_config(None, SMALL)
    assert plan_speed(cfg, *build_models(cfg), torch.device("cuda")).gemm_layers == []  # CPU kernels only


def test_auto_measures_on_the_real_shapes_records_and_reuses(tmp_path):
    cfg = load_config(None, SMALL)
    G, D = build_models(cfg)
    rng = torch.get_rng_state()
    plan = plan_speed(cfg, G, D, torch.device("cpu"), tmp_path)
    assert torch.equal(torch.get_rng_state(), rng), "measuring draws no random numbers from the global RNG"
    assert plan.source == "measured" and plan.timings and (tmp_path / SPEED_FILE).is_file()
    for name, row in plan.timings.items():
        assert row["onednn_ms"] > 0 and row["gemm_ms"] > 0 and row["kernel"] in ("onednn", "gemm")
        # the layers that won alone, routed where the whole-step check kept them
        assert (name in plan.gemm_layers) == (row["kernel"] == "gemm" and plan.step_check["kept"])
        assert row["input"][0] == cfg.train.batch_size and row["input"][-1] < cfg.data.crop_size
    if any(row["kernel"] == "gemm" for row in plan.timings.values()):
        assert plan.step_check["onednn_ms"] > 0 and plan.step_check["gemm_ms"] > 0
    assert any(n.startswith("G.") for n in plan.timings)
    # a resume reads the choice back instead of timing again (another timing could choose otherwise)
    record = json.loads((tmp_path / SPEED_FILE).read_text())
    record["gemm_layers"] = ["G.down.1.1"]  # what an earlier measurement might have said
    (tmp_path / SPEED_FILE).write_text(json.dumps(record))
    G2, D2 = build_models(cfg)
    said = []
    G2, D2, routed = apply_speed_options(cfg, G2, D2, torch.device("cpu"), tmp_path, say=said.append)
    assert routed == ["G.down.1.1"] and isinstance(G2.down[1][1], GemmConv2d)
    assert len(said) == 1 and "reused from" in said[0]
    # another batch size has other shapes: measured again
    cfg4 = load_config(None, [*SMALL, "train.batch_size=4"])
    assert plan_speed(cfg4, *build_models(cfg4), torch.device("cpu"), tmp_path).source == "measured"


def test_the_whole_step_overrules_layers_that_win_alone(tmp_path, monkeypatch):
    from p2p_dist.train import speed

    cfg = load_config(None, SMALL)
    # every candidate layer wins alone, and the step with them is slower: all stay with oneDNN
    monkeypatch.setattr(
        speed,
        "measure_layers",
        lambda m, shapes, fmt: {n: {"kernel": "gemm", "onednn_ms": 9, "gemm_ms": 1} for n in shapes},
    )
    asked = []
    monkeypatch.setattr(
        speed, "time_step", lambda models, names, fmt: asked.append(names) or {"onednn": 100.0, "gemm": 120.0}
    )
    said = []
    G, D, routed = apply_speed_options(cfg, *build_models(cfg), torch.device("cpu"), tmp_path, say=said.append)
    assert routed == [] and asked and set(asked[0]) == set(speed._read_plan(tmp_path / SPEED_FILE).timings)
    assert json.loads((tmp_path / SPEED_FILE).read_text())["step_check"] == {
        "onednn_ms": 100.0,
        "gemm_ms": 120.0,
        "kept": False,
    }
    assert len(said) == 1 and "1.20x the time without: all stay with oneDNN" in said[0]
    # faster by more than the margin: kept
    monkeypatch.setattr(speed, "time_step", lambda models, names, fmt: {"onednn": 100.0, "gemm": 90.0})
    (tmp_path / SPEED_FILE).unlink()
    plan = plan_speed(cfg, *build_models(cfg), torch.device("cpu"), tmp_path)
    assert plan.step_check["kept"] and plan.gemm_layers == list(plan.timings)


def test_the_step_timing_leaves_models_gradients_and_rng_alone():
    from p2p_dist.train.speed import time_step

    cfg = load_config(None, SMALL)
    G, D = build_models(cfg)
    state = {k: v.clone() for k, v in {**G.state_dict(), **{"D." + k: v for k, v in D.state_dict().items()}}.items()}
    rng = torch.get_rng_state()
    x, y = torch.zeros(2, 3, 128, 128), torch.zeros(2, 6, 128, 128)
    t = time_step({"G": (G, x), "D": (D, y)}, ["G.down.5.1", "D.2"], torch.contiguous_format)
    assert t["onednn"] > 0 and t["gemm"] > 0
    assert torch.equal(torch.get_rng_state(), rng)
    after = {**G.state_dict(), **{"D." + k: v for k, v in D.state_dict().items()}}
    assert all(torch.equal(after[k], v) for k, v in state.items()), "weights and BatchNorm statistics unchanged"
    assert all(p.grad is None for p in [*G.parameters(), *D.parameters()])
    assert not any(isinstance(m, (GemmConv2d, GemmConvTranspose2d)) for m in [*G.modules(), *D.modules()])


def test_bf16_on_a_cpu_without_native_bf16_warns_in_one_line_with_the_factor():
    plan = SpeedPlan(
        device="cpu",
        memory_format="contiguous",
        cpu_conv_kernels="auto",
        batch_size=1,
        image_size=256,
        bf16_speed_factor=0.08,
        cpu_capability="AVX2",
    )
    (line,) = plan.messages()
    assert line.startswith("warning: train.mixed_precision=bf16") and "12.5x slower" in line and "\n" not in line
    assert dataclasses.replace(plan, bf16_speed_factor=3.2).messages() == []
    cfg = load_config(None, [*SMALL, "train.mixed_precision=bf16"])
    measured = plan_speed(cfg, *build_models(cfg), torch.device("cpu"))
    assert measured.bf16_speed_factor > 0 and measured.gemm_layers == []  # oneDNN's bf16 kernels stay


RANKS_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from p2p_dist.config import load_config
from p2p_dist.train import speed
from p2p_dist.train.build import build_models
dist.init_process_group("gloo")
rank = dist.get_rank()
if rank == 1:  # this rank would measure otherwise: it must take rank 0's choice
    speed.measure_layers = lambda m, shapes, fmt: {n: {"kernel": "gemm", "onednn_ms": 9, "gemm_ms": 1}
                                                   for n in shapes}
cfg = load_config(None, sys.argv[2:])
plan = speed.plan_speed(cfg, *build_models(cfg), torch.device("cpu"), sys.argv[1] if rank == 0 else None)
print(json.dumps({"rank": rank, "gemm": plan.gemm_layers, "timings": sorted(plan.timings)}))
dist.destroy_process_group()
"""


def test_ranks_use_rank_0s_measurement(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), *SMALL],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=subprocess_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(r), WORLD_SIZE="2"),
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    plans = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert plans[0]["gemm"] == plans[1]["gemm"] and plans[0]["timings"] == plans[1]["timings"]
    assert json.loads((tmp_path / SPEED_FILE).read_text())["gemm_layers"] == plans[0]["gemm"]


def run_steps(overrides, fast: bool, steps: int = 2):
    # GEMM routing by the fixed rule and channels_last: both kernel paths and both layouts in one step
    cfg = load_config(
        None,
        [*SMALL, "model.dropout=false", "train.cpu_conv_kernels=gemm", "train.memory_format=channels_last", *overrides],
    )
    torch.manual_seed(0)
    G, D = build_models(cfg)
    if fast:
        G, D, routed = apply_speed_options(cfg, G, D, torch.device("cpu"))
        opts = {"G": build_optimizer(G, cfg), "D": build_optimizer(D, cfg)}
    else:  # the straightforward baseline: NCHW, oneDNN everywhere, Adam's default kernels
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
    proc = run_bench(
        tmp_path, "--batch-size", "2", "--json", str(out), "--variant", "onednn:train.cpu_conv_kernels=onednn"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["batch_size"] == 2 and data["images_per_s"] > 0 and data["eager_images_per_s"] > 0
    assert data["speedup"] == pytest.approx(data["images_per_s"] / data["eager_images_per_s"])
    run = data["training"][0]
    assert set(run["rows"]) == {"eager", "default", "onednn"}
    assert run["flops_per_image"] > 0 and data["matmul_peak_gflop_per_s"] > 0
    for row in run["rows"].values():
        assert row["peak_memory_mib"] > 0 and row["fraction_of_peak"] > 0 and len(row["step_s"]) == 1
        assert row["page_faults_per_step"] >= 0
    assert data["host_memory"] == "retain" and data["host_memory_outcome"].startswith("freed memory kept")
    assert set(data["translate"][0]["rows"]) == {"p2p-translate", "default"}
    assert data["device"] == "cpu" and data["bf16_vs_fp32_matmul"] > 0
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
    assert set(data["training"][0]["rows"]) == {"eager", "default"}
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
