"""bench/gpu_check.sh (`make gpu-check`) without CUDA: one line saying so, then every check dry-run on the
CPU (tiny network, 2 steps, gloo for NCCL), each with a PASS line and a JSON record, exit 0."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from helpers.env import ROOT, subprocess_env

CHECKS = [
    "bf16_channels_last",
    "deterministic_resume",
    "nccl_world1",
    "deepspeed_zero2",
    "translate_score",
    "throughput",
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run make gpu-check for real")
def test_gpu_check_dry_runs_every_check_on_a_cpu(tmp_path):
    out = tmp_path / "gpu-check"
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(ROOT / ".venv"), str(out)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
        timeout=1200,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert lines[0].startswith("gpu-check: no CUDA GPU visible") and "dry run" in lines[0]
    assert [line.split()[:2] for line in lines[1:-1]] == [["PASS", c] for c in CHECKS]
    for c in CHECKS:
        record = json.loads((out / f"{c}.json").read_text())
        assert record["passed"] and record["dry_run"] and record["check"] == c
    assert json.loads((out / "deterministic_resume.json").read_text())["exit_code"] == 0
    assert "equal bit for bit" in (out / "deterministic_resume.log").read_text()
    assert json.loads((out / "throughput.json").read_text())["rows"]["1"]["default"]["images_per_s"] > 0
    assert json.loads((out / "summary.json").read_text())["passed"]
