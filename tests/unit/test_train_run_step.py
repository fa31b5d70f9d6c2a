"""The run's step (`Run._step` + `Run._settle`) on a real `Run` over real shards: no host read in a
steady-state step, its op budget, bit-exactness with main's step semantics written out plainly, and
`train.compile` without graph breaks."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch

from p2p_dist.config import load_config
from p2p_dist.losses import GANLoss, l1_loss
from p2p_dist.models.statedict import unwrap_module
from p2p_dist.train.build import build_models, build_optimizer
from p2p_dist.train.engines import build_engine
from p2p_dist.train.extras import RunExtras
from p2p_dist.train.loop import train_step
from p2p_dist.train.run import Run, lr_factor

TINY = ["model.ngf=8", "model.ndf=8", "model.generator=unet_128", "data.crop_size=128", "data.load_size=128"]
QUIET = ["train.sample_every=0", "train.checkpoint_every=100", "data.num_workers=0", "train.batch_size=2"]


def tiny_run(scenes_data, out, *overrides) -> Run:
    """The default config on a tiny network; logs and checkpoints only at the end (unless overridden)."""
    cfg = load_config(None, [f"data.train={scenes_data}/train", f"train.output_dir={out}", *TINY, *QUIET, *overrides])
    return Run(cfg)


class Steps:
    """Wraps a Run's per-step methods: `iteration` is the loop iteration under way (1-based: the step
    it computes), set when the iteration fetches its batch; `on_batch(iteration, (A, B))` may replace
    the batch; `before_step(iteration)` runs just before `Run._step`."""

    def __init__(self, run: Run, on_batch=None, before_step=None):
        self.iteration = 0
        fetch, step = run._next_step_batch, run._step

        def next_step_batch(batches):
            self.iteration = run.state.step + 1
            batch = fetch(batches)
            return on_batch(self.iteration, batch) if on_batch else batch

        def run_step(*args):
            if before_step:
                before_step(self.iteration)
            return step(*args)

        run._next_step_batch, run._step = next_step_batch, run_step


# --- no host read in a steady-state step, and the op budget -----------------------------------------

HOST_READS = {  # what makes the host wait for a device value, or copies a host value to the device
    torch.Tensor: ["item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"],
    torch: ["tensor", "as_tensor"],  # with device=...: a pageable copy and a sync (CUDA)
}


def count_host_reads(monkeypatch, steps: Steps) -> list[tuple[int, str]]:
    """Patch the host-read entry points: each call in the main thread as (iteration, name) (a CUDA
    run's batch-staging thread does host work by design: p2p_dist/data/prefetch.py)."""
    seen = []

    def counts() -> bool:
        return threading.current_thread() is threading.main_thread()

    for owner, names in HOST_READS.items():
        for name in names:
            original = getattr(owner, name)

            def counted(*args, _original=original, _name=name, _method=owner is torch.Tensor, **kwargs):
                if counts() and (_method or kwargs.get("device") is not None):
                    seen.append((steps.iteration, _name))
                return _original(*args, **kwargs)

            monkeypatch.setattr(owner, name, counted)
    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):  # a blocking copy between host and device (non_blocking ones are fine)
        device = kwargs.get("device", args[0] if args and isinstance(args[0], (str, torch.device)) else None)
        if counts() and device is not None and not kwargs.get("non_blocking"):
            seen.append((steps.iteration, "to"))
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return seen


def top_level_ops(prof) -> tuple[int, int]:
    """aten ops dispatched from Python (not those that other aten ops call): (inside the
    "train_step" range, outside it)."""
    inside = outside = 0
    for ev in prof.events():
        if ev.name.startswith("aten::") and (ev.cpu_parent is None or not ev.cpu_parent.name.startswith("aten::")):
            parent = ev.cpu_parent
            while parent is not None and parent.name != "train_step":
                parent = parent.cpu_parent
            inside, outside = (inside + 1, outside) if parent is not None else (inside, outside + 1)
    return inside, outside


