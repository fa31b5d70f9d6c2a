"""Several machines: two `accelerate launch` commands on localhost as machines 0 and 1, and the
data split over (machine, process, worker) streams that such a run relies on."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from helpers.env import free_port
from helpers.scaleout import assert_same_weights, final_weights, launch_cmd, start, stop_job, train_args
from p2p_dist.config import load_config
from p2p_dist.data.stream import make_train_loader


@pytest.mark.slow
def test_two_machines_train_exactly_like_one(scenes_data, ds_reference_run, tmp_path):
    """2 machines x 1 process (DeepSpeed ZeRO-2, the multi-node launcher SLURM uses) == 1 machine x 2
    processes: the global ranks, hence each rank's data and every update, are the same."""
    out = tmp_path / "run"
    port = free_port()
    jobs = [
        start(
            launch_cmd(
                "deepspeed_zero2",
                *train_args(scenes_data, out, "train.max_steps=4"),
                port=port,
                machines=2,
                machine_rank=rank,
            ),
            tmp_path / f"machine{rank}.log",
        )
        for rank in (0, 1)
    ]
    try:
        codes = [job.wait(timeout=240) for job in jobs]
    finally:
        for job in jobs:
            stop_job(job)
    logs = [(tmp_path / f"machine{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], f"exit codes {codes}:\n{logs[0][-4000:]}\n{logs[1][-4000:]}"
    assert "2 process(es) on 2 machine(s), DeepSpeed ZeRO-2" in logs[0]
    assert_same_weights(final_weights(out), final_weights(ds_reference_run))


def _shard_of_key(train: Path) -> dict[str, str]:
    owner = {}
    for shard in sorted(train.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                owner[name.split(".", 1)[0]] = shard.name
    return owner


def test_data_split_covers_machines_and_workers(scenes_data):
    """2 machines x 1 process x 2 workers = 4 streams over 4 shards: each rank reads two shards (one
    per worker), the machines never share a shard, and together they cover the whole set."""
    owner = _shard_of_key(scenes_data / "train")
    shards = set(owner.values())
    assert len(shards) == 4
    cfg = load_config(
        None,
        [
            f"data.train={scenes_data}/train",
            "data.direction=BtoA",
            "data.shuffle_buffer=4",
            "data.load_size=256",
            "data.num_workers=2",
        ],
    ).data
    seen: dict[int, set[str]] = {}
    for rank in (0, 1):  # the global rank a machine's process gets: machine_rank x procs + local_rank
        loader = make_train_loader(cfg, batch_size=2, seed=0, rank=rank, world_size=2)
        keys, batch_shards = set(), []
        for i, batch in enumerate(loader):
            keys.update(batch["key"])
            batch_shards.append({owner[k] for k in batch["key"]})
            if i == 11:  # 24 samples per rank: more than its two shards hold
                break
        seen[rank] = {owner[k] for k in keys}
        # the workers take turns, each on its own shard
        assert all(len(s) == 1 for s in batch_shards) and batch_shards[0] != batch_shards[1], batch_shards
    assert len(seen[0]) == 2 and len(seen[1]) == 2, seen  # both workers of each rank contribute
    assert not seen[0] & seen[1], seen
    assert seen[0] | seen[1] == shards
