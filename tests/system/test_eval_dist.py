"""A generator checkpoint + shards scored over 2 processes (torchrun, gloo) gives exactly the
1-process result: every sample translated and scored once, gathered, reduced in key order."""

import json
import os
import subprocess
import sys

import pytest

from helpers.env import free_port
from helpers.eval_fixtures import write_scene_shards
from p2p_eval.cli import main


@pytest.fixture(scope="module")
def checkpoint_and_data(tmp_path_factory):
    import torch

    from p2p_dist.models import GeneratorSpec, build_generator, save_generator

    root = tmp_path_factory.mktemp("evaldist")
    val = write_scene_shards(root / "val", 7, size=64, split="val", shard_size=2)  # odd count, 4 shards
    assert (
        main(
            [
                "fcn-train",
                "--shards",
                str(val),
                "--out",
                str(root / "fcn"),
                "--size",
                "64",
                "--width",
                "4",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    torch.manual_seed(0)
    spec = GeneratorSpec(name="resnet_9blocks", ngf=8, task="translation", direction="BtoA", image_size=64)
    save_generator(build_generator("resnet_9blocks", ngf=8), spec, root / "run" / "final")
    return root


def _score(root, out, nproc):
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_HOME=str(root / "torch"), PYTHONUNBUFFERED="1")
    args = [
        "score",
        "--checkpoint",
        str(root / "run" / "final"),
        "--shards",
        str(root / "val"),
        "--fcn",
        str(root / "fcn"),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--grid",
        "2",
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "p2p_eval", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "p2p_eval",
            *args,
        ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "scores.json").read_text())


@pytest.mark.slow
def test_two_processes_equal_one(checkpoint_and_data, tmp_path):
    root = checkpoint_and_data
    one = _score(root, tmp_path / "one", 1)
    two = _score(root, tmp_path / "two", 2)
    assert one["results"]["samples"] == 7 and one["results"]["mode"] == "photo"
    assert one["inputs"]["direction"] == "BtoA" and one["inputs"]["generator"]["name"] == "resnet_9blocks"
    assert one["results"] == two["results"]
    assert one["grid"] == two["grid"]
    for g in one["grid"]:
        assert (tmp_path / "one" / g["pred"]).read_bytes() == (tmp_path / "two" / g["pred"]).read_bytes()


def test_object_collectives_wait_long_and_the_timeout_is_checked(monkeypatch):
    """Object collectives run on their own gloo group with a long timeout (uneven work per rank
    must not hit the default group's 10-minute NCCL timeout); P2P_EVAL_DIST_TIMEOUT sets it."""
    import datetime

    from p2p_dist.errors import UserError
    from p2p_eval import dist as pdist

    monkeypatch.delenv("P2P_EVAL_DIST_TIMEOUT", raising=False)
    assert pdist.collective_timeout() == datetime.timedelta(hours=4)
    monkeypatch.setenv("P2P_EVAL_DIST_TIMEOUT", "90")
    assert pdist.collective_timeout() == datetime.timedelta(seconds=90)
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("P2P_EVAL_DIST_TIMEOUT", bad)
        with pytest.raises(UserError, match="P2P_EVAL_DIST_TIMEOUT"):
            pdist.collective_timeout()