@pytest.mark.parametrize("placement", ["device", "stream"])
def test_a_steady_state_step_of_a_real_run_reads_nothing_on_the_host_within_its_op_budget(
    scenes_data, tmp_path, monkeypatch, placement
):
    """Steps 3 and 4 of 5 (step 1 creates Adam's state, step 5 logs, checkpoints and exports): no
    call of `.item()`, `.tolist()`, `bool()`, `float()`, `.cpu()`, `.numpy()`, `torch.tensor(...,
    device=)` or a blocking `.to(device)`, and no `Engine.to_host`, anywhere on the loop's path, the
    batch's included (the resident set's gather and jitter; the stream's jitter, its decoding done in
    a worker). And step 4's op budget."""
    import p2p_dist.train.run as run_module

    run = tiny_run(
        scenes_data,
        tmp_path / "run",
        "train.max_steps=5",
        "train.log_every=100",
        f"data.placement={placement}",
        "data.num_workers=1",
    )
    assert run.engine.device.type == "cpu" and run.cfg.train.health.enabled  # health figures on the device
    assert run.resident == (placement == "device")
    syncs, ops, profile = {}, {}, []

    def before_step(iteration):
        syncs[iteration] = run.engine.host_syncs
        if iteration == 4:  # profile step 4: `_step` and `_settle`
            profile.append(torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]))
            profile[0].__enter__()

    def settle(*args, **kwargs):
        result = run_module.Run._settle(run, *args, **kwargs)
        if steps.iteration == 4:
            profile[0].__exit__(None, None, None)
            ops["train_step"], ops["run"] = top_level_ops(profile[0])
        return result

    def train_step(*args, **kwargs):
        with torch.profiler.record_function("train_step"):
            return run_module.train_step.__wrapped__(*args, **kwargs)

    train_step.__wrapped__ = run_module.train_step
    monkeypatch.setattr(run_module, "train_step", train_step)
    run._settle = settle
    steps = Steps(run, before_step=before_step)
    seen = count_host_reads(monkeypatch, steps)
    assert run.train() == 0
    monkeypatch.undo()
    assert [r for r in seen if r[0] in (3, 4)] == [], "host reads in a steady-state step"
    assert [syncs[4] - syncs[3]] == [0], "Engine.to_host in a steady-state step"
    assert {name for i, name in seen if i == 5}, "the instruments saw the last step's reads (log, checkpoint)"
    # The budget of one step in top-level aten ops (torch 2.13, CPU, unet_128 + patch70, the default
    # config): train_step measured 368 (G forward and backward, D three times forward and twice
    # backward, the losses, two stacked non-finite checks of 6 ops, the health norms 2 x 4 ops, the
    # health output moments kept in place for the CUDA graph 5 ops, two fused Adam updates;
    # autograd's gradient accumulation counts one op per parameter), plus 11 that keep the buffers of
    # a skipped step (KeptBuffers over G's and D's float32 and int64 buffers: one flat copy each
    # before the step; the flag's != 0, then per group cat, where, split, copy after it): 379. The run's
    # own part: the flags (cat; select + copy_ into the host slot) and the loss window (reshape, eq,
    # stack, where, add_): 8. An op added to the step shows here.
    assert ops["train_step"] <= 379 and ops["run"] <= 8, ops


