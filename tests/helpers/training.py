"""Start a real training run in a subprocess, and compare the generators runs export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers.env import BIN, ROOT, free_port, subprocess_env

TINY = [
    "model.ngf=8",
    "model.ndf=8",
    "data.direction=BtoA",
    "train.log_every=1",
    "train.sample_every=0",
    "train.batch_size=2",
    "data.shuffle_buffer=8",
]


def train(
    data: Path, out: Path, *overrides: str, nproc: int = 1, check: bool = True, tiny: bool = True
) -> subprocess.CompletedProcess:
    """A run on `data` (train/ and val/ shard folders) into `out`: the TINY settings (unless
    `tiny=False`, e.g. with `--config recipes/demo.yaml` among the overrides), then `overrides`."""
    args = [
        "-m",
        "p2p_dist.train",
        f"data.train={data}/train",
        f"data.val={data}/val",
        f"train.output_dir={out}",
        *(TINY if tiny else []),
        *overrides,
    ]
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [
            str(BIN / "accelerate"),
            "launch",
            "--config_file",
            str(ROOT / "recipes/accelerate/cpu_2proc.yaml"),
            "--num_processes",
            str(nproc),
            "--main_process_port",
            str(free_port()),
            *args,
        ]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "generator.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def score(checkpoint: Path, shards: Path, out: Path, metrics: str) -> dict:
    """`p2p-eval score` of a saved generator on `shards` into `out`; its scores.json."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "p2p_eval",
            "score",
            "--checkpoint",
            str(checkpoint),
            "--shards",
            str(shards),
            "--metrics",
            metrics,
            "--out",
            str(out),
        ],
        check=True,
        env=subprocess_env(),
        capture_output=True,
        cwd=ROOT,
        timeout=300,
    )
    return json.loads((out / "scores.json").read_text())
