"""Engines as plug-ins, one host sync per step, the GPU-facing training options tested on CPU:
the engine registry, no import cycles, train.engine / model.sync_bn / fp16 validation, the masked
G step, seeds per rank, strict determinism, rank 0's resume point, DeepSpeed's fp32 reduction."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from helpers.env import ROOT
from p2p_dist.config import ConfigError, TrainConfig, load_config
from p2p_dist.errors import UserError
from p2p_dist.models.statedict import unwrap_module
from p2p_dist.train import checkpoint as ckpt
from p2p_dist.train.build import build_models
from p2p_dist.train.engines import build_engine, engine_names, resolve_engine_name
from p2p_dist.train.engines.base import Engine, StepModels
from p2p_dist.train.engines.deepspeed_config import resolve_ds_config
from p2p_dist.train.health import HealthMonitor
from p2p_dist.train.loop import train_step
from p2p_dist.train.run import configure_determinism, rank_seed

TINY = ["model.ngf=8", "model.ndf=8", "model.generator=unet_128", "data.crop_size=128", "data.load_size=128"]


def tiny(*overrides):
    return load_config(None, [*TINY, *overrides])


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 128, 128, generator=g) * 2 - 1, torch.rand(1, 3, 128, 128, generator=g) * 2 - 1


# --- the package's shape --------------------------------------------------------------------------


def test_every_engine_module_is_a_train_engine_choice():
    choices = dataclasses.fields(TrainConfig)
    engine = next(f for f in choices if f.name == "engine").metadata["choices"]
    assert sorted(engine) == sorted(["auto", *engine_names()])
    assert resolve_engine_name("auto") == "ddp"  # no DeepSpeed accelerate config in this environment


def module_imports(path: Path, package_root: Path) -> set[str]:
    """Modules of p2p_dist imported at module level (function-level imports are lazy by design)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("p2p_dist"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("p2p_dist")}
    return found