# --- bit for bit: the run's step against main's step semantics, written out plainly ----------------


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes: NaN equals NaN when its bits do."""
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def test_the_run_step_equals_mains_step_bit_for_bit_with_a_nan_batch_skipped(scenes_data, tmp_path, capsys):
    """The default config (dropout, BatchNorm, fused Adam, linear decay, health on) with the EMA on:
    5 steps of a real Run, a NaN in step 3's batch; against main's semantics written plainly (the
    reference's update order, D frozen by requires_grad, the non-finite check before D's update, a
    skipped step changes no weight, no Adam state, no EMA, no BatchNorm statistics, and is not in
    the logged means). G, D, BatchNorm buffers, Adam state and the EMA equal bit for bit; the logged
    means and the skipped-step count too. The skipped step leaves G's and D's buffers as they were
    before it (its training forwards wrote NaN there), so the eval-mode G stays finite."""
    run = tiny_run(scenes_data, tmp_path / "run", "train.max_steps=5", "train.log_every=100", "train.ema_decay=0.999")
    cfg = run.cfg
    assert cfg.model.dropout and cfg.model.norm == "batch" and cfg.optim.fused and cfg.optim.schedule == "linear_decay"
    G, D = (unwrap_module(m) for m in (run.models.G, run.models.D))
    G_ref, D_ref, ema_ref = copy.deepcopy(G), copy.deepcopy(D), copy.deepcopy(G).requires_grad_(False)
    opt_G, opt_D = build_optimizer(G_ref, cfg), build_optimizer(D_ref, cfg)
    opts, ema = [run.engine._inner("G"), run.engine._inner("D")], run.extras.ema.module  # the run ends with them
    records, buffers_at = [], {}

    def buffers():
        return [b.clone() for m in (G, D) for b in m.buffers()]

    def before_step(iteration):
        records[-1].append(torch.get_rng_state())
        if iteration in (3, 4):
            buffers_at[iteration] = buffers()

    def poison(iteration, batch):
        A, B = batch
        if iteration == 3:
            A = A.clone()
            A[0, 0, 0, 0] = float("nan")
        records.append([A.clone(), B.clone()])
        return A, B

    Steps(run, on_batch=poison, before_step=before_step)
    assert run.train() == 0
    assert "step 3: non-finite loss, step skipped (1 in a row)" in capsys.readouterr().err
    assert len(buffers_at[3]) == 42 and all(torch.isfinite(b).all() for b in buffers_at[4])
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(buffers_at[3], buffers_at[4]))
    G.eval()
    assert torch.isfinite(G(records[0][0])).all()  # BatchNorm's running statistics at work
    G.train()

    gan, lam, decay = GANLoss(cfg.loss.gan), cfg.loss.lambda_l1, cfg.train.ema_decay
    G_ref.train(), D_ref.train()
    sums, good = torch.zeros(4), 0  # D_fake, D_real, G_GAN, G_L1 over the steps that were not skipped
    for i, (A, B, rng) in enumerate(records):
        torch.set_rng_state(rng)  # the run's dropout masks
        buffers_before = [b.clone() for m in (G_ref, D_ref) for b in m.buffers()]
        for opt in (opt_G, opt_D):
            for group in opt.param_groups:
                group["lr"] = cfg.optim.lr * lr_factor(i, 5, cfg.optim.schedule, cfg.optim.decay_start)
        fake = G_ref(A)
        l1 = l1_loss(fake, B) * lam
        d_fake = gan(D_ref(torch.cat([A, fake.detach()], 1)), False)
        d_real = gan(D_ref(torch.cat([A, B], 1)), True)
        finite = all(torch.isfinite(x) for x in (l1, d_fake, d_real))  # checked before D's update
        if finite:
            opt_D.zero_grad()
            (0.5 * (d_fake + d_real)).backward()
            opt_D.step()
        D_ref.requires_grad_(False)
        g_gan = gan(D_ref(torch.cat([A, fake], 1)), True)
        D_ref.requires_grad_(True)
        if finite and torch.isfinite(g_gan):
            opt_G.zero_grad()
            (g_gan + l1).backward()
            opt_G.step()
            with torch.no_grad():
                for e, p in zip(ema_ref.parameters(), G_ref.parameters()):
                    e.lerp_(p, 1 - decay)
                for e, b in zip(ema_ref.buffers(), G_ref.buffers()):
                    e.copy_(b)
            sums += torch.stack([d_fake, d_real, g_gan, l1]).detach()
            good += 1
        else:  # the training forwards moved the BatchNorm statistics: put back
            with torch.no_grad():
                for b, before in zip((b for m in (G_ref, D_ref) for b in m.buffers()), buffers_before):
                    b.copy_(before)
    assert good == 4

    def everything(G, D, opts, ema):
        tensors = [t for m in (G, D, ema) for t in [*m.parameters(), *m.buffers()]]
        return tensors + [v for opt in opts for st in opt.state.values() for v in st.values()]

    ours = everything(G, D, opts, ema)
    reference = everything(G_ref, D_ref, [opt_G, opt_D], ema_ref)
    assert len(ours) == len(reference) > 100
    differ = [i for i, (a, b) in enumerate(zip(ours, reference)) if not torch.equal(bits(a), bits(b))]
    assert differ == []
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    means = {k: round(float(s) / good, 6) for k, s in zip(("D_fake", "D_real", "G_GAN", "G_L1"), sums)}
    assert {k: last[k] for k in means} == means and last["nonfinite_steps"] == 1


# --- train.compile: no graph break --------------------------------------------------------------------


@pytest.mark.parametrize("bf16", [False, True])
def test_train_compile_traces_g_d_and_the_frozen_d_whole_and_once(monkeypatch, bf16):
    """train.compile=true (the DDP engine compiles G, D and the frozen D) with the run's health hook
    and gradient norms: one frame and one graph per compiled module, 0 graph breaks, and no
    recompilation in later steps. 0 is the count: every break is avoidable here (the health hook,
    traced on its own, recompiled at every step on the length of its list: it now stays eager).
    With bf16 the modules are traced inside the step's autocast regions (`Engine.autocast`), the same.
    Backend "eager" (Dynamo's tracing, which decides graph breaks, without code generation: fast)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, backend="eager", **kw))
    cfg = load_config(None, [*TINY, "train.compile=true", *(["train.mixed_precision=bf16"] if bf16 else [])])
    engine = build_engine(cfg)
    torch.manual_seed(0)
    models = engine.prepare(*build_models(cfg))
    extras = RunExtras(cfg, engine, unwrap_module(models.G))  # the health hook and norms, as the run wires them
    A, B = (torch.rand(2, 3, 128, 128) * 2 - 1 for _ in "AB")
    torch._dynamo.reset()
    counters.clear()
    train_step(engine, models, cfg.loss, A, B)
    assert dict(counters["frames"]) == {"total": 3, "ok": 3} and counters["stats"]["unique_graphs"] == 3
    assert not counters["graph_break"], dict(counters["graph_break"])
    counters.clear()
    for _ in range(2):
        result = train_step(engine, models, cfg.loss, A, B)
    assert not counters["frames"] and not counters["graph_break"], {k: dict(v) for k, v in counters.items()}
    assert not result.skipped.item() and all(torch.isfinite(v) for v in result.losses.values())
    extras.close()


def test_a_stop_request_reaches_the_run_a_step_late_and_it_ends_on_a_step_it_has_read(scenes_data, tmp_path):
    """SIGUSR1 during step 2 (logs only at the end): the flag is agreed with step 2 and read after
    step 3 is queued; the run then reads step 3's flags too, checkpoints step 3 and exits 75."""
    import os
    import signal

    run = tiny_run(scenes_data, tmp_path / "run", "train.max_steps=5", "train.log_every=100")
    Steps(run, before_step=lambda i: i == 2 and os.kill(os.getpid(), signal.SIGUSR1))
    assert run.train() == 75
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-0000003"]
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert (state["step"], state["data_batches"]) == (3, 3)
    assert run.state.step == 3 and run.flags.pending == []
