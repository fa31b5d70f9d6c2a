"""bench/gpu_check.sh (`make gpu-check`) without CUDA: one line saying so, then every check dry-run on the
CPU (tiny network, 2 steps, gloo for NCCL), each with a PASS line and a JSON record, exit 0. A row whose
config key this p2p-dist lacks (train.cuda_graph, data.placement) FAILs with a line naming the key."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import torch

from helpers.env import ROOT, subprocess_env
from p2p_dist.config import Config

CHECKS = [
    "bf16_channels_last",
    "deterministic_resume",
    "nccl_world1",
    "deepspeed_zero2",
    "translate_score",
    "throughput",
    "speed_b1",
    "speed_b16",
    "bf16_b16",
    "real_device_b1",
    "real_device_b16",
    "real_stream_b16",
]
NEEDS = {"bf16_b16": "train.cuda_graph", **{c: "data.placement" for c in CHECKS if c.startswith("real_")}}


def config_has(key: str) -> bool:
    section, name = key.split(".")
    return name in {f.name for f in dataclasses.fields(getattr(Config(), section))}


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
    missing = {c: NEEDS[c] for c in NEEDS if not config_has(NEEDS[c])}
    assert proc.returncode == (1 if missing else 0), proc.stdout[-3000:]
    assert lines[0].startswith("gpu-check: no CUDA GPU visible") and "dry run" in lines[0]
    assert [line.split()[:2] for line in lines[1:-1]] == [["FAIL" if c in missing else "PASS", c] for c in CHECKS]
    for c, key in missing.items():
        assert f"{key} is not a key of this p2p-dist's config" in next(x for x in lines if x.split()[1] == c)
    for c in CHECKS:
        record = json.loads((out / f"{c}.json").read_text())
        assert record["passed"] is (c not in missing) and record["dry_run"] and record["check"] == c
    assert json.loads((out / "deterministic_resume.json").read_text())["exit_code"] == 0
    assert "equal bit for bit" in (out / "deterministic_resume.log").read_text()
    rows = json.loads((out / "throughput.json").read_text())["rows"]
    assert set(rows) == {"1", "2"} and {"reference", "eager", "default"} <= set(rows["2"])
    assert all(r["images_per_s"] > 0 for r in rows["2"].values())
    speed = json.loads((out / "speed_b16.json").read_text())
    assert speed["versus"] == "reference" and speed["ratio"] > 0 and "dry run: not judged" in speed["line"]
    for c in CHECKS:
        if c.startswith("real_") and c not in missing:
            real = json.loads((out / f"{c}.json").read_text())
            assert real["images_per_s"] > 0 and real["cpu_s_per_sample"] > 0 and real["fraction_of_synthetic"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is not missing and list(summary["checks"]) == CHECKS
