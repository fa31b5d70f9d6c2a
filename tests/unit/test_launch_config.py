"""`make demo` picks an accelerate config that works on the machine: 2 gloo processes without a GPU,
1 process on cuda with one GPU (or more)."""

from __future__ import annotations

import subprocess
import sys

import yaml

from helpers.env import ROOT, subprocess_env
from p2p_dist.train.launch_config import demo_accelerate_config


def test_choice_per_gpu_count():
    cpu = yaml.safe_load((ROOT / demo_accelerate_config(0)).read_text())
    assert cpu["num_processes"] == 2 and cpu["use_cpu"] is False  # gloo DDP on a CPU-only host
    for gpus in (1, 2, 8):
        gpu = yaml.safe_load((ROOT / demo_accelerate_config(gpus)).read_text())
        assert gpu["num_processes"] == 1 and gpu["distributed_type"] == "NO" and str(gpu["gpu_ids"]) == "0"


def test_module_prints_the_config_for_this_machine():
    import torch

    proc = subprocess.run(
        [sys.executable, "-m", "p2p_dist.train.launch_config"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    expected = demo_accelerate_config(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert proc.stdout.strip() == str(expected) and (ROOT / proc.stdout.strip()).is_file()
