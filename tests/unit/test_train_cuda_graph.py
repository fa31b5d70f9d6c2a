"""train.cuda_graph on CPU: the graph step's body (static buffers, capturable fused Adam reading a
learning-rate tensor) equals the eager step bit for bit, the schedule written into that tensor, the
config's refusal and auto resolution, and the flat all-reduce against DDP over 2 gloo processes.
The capture and replay themselves need a GPU (bench/gpu_check.sh runs them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers.env import ROOT, run_ranks, subprocess_env
from p2p_dist.config import ConfigError, load_config
from p2p_dist.train import cuda_graph
from p2p_dist.train.build import build_models
from p2p_dist.train.engines.ddp import DDPEngine
from p2p_dist.train.lock import release_held
from p2p_dist.train.loop import train_step
from p2p_dist.train.run import Run, lr_factor

ON_CPU = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="bit-exactness and the float64 learning rate are CPU facts (GPU: bench/gpu_check.sh)",
)
TINY = ["model.ngf=8", "model.ndf=8", "model.generator=unet_128", "data.crop_size=128", "data.load_size=128"]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN included (after a skipped NaN batch BatchNorm's running statistics hold NaN)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.flatten().view(torch.uint8), b.flatten().view(torch.uint8))
    )


def graph_or_eager_run(scenes_data, out, monkeypatch, graphed: bool, *, pause: int = 0) -> Run:
    """A real run to step 5 over real shards (the default config on a tiny network, EMA on, a NaN in
    step 3's batch, health figures from step 1); `graphed`: its engine built for the graph step as
    on a GPU (resolve's verdict for CUDA), so the run's step body runs over the graph's static
    buffers with capturable Adam; `pause`: stop after that many steps (train.stop_after)."""
    if graphed:
        monkeypatch.setattr(cuda_graph, "unavailable", lambda *args: None)
    cfg = load_config(
        None,
        [f"data.train={scenes_data}/train", f"train.output_dir={out}", *TINY, "train.ema_decay=0.9"]
        + ["train.health.warmup=0", "train.max_steps=5", "train.log_every=2", f"train.stop_after={pause}"]
        + ["train.sample_every=0", "data.num_workers=0", "train.batch_size=2"],
    )
    run = Run(cfg)
    monkeypatch.undo()
    assert run.engine.graphed is graphed and cfg.model.dropout and cfg.model.norm == "batch"
    fetch = run._next_step_batch

    def next_step_batch(batches):
        A, B = fetch(batches)
        if run.state.step == 2:  # the batch of step 3
            A = A.clone()
            A[0, 0, 0, 0] = float("nan")
        return A, B

    run._next_step_batch = next_step_batch
    try:
        assert run.train() == 0
    finally:
        release_held()  # the folder's lock, as p2p-train's `train` releases it
    assert isinstance(run.device_step, cuda_graph.GraphStep) is graphed
    return run


@ON_CPU
def test_a_graphed_run_equals_the_eager_run_bit_for_bit(scenes_data, tmp_path, monkeypatch):
    """The run's step body as the graph captures it (static input buffers, capturable fused Adam
    reading the learning-rate tensor that the schedule writes, the loss window and the EMA masked on
    the device), paused after step 3 and resumed into the live tensors, leaves G, D, their BatchNorm
    buffers, both Adams' state and the EMA exactly where the eager step does (paused alike), with
    dropout, the decaying learning rate and a NaN batch skipped; the logged losses and the health
    figures (gradient norms kept in place) are the same."""
    from safetensors.torch import load_file

    runs = {}
    for g in (False, True):  # 3 steps, a pause, then a resume to step 5
        graph_or_eager_run(scenes_data, tmp_path / str(g), monkeypatch, g, pause=3)
        runs[g] = graph_or_eager_run(scenes_data, tmp_path / str(g), monkeypatch, g)
        assert runs[g].resumed_from is not None and runs[g].state.step == 5
    assert runs[True].state.nonfinite_steps == runs[False].state.nonfinite_steps == 1
    folders = {g: sorted((tmp_path / str(g) / "checkpoints").glob("step-*"))[-1] for g in runs}
    files = sorted(p.name for p in folders[False].glob("*.safetensors"))
    assert {"model.safetensors", "model_1.safetensors", "ema.safetensors"} <= set(files)
    for name in files:
        eager, graphed = (load_file(str(folders[g] / name)) for g in (False, True))
        assert eager.keys() == graphed.keys()
        assert all(same_bits(eager[k], graphed[k]) for k in eager), name
    for name in ("optimizer.bin", "optimizer_1.bin"):
        eager, graphed = (torch.load(folders[g] / name, weights_only=True) for g in (False, True))
        assert torch.is_tensor(graphed["param_groups"][0]["lr"])  # the learning-rate tensor, saved
        assert graphed["param_groups"][0]["lr"].item() == eager["param_groups"][0]["lr"]
        tensors = [(v, graphed["state"][i][k]) for i, st in eager["state"].items() for k, v in st.items()]
        assert len(tensors) >= 39 and all(same_bits(a, b) for a, b in tensors)
    health = {g: json.loads((folders[g] / "trainer_state.json").read_text())["extra"]["health"] for g in runs}
    assert health[True] == health[False] and len(health[True]["grad_history"]["G"]) >= 2  # the windows' norms
    logs = {g: (tmp_path / str(g) / "metrics.jsonl").read_text().splitlines() for g in runs}
    losses = {g: [{k: v for k, v in json.loads(r).items() if k[:2] in ("D_", "G_")} for r in logs[g]] for g in runs}
    assert losses[True] == losses[False] and len(losses[True]) >= 3


@ON_CPU
def test_the_schedule_writes_into_the_learning_rate_tensor_and_a_resume_keeps_it(tmp_path):
    cfg = load_config(None, [*TINY, f"train.output_dir={tmp_path / 'run'}"])
    engine = DDPEngine(cfg, graphed=True)
    torch.manual_seed(0)
    models = engine.prepare(*build_models(cfg))
    lr = engine.lr
    for step in range(10):
        expected = cfg.optim.lr * lr_factor(step, 10, cfg.optim.schedule, cfg.optim.decay_start)
        engine.set_lr(expected)
        assert engine.lr is lr and lr.item() == expected  # float64 on CPU: the schedule's float exactly
    A, B = (torch.rand(1, 3, 128, 128) * 2 - 1 for _ in "AB")
    train_step(engine, models, cfg.loss, A, B)
    engine.save_state(str(tmp_path / "ckpt"))
    engine.set_lr(1.0)
    engine.load_state(str(tmp_path / "ckpt"))  # the saved learning rate does not replace the live tensor
    assert engine.lr is lr and lr.item() == 1.0
    assert all(g["lr"] is lr for n in ("G", "D") for g in engine._inner(n).param_groups)
    engine.end()


def test_the_graph_step_copies_each_batch_into_its_static_buffers_and_refuses_another_shape():
    seen = []
    step = cuda_graph.GraphStep(lambda A, B: seen.append((A, B)) or A.sum() + B.sum())
    batches = [(torch.rand(2, 3), torch.rand(2, 1)) for _ in range(3)]
    assert [step(A, B).item() for A, B in batches] == [(A.sum() + B.sum()).item() for A, B in batches]
    assert all(A is step.static[0] and B is step.static[1] for A, B in seen)  # the same buffers every step
    with pytest.raises(ValueError, match=r"one shape: \(2, 3\), got \(1, 3\)"):
        step(torch.rand(1, 3), torch.rand(1, 1))


def test_auto_resolves_per_engine_and_device_and_on_is_refused_where_it_cannot_run():
    cfg = load_config(None, [])
    assert cuda_graph.resolve(cfg, "ddp", "cuda") is True
    assert cuda_graph.resolve(cfg, "ddp", "cpu") is False
    assert cuda_graph.resolve(cfg, "deepspeed", "cuda") is False
    assert cuda_graph.resolve(load_config(None, ["optim.fused=false"]), "ddp", "cuda") is False
    off = load_config(None, ["train.cuda_graph=off"])  # YAML reads off as false: the key takes it as "off"
    assert off.train.cuda_graph == "off" and cuda_graph.resolve(off, "ddp", "cuda") is False
    on = load_config(None, ["train.cuda_graph=auto"])
    on.train.cuda_graph = "on"
    assert cuda_graph.resolve(on, "ddp", "cuda") is True
    for engine, device, why in (("deepspeed", "cuda", "DeepSpeed"), ("ddp", "cpu", "CUDA GPU")):
        with pytest.raises(ConfigError, match=f"^train.cuda_graph=on: .*{why}.*; set train.cuda_graph=auto or off$"):
            cuda_graph.resolve(on, engine, device)
    on.optim.fused = False
    with pytest.raises(ConfigError, match=r"optim.fused=true"):
        cuda_graph.resolve(on, "ddp", "cuda")
    with pytest.raises(ConfigError, match=r"^train.cuda_graph: 'always' is not allowed; choose one of: auto, on, off$"):
        load_config(None, ["train.cuda_graph=always"])
    assert not DDPEngine(load_config(None, [])).graphed  # auto on CPU: the eager step


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of train.cuda_graph=on is for hosts without CUDA")
def test_on_without_a_gpu_is_refused_up_front_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="train.cuda_graph=on: CUDA graphs need a CUDA GPU"):
        load_config(None, ["train.cuda_graph=on"])
    proc = subprocess.run(
        [sys.executable, "-m", "p2p_dist.train", "--config", "demo", "train.cuda_graph=on",
         f"train.output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: train.cuda_graph=on: CUDA graphs need a CUDA GPU and this process trains on cpu; "
        "set train.cuda_graph=auto or off"
    ]
    assert not (tmp_path / "run").exists()


FLAT_SCRIPT = """
import json, sys, torch
from p2p_dist.config import load_config
from p2p_dist.models.statedict import unwrap_module
from p2p_dist.train.build import build_models
from p2p_dist.train.engines.ddp import DDPEngine
from p2p_dist.train.loop import train_step
from p2p_dist.train.run import rank_seed
results = {}
for compression in ("none", "bf16"):
    cfg = load_config(None, [*sys.argv[2:], f"train.grad_compression={compression}"])
    for graphed in (False, True):
        engine = DDPEngine(cfg, graphed=graphed)
        rank = engine.rank
        torch.manual_seed(0)
        models = engine.prepare(*build_models(cfg))
        assert isinstance(models.G, torch.nn.parallel.DistributedDataParallel) is not graphed
        models.G.train(), models.D.train()
        data = torch.Generator().manual_seed(3 + rank)
        torch.manual_seed(rank_seed(0, rank))
        for _ in range(3):
            A, B = (torch.rand(2, 3, 128, 128, generator=data) * 2 - 1 for _ in "AB")
            train_step(engine, models, cfg.loss, A, B)
        nets = [unwrap_module(m) for m in (models.G, models.D)]
        results[compression, graphed] = [t.detach().clone() for m in nets for t in [*m.parameters(), *m.buffers()]] + [
            v.clone() for n in ("G", "D") for st in engine._inner(n).state.values() for v in st.values()]
        del models
        engine.optimizers, engine.wrapped = {}, []
torch.save(results, f"{sys.argv[1]}.{rank}.pt")
print(json.dumps({"rank": rank}))
engine.end()
"""


@ON_CPU
def test_the_flat_all_reduce_gives_ddps_weights_over_two_gloo_processes(tmp_path):
    """2 processes, each its own batches and dropout: 3 steps with one flat all-reduce per network
    (the graph step's) leave G, D, BatchNorm buffers and Adam state bit for bit where DDP's buckets
    leave them (each rank's gradient times 1/2, summed: the same arithmetic), and with
    train.grad_compression=bf16 where DDP with the bf16 hook leaves them."""
    script = tmp_path / "flat.py"
    script.write_text(FLAT_SCRIPT)
    run_ranks(script, str(tmp_path / "out"), *TINY)
    ranks = [torch.load(tmp_path / f"out.{r}.pt") for r in range(2)]
    n_params = sum(1 for _ in build_models(load_config(None, TINY))[0].parameters())
    for compression in ("none", "bf16"):
        for res in ranks:
            ddp, flat = res[compression, False], res[compression, True]
            assert len(ddp) == len(flat) > 100
            assert all(same_bits(a, b) for a, b in zip(ddp, flat))
        # the ranks saw different batches and hold the same G: the gradients were reduced
        assert all(
            same_bits(a, b)
            for a, b in zip(ranks[0][compression, True][:n_params], ranks[1][compression, True][:n_params])
        )
    assert not all(same_bits(a, b) for a, b in zip(ranks[0]["none", True], ranks[0]["bf16", True]))
