"""Several machines: two `accelerate launch` commands on localhost as machines 0 and 1, and the
data split over (machine, process, worker) streams that such a run relies on."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest

from helpers.env import free_port
from helpers.scaleout import assert_same_weights, final_weights, launch_cmd, start, stop_job, train_args
from p2p_dist.config import load_config
from p2p_dist.data.loader import make_train_loader


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
            keys.update(batch.key)
            batch_shards.append({owner[k] for k in batch.key})
            if i == 11:  # 24 samples per rank: more than its two shards hold
                break
        seen[rank] = {owner[k] for k in keys}
        # the workers take turns, each on its own shard
        assert all(len(s) == 1 for s in batch_shards) and batch_shards[0] != batch_shards[1], batch_shards
    assert len(seen[0]) == 2 and len(seen[1]) == 2, seen  # both workers of each rank contribute
    assert not seen[0] & seen[1], seen
    assert seen[0] | seen[1] == shards


@pytest.mark.slow
def test_shards_that_one_machine_cannot_see_are_named_in_one_line(scenes_data, tmp_path):
    """Machine 1 does not see the shards (here: a relative data.train, and machine 1 starts in a folder
    without them, as a node without the data's filesystem would): every rank stops with exit 2 within
    the launch, and rank 0 prints one line naming rank 1, its host and the path, instead of rank 0
    waiting for a rank that already left."""
    import socket
    import subprocess

    from helpers.env import subprocess_env
    from helpers.scaleout import TINY

    out, port = tmp_path / "run", free_port()
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    (nodes[0] / "shards").symlink_to(scenes_data, target_is_directory=True)  # only node 0 sees the data
    args = ["-m", "p2p_dist.train", "data.train=shards/train", f"train.output_dir={out}", *TINY, "train.max_steps=2"]
    jobs = [
        subprocess.Popen(
            launch_cmd("cpu_2proc", *args, port=port, machines=2, machine_rank=rank),
            cwd=nodes[rank],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for rank in (0, 1)
    ]
    try:
        logs = [job.communicate(timeout=240)[0] for job in jobs]
    finally:
        for job in jobs:
            stop_job(job)
    errors = [line for log in logs for line in log.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: rank 1 on host {socket.gethostname()}: data.train: shard file shards/train does not exist; "
        "every machine must see the run's inputs at the same path (a shared filesystem, or the same copy on each)"
    ], logs
    # each launcher reports its rank's exit code 2 and fails (1); before, machine 0 still waited after 150 s
    assert [job.returncode for job in jobs] == [1, 1] and all(re.search(r"exitcode\s*: 2 ", log) for log in logs), logs
    assert not (out / "checkpoints").exists()
