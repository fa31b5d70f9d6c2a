"""DDP gradient traffic options: the bf16 compression hook over gloo (mean of the ranks' gradients to bf16
rounding), 2-process training with compression, small buckets and gradients as bucket views, and
gradient accumulation (one all-reduce per optimizer step, the math of the 1-process bigger batch)."""

from __future__ import annotations

import json

import torch

from helpers.env import run_ranks
from helpers.training import train
from p2p_dist.config import load_config
from p2p_dist.train.build import build_models

HOOK_SCRIPT = """
import json, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from p2p_dist.train.comm import bf16_allreduce_hook
dist.init_process_group("gloo")
rank = dist.get_rank()
grads = {}
for compress in (False, True):
    torch.manual_seed(0)
    m = DDP(torch.nn.Linear(64, 32), bucket_cap_mb=1, gradient_as_bucket_view=compress)
    if compress:
        m.register_comm_hook(None, bf16_allreduce_hook)
    torch.manual_seed(1 + rank)
    m(torch.randn(8, 64)).pow(2).sum().backward()
    grads[compress] = m.module.weight.grad.clone()
print(json.dumps({"rank": rank, "plain": grads[False].tolist(), "bf16": grads[True].tolist()}))
del m  # a DDP object outliving its gloo group can abort the process at exit ("terminate called ...")
dist.destroy_process_group()
"""


def test_bf16_hook_averages_over_gloo_to_bf16_rounding(tmp_path):
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    res = [json.loads(out.strip().splitlines()[-1]) for out in run_ranks(script)]
    plain, bf16 = torch.tensor(res[0]["plain"]), torch.tensor(res[0]["bf16"])
    assert torch.equal(bf16, torch.tensor(res[1]["bf16"]))  # every rank holds the same reduced gradient
    assert not torch.equal(plain, bf16)  # it did travel in bf16
    # two bf16 roundings (each rank's gradient, then the sum): a few parts in 2**8
    assert torch.allclose(plain, bf16, rtol=2**-6, atol=2**-8 * plain.abs().max().item())


def test_two_process_training_with_compression_buckets_and_views(scenes_data, tmp_path):
    out = tmp_path / "run"
    proc = train(
        scenes_data,
        out,
        "train.max_steps=3",
        "data.num_workers=0",
        "train.grad_compression=bf16",
        "train.ddp_bucket_mb=1",
        "train.gradient_as_bucket_view=true",
        nproc=2,
    )
    assert "2 process(es)" in proc.stderr
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor([r["G_L1"], r["D_real"], r["G_GAN"]])).all() for r in rows)


ACCUM_SCRIPT = """
import json, sys, torch, torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from p2p_dist.config import load_config
from p2p_dist.train.build import build_models
from p2p_dist.train.engines import build_engine
from p2p_dist.models.statedict import unwrap_module
from p2p_dist.train.loop import train_step
k, out = int(sys.argv[1]), sys.argv[2]
cfg = load_config(None, ["model.ngf=8", "model.ndf=8", "model.generator=unet_128", "data.crop_size=128",
    "data.load_size=128", "model.norm=instance", "model.dropout=false", "train.memory_format=contiguous",
    f"train.grad_accum={k}"])
engine = build_engine(cfg)
rank, world = engine.rank, engine.world_size
torch.manual_seed(0)
models = engine.prepare(*(m.double() for m in build_models(cfg)))  # float64: see tests/unit/test_train_loop.py
reduced = {"G": [0, 0], "D": [0, 0]}  # all-reduce calls and bytes over all steps
def counting(name):
    def hook(state, bucket):
        reduced[name][0] += 1
        reduced[name][1] += bucket.buffer().numel() * bucket.buffer().element_size()
        return allreduce_hook(state, bucket)
    return hook
if world > 1:
    for name, model in (("G", models.G), ("D", models.D)):
        model.register_comm_hook(None, counting(name))
data = torch.Generator().manual_seed(3)
for _ in range(3):  # the global batch of 4 is split over the ranks, then into k micro-batches
    A, B = (torch.rand(4, 3, 128, 128, generator=data, dtype=torch.float64).chunk(world)[rank] * 2 - 1 for _ in "AB")
    train_step(engine, models, cfg.loss, A, B, micro_batches=k)
if rank == 0:
    torch.save([p.detach() for m in (models.G, models.D) for p in unwrap_module(m).parameters()], out)
print(json.dumps(reduced))
engine.end()
"""


def test_grad_accum_all_reduces_once_per_step_and_matches_one_process(tmp_path):
    """2 gloo processes x 2 micro-batches of 1 == 1 process with the batch of 4 (instance norm, no
    dropout): the inner micro-batches' backward passes send nothing."""
    script = tmp_path / "accum.py"
    script.write_text(ACCUM_SCRIPT)
    reduced = {}
    for k in (1, 2):
        outs = run_ranks(script, str(k), str(tmp_path / f"k{k}.pt"))
        reduced[k] = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    assert reduced[2] == reduced[1]  # per step: as many calls and bytes with accumulation as without
    calls_g, bytes_g = reduced[1][0]["G"]
    assert calls_g >= 3 and reduced[1][0]["D"][0] >= 3  # at least one bucket of each network per step
    assert bytes_g == 3 * 8 * sum(
        p.numel() for p in build_models(load_config(None, [*TINY_128, "model.norm=instance"]))[0].parameters()
    )
    run_ranks(script, "1", str(tmp_path / "one.pt"), nproc=1)
    flat = {name: torch.cat([t.flatten() for t in torch.load(tmp_path / f"{name}.pt")]) for name in ("k2", "one")}
    diff = flat["k2"] - flat["one"]
    assert diff.norm() <= 1e-6 * flat["one"].norm() and diff.abs().max() < 1e-6


TINY_128 = ["model.ngf=8", "model.ndf=8", "model.generator=unet_128", "data.crop_size=128", "data.load_size=128"]
