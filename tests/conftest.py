"""Shared fixtures: a small `scenes` shard set built once per session, and subprocess helpers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers.env import BIN, ROOT, free_port, subprocess_env  # noqa: F401 (fixtures below use them)


@pytest.fixture(scope="session")
def scenes_data(tmp_path_factory) -> Path:
    """24 train / 4 val procedurally generated scenes at 256 px (A = photo, B = labels)."""
    out = tmp_path_factory.mktemp("scenes") / "data"
    subprocess.run(
        [
            str(BIN / "p2p-data"),
            "demo",
            "scenes",
            str(out),
            "--train",
            "24",
            "--val",
            "4",
            "--size",
            "256",
            "--shard-size",
            "6",
            "--seed",
            "1",
        ],
        check=True,
        env=subprocess_env(),
        capture_output=True,
    )
    return out


# --- scale-out tests (DeepSpeed, multi-node, signals, SLURM) ----------


@pytest.fixture(scope="session")
def ds_reference_run(scenes_data, tmp_path_factory) -> Path:
    """2 processes, DeepSpeed ZeRO-1, 4 steps in one go: the run that the ZeRO-2, resumed and
    two-machine runs must reproduce bit for bit (tests/system/test_train_deepspeed.py, _multinode.py)."""
    from helpers.scaleout import launch_cmd, run, train_args

    out = tmp_path_factory.mktemp("ds_reference") / "run"
    run(launch_cmd("deepspeed_zero1", *train_args(scenes_data, out, "train.max_steps=4")))
    return out
