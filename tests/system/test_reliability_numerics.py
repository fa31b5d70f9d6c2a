"""Non-finite losses: every rank skips the same step together, skipped steps are counted, and a
streak of train.max_nonfinite stops the run with one line naming the step, the last good checkpoint
and the likely causes."""

from __future__ import annotations

import sys
import textwrap

from helpers.env import BIN
from helpers.scaleout import run, train_args

SETTINGS = ["train.max_steps=20", "train.checkpoint_every=1", "data.num_workers=0"]


def test_a_learning_rate_that_blows_up_stops_the_run_naming_the_last_good_checkpoint(scenes_data, tmp_path):
    out = tmp_path / "run"
    run([sys.executable, *train_args(scenes_data, out, *SETTINGS, "train.stop_after=2")])
    # the user raises the learning rate absurdly and resumes: the first update overflows the weights
    proc = run(
        [sys.executable, *train_args(scenes_data, out, *SETTINGS, "optim.lr=1e30", "train.max_nonfinite=3")],
        check=False,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for k in (1, 2, 3):
        assert f"step {2 + k}: non-finite loss, step skipped ({k} in a row)" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    good = out / "checkpoints" / "step-0000002"
    assert last.startswith("error: stopped at step 5: 3 consecutive non-finite losses"), last
    assert f"last good checkpoint: {good}" in last and "optim.lr=1e+30" in last and "fp16" in last, last
    # no checkpoint of the failing state was written, so rotation kept the good one
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]


AGREEMENT = textwrap.dedent('''
    """2 ranks, real Engine (gloo DDP): a NaN in rank 1's batch only makes BOTH ranks skip the step."""
    import torch, torch.distributed as dist
    from p2p_dist.config import load_config
    from p2p_dist.train.engines import build_engine
    from p2p_dist.models.statedict import unwrap_module
    from p2p_dist.train.loop import train_step
    from p2p_dist.train.build import build_models


    def main():
        cfg = load_config(None, ["model.ngf=8", "model.ndf=8", "model.generator=unet_128", "data.crop_size=128",
                                 "data.load_size=128"])
        torch.manual_seed(0)
        engine = build_engine(cfg)
        rank = engine.rank
        assert engine.world_size == 2
        G, D = build_models(cfg)
        models = engine.prepare(G, D)
        params = lambda: [t.detach().clone() for m in (G, D) for t in unwrap_module(m).parameters()]
        torch.manual_seed(1 + rank)
        A, B = torch.rand(1, 3, 128, 128) * 2 - 1, torch.rand(1, 3, 128, 128) * 2 - 1
        before = params()
        bad_A = A.clone()
        if rank == 1:
            bad_A[0, 0, 5, 5] = float("nan")
        assert train_step(engine, models, cfg.loss, bad_A, B).skipped.item() == 1, f"rank {rank} did not skip"
        assert all(torch.equal(a, b) for a, b in zip(before, params())), f"rank {rank} changed weights"
        losses = train_step(engine, models, cfg.loss, A, B).losses  # the next, finite step runs on both ranks
        assert losses is not None and not all(torch.equal(a, b) for a, b in zip(before, params()))
        flat = torch.cat([t.flatten() for t in params()])
        gathered = [torch.empty_like(flat) for _ in range(2)]
        dist.all_gather(gathered, flat)
        assert torch.equal(gathered[0], gathered[1]), "ranks diverged"
        print(f"rank {rank}: skipped together, then stepped together")
        del models  # the DDP wrappers go before the process group, as in p2p-train
        engine.end()


    main()
''')


def test_a_nan_on_one_rank_is_skipped_by_every_rank(tmp_path):
    script = tmp_path / "agreement.py"
    script.write_text(AGREEMENT)
    from helpers.env import free_port

    proc = run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script)], timeout=180
    )
    out = proc.stdout + proc.stderr
    assert "rank 0: skipped together" in out and "rank 1: skipped together" in out, out[-3000:]
