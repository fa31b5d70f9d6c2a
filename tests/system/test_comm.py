"""DDP gradient traffic options: the bf16 compression hook over gloo (mean of the ranks' gradients to bf16
rounding), and 2-process training with compression, small buckets and gradients as bucket views."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from helpers.env import free_port, subprocess_env
from helpers.training import train

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
dist.destroy_process_group()
"""


def test_bf16_hook_averages_over_gloo_to_bf16_rounding(tmp_path):
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(r), WORLD_SIZE="2"),
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    res = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
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