def test_no_import_cycle_in_p2p_dist():
    root = ROOT / "p2p_dist"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imp in module_imports(path, root):
            while imp and imp not in modules:  # `from p2p_dist.x import name` names a module or an attribute
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        graph[name] = deps
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [node, dep]))
            if dep not in state:
                visit(dep, trail + [node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
    assert "p2p_dist.train.engines.ddp" in graph


# --- configuration --------------------------------------------------------------------------------


def test_engine_key_is_validated_and_printed():
    with pytest.raises(ConfigError, match="train.engine: 'fsdp' is not allowed; choose one of: auto, ddp, deepspeed"):
        tiny("train.engine=fsdp")
    assert "engine: ddp" in tiny("train.engine=ddp").to_yaml()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_fp16_needs_cuda_is_one_config_error():
    with pytest.raises(ConfigError, match="train.mixed_precision=fp16 needs a CUDA GPU"):
        tiny("train.mixed_precision=fp16")


class FakeRanks(Engine):
    """The base engine's shared code with a chosen rank and world size (no process group)."""

    def __init__(self, cfg, rank=0, world_size=1, broadcast=None):
        super().__init__(cfg)
        self._rank, self._world, self._broadcast = rank, world_size, broadcast

    rank = property(lambda self: self._rank)
    world_size = property(lambda self: self._world)

    def max_over_ranks(self, values):
        return values

    def broadcast_object(self, obj):
        return obj if self._broadcast is None else self._broadcast


def test_sync_bn_is_refused_on_cpu_with_several_processes_and_converts_otherwise():
    G, D = build_models(tiny())
    with pytest.raises(ConfigError, match="model.sync_bn=true needs CUDA GPUs"):
        FakeRanks(tiny("model.sync_bn=true"), world_size=2).convert_sync_bn(G, D)
    assert FakeRanks(tiny(), world_size=2).convert_sync_bn(G, D) == [G, D]  # default false: untouched
    G2, D2 = FakeRanks(tiny("model.sync_bn=true")).convert_sync_bn(G, D)  # one process: the same statistics
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in G2.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in D2.modules())
    G2.train()
    assert G2(batch()[0]).shape == (1, 3, 128, 128)


def test_deepspeed_refuses_grad_accum_in_one_line_naming_the_key():
    from p2p_dist.train.engines.deepspeed import DeepSpeedEngine
    from p2p_dist.train.engines.deepspeed_config import DeepSpeedRequest

    with pytest.raises(ConfigError, match=r"^train.grad_accum=2 applies to the DDP engine; .*ZeRO-2") as err:
        DeepSpeedEngine(tiny("train.grad_accum=2"), DeepSpeedRequest(config_file=None, zero_stage=2))
    assert "\n" not in str(err.value)


def test_deepspeed_reduces_gradients_in_fp32():
    bf16 = tiny("train.mixed_precision=bf16")
    ds = resolve_ds_config({"torch_autocast": {"enabled": "auto", "dtype": "auto"}}, bf16, 2)
    assert ds["torch_autocast"]["lower_precision_safe_modules"] == []
    with pytest.raises(ConfigError, match="lower_precision_safe_modules=.*fp32"):
        resolve_ds_config(
            {"torch_autocast": {"enabled": True, "lower_precision_safe_modules": ["torch.nn.Conv2d"]}},
            tiny("train.mixed_precision=bf16"),
            1,
        )


# --- seeds, determinism, resume point -------------------------------------------------------------


def test_ranks_draw_different_dropout_from_one_seed():
    seeds = {rank_seed(0, r) for r in range(8)}
    assert len(seeds) == 8 and rank_seed(0, 1) == rank_seed(0, 1) and rank_seed(1, 0) != rank_seed(0, 0)
    masks = []
    for rank in (0, 1):
        torch.manual_seed(rank_seed(0, rank))
        masks.append(torch.nn.functional.dropout(torch.ones(1000), 0.5))
    assert not torch.equal(masks[0], masks[1])


def test_deterministic_mode_is_strict():
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    try:
        configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def write_checkpoint(out: Path, step: int) -> Path:
    tmp = ckpt.temp_dir_for(out, step)
    tmp.mkdir(parents=True)
    return ckpt.finalize(out, step, ckpt.TrainerState(step=step), keep=5)


def test_rank_0_chooses_the_resume_point_and_a_rank_that_cannot_see_it_names_the_filesystem(tmp_path):
    out = tmp_path / "run"
    write_checkpoint(out, 2)
    newest = write_checkpoint(out, 4)
    assert ckpt.Checkpointer(FakeRanks(tiny()), out, every=1, keep=3).resume_point("auto") == newest
    # rank 1 gets rank 0's choice, and its own view of the disk lacks that folder
    elsewhere = tmp_path / "other-machine" / "checkpoints" / "step-0000004"
    engine = FakeRanks(tiny(), rank=1, world_size=2, broadcast=(str(elsewhere), None))
    with pytest.raises(UserError, match=r"rank 1 does not see checkpoint .* shared by all processes") as info:
        ckpt.Checkpointer(engine, out, every=1, keep=3).resume_point("auto")
    assert len(str(info.value).splitlines()) == 1
    assert (
        ckpt.Checkpointer(FakeRanks(tiny()), out, every=1, keep=3).last_good_before(3)
        == out / "checkpoints" / "step-0000002"
    )


# --- host syncs and the masked G step (the real Accelerate engine, one process) -------------------


@pytest.fixture(scope="module")
def engine():
    e = build_engine(tiny("train.memory_format=contiguous"))
    yield e


@pytest.fixture
def health(engine):
    """The health monitor on G, fed by the engine's gradient norms (as RunExtras wires it)."""
    torch.manual_seed(0)
    models = engine.prepare(*build_models(engine.cfg))
    monitor = HealthMonitor(engine.cfg.train.health, unwrap_module(models.G), engine.device)
    engine.on_grad_norm = monitor.add_grad_norm
    yield models, monitor
    engine.on_grad_norm = None
    monitor.close()


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_the_step_reads_nothing_on_the_host_and_its_flags_arrive_a_step_late(engine, health, micro_batches):
    """train_step masks both updates on the device: no host read, health figures included; the run's
    flags (stop, time limit, the step's non-finite flag; Run._step) reach the host a step late without
    a sync, or at once with one (`drain`, where the run syncs anyway)."""
    from p2p_dist.train.accounting import Agreed, StepFlags

    models, _ = health
    flags = StepFlags(engine)
    A, B = (torch.cat([x] * micro_batches) for x in batch())
    train_step(engine, models, engine.cfg.loss, A, B, micro_batches=micro_batches)  # warm-up
    before = engine.host_syncs
    for step in range(1, 4):
        result = train_step(engine, models, engine.cfg.loss, A, B, micro_batches=micro_batches)
        flags.push(step, stop=step == 2, time_up=False, skipped=result.skipped)
        late = flags.read()
        assert late == ([] if step == 1 else [(step - 1, Agreed(step == 3, False, False))])
    assert engine.host_syncs == before
    assert flags.read(drain=True) == [(3, Agreed(False, False, False))] and engine.host_syncs == before + 1


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_the_gradient_norm_is_the_norm_of_the_gradient_each_update_applies(engine, micro_batches):
    """One norm per network and step, taken after the last micro-batch's backward pass (the
    accumulated gradient) and before the update zeroes it."""
    models = engine.prepare(*build_models(engine.cfg))
    plain = {"G": unwrap_module(models.G), "D": unwrap_module(models.D)}
    seen = []

    def record(name, norm):
        grads = [p.grad.flatten() for p in plain[name].parameters() if p.grad is not None]
        seen.append((name, norm.item(), torch.cat(grads).double().norm().item()))

    engine.on_grad_norm = record
    try:
        A, B = (torch.cat([x] * micro_batches) for x in batch())
        train_step(engine, models, engine.cfg.loss, A, B, micro_batches=micro_batches)
    finally:
        engine.on_grad_norm = None
    assert [name for name, _, _ in seen] == ["D", "G"]
    for _, norm, expected in seen:
        assert norm == pytest.approx(expected, rel=1e-5) and norm > 0


def top_level_ops(fn) -> int:
    """aten ops that `fn` dispatches from Python (not those that other aten ops call)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    aten = [ev for ev in prof.events() if ev.name.startswith("aten::")]
    return sum(ev.cpu_parent is None or not ev.cpu_parent.name.startswith("aten::") for ev in aten)


def test_the_gradient_norms_cost_four_ops_per_network_whatever_its_parameter_count(engine, health):
    models, _ = health
    A, B = batch()
    step = lambda: train_step(engine, models, engine.cfg.loss, A, B)  # noqa: E731
    step()
    on = top_level_ops(step)
    observer, engine.on_grad_norm = engine.on_grad_norm, None
    off = top_level_ops(step)
    engine.on_grad_norm = observer
    assert on - off == 2 * 4  # foreach norm, stack, norm, running max; G has 37 parameters, D 13


class NaNAfter(torch.nn.Module):
    def __init__(self, D):
        super().__init__()
        self.D = D

    def forward(self, x):
        return self.D(x) * float("nan")


def test_a_non_finite_g_loss_after_ds_update_leaves_g_untouched_without_a_host_sync(engine):
    torch.manual_seed(0)
    models = engine.prepare(*build_models(engine.cfg))
    assert engine.masked_step_supported("G")  # fused Adam: found_inf
    G, D = unwrap_module(models.G), unwrap_module(models.D)
    A, B = batch()
    train_step(engine, models, engine.cfg.loss, A, B)  # Adam has state now
    g0 = [p.detach().clone() for p in G.parameters()]
    d0 = [p.detach().clone() for p in D.parameters()]
    steps0 = [s["step"].clone() for s in engine._inner("G").state.values()]
    before = engine.host_syncs
    broken = StepModels(models.G, models.D, NaNAfter(models.D_frozen))
    result = train_step(engine, broken, engine.cfg.loss, A, B)
    assert engine.host_syncs == before and result.skipped.item() == 1.0
    assert all(torch.equal(a, b) for a, b in zip(g0, G.parameters())), "the masked G step changed G"
    assert [s["step"] for s in engine._inner("G").state.values()] == steps0, "Adam's step count moved"
    assert not all(torch.equal(a, b) for a, b in zip(d0, D.parameters())), "D's step ran (its loss was finite)"


# --- the loss window and the non-finite guard -----------------------------------------------------


def test_loss_window_means_over_the_window_and_restarts():
    from p2p_dist.train.accounting import LossWindow

    engine = FakeRanks(tiny())
    window = LossWindow(engine)
    window.add({"G_L1": torch.tensor(2.0), "D_real": torch.tensor(1.0)}, skipped=torch.zeros(1))
    window.add({"G_L1": torch.tensor(float("nan")), "D_real": torch.tensor(5.0)}, skipped=torch.ones(1))
    window.add({"G_L1": torch.tensor(4.0), "D_real": torch.tensor(3.0)}, skipped=torch.zeros(1))
    assert window.means() == {"D_real": 2.0, "G_L1": 3.0} and engine.host_syncs == 1
    assert window.means() is None  # the window restarted empty


def test_guard_counts_skipped_steps_and_stops_after_the_limit():
    from p2p_dist.train.accounting import NonFiniteError, NonFiniteGuard

    lines = []
    guard = NonFiniteGuard(3, lines.append, lambda step: f"ckpt<={step}", causes="x")
    guard.after_step(1, skipped=True)
    guard.after_step(2, skipped=False)  # a good step ends the streak
    assert not guard.in_streak and guard.total == 1
    guard.after_step(3, skipped=True)
    guard.after_step(4, skipped=True)
    assert lines == [
        "step 1: non-finite loss, step skipped (1 in a row)",
        "step 3: non-finite loss, step skipped (1 in a row)",
        "step 4: non-finite loss, step skipped (2 in a row)",
    ]
    with pytest.raises(NonFiniteError, match=r"stopped at step 5: 3 consecutive .* last good checkpoint: ckpt<=2"):
        guard.after_step(5, skipped=True)


def test_ddp_engine_never_imports_deepspeed():
    """Accelerate's unwrap_model imports deepspeed where it is installed, and deepspeed then prints
    "Setting accelerator to CPU" on every rank of a plain DDP run; the DDP engine unwraps itself."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from p2p_dist.config import load_config\n"
        "from p2p_dist.models.statedict import unwrap_module\n"
        "from p2p_dist.train.build import build_models\n"
        "from p2p_dist.train.engines import build_engine\n"
        f"cfg = load_config(None, {TINY!r} + ['train.engine=ddp'])\n"
        "e = build_engine(cfg)\n"
        "models = e.prepare(*build_models(cfg))\n"
        "plain = unwrap_module(models.G)\n"
        "assert not isinstance(plain, torch.nn.parallel.DistributedDataParallel)\n"
        "assert plain is unwrap_module(plain)\n"
        "print('deepspeed' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stdout
    assert "Setting accelerator" not in proc.stderr, proc.stderr[-3000:]
