"""Helpers for the scale-out tests (DeepSpeed, multi-node, signals, SLURM): launching real
`accelerate launch` jobs on the tiny settings and comparing what they wrote."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers.env import BIN, ROOT, free_port, subprocess_env

ACCEL = ROOT / "recipes" / "accelerate"
# tiny networks, one image per process per step, one data worker per process streaming the shards (the
# signal tests check that worker survives; the default config otherwise)
TINY = [
    "model.ngf=8",
    "model.ndf=8",
    "data.direction=BtoA",
    "train.log_every=1",
    "train.sample_every=0",
    "train.batch_size=1",
    "data.shuffle_buffer=8",
    "data.num_workers=1",
    "data.placement=stream",
    "train.checkpoint_every=100",
]


def train_args(data: Path, out: Path, *overrides: str) -> list[str]:
    return ["-m", "p2p_dist.train", f"data.train={data}/train", f"train.output_dir={out}", *TINY, *overrides]


def launch_cmd(
    config: str, *args: str, nproc: int = 2, port: int | None = None, machines: int = 1, machine_rank: int = 0
) -> list[str]:
    """`accelerate launch` with one of recipes/accelerate/*.yaml (name without .yaml)."""
    cmd = [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(ACCEL / f"{config}.yaml"),
        "--num_processes",
        str(nproc),
        "--main_process_port",
        str(port or free_port()),
    ]
    if machines > 1:
        cmd += ["--num_machines", str(machines), "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1"]
    return cmd + list(args)


def run(cmd: list[str], timeout: int = 300, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def start(cmd: list[str], log: Path, **env: str) -> subprocess.Popen:
    """A background job writing stdout+stderr to `log`, in its own session (so tests can signal it)."""
    fh = open(log, "w")  # noqa: SIM115 (the background job writes to it until it ends)
    return subprocess.Popen(
        cmd, env=subprocess_env(**env), stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
    )


def stop_job(proc: subprocess.Popen) -> None:
    """Kill a background job's whole process group (cleanup after a failed assertion)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until metrics.jsonl (rank 0) shows `step`; fails early when the job ends."""
    metrics = out / "metrics.jsonl"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if metrics.is_file():
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.strip().endswith("}")]
            if steps and steps[-1] >= step:
                return
        if proc.poll() is not None:
            raise AssertionError(f"job ended ({proc.returncode}) before step {step}")
        time.sleep(0.1)
    raise AssertionError(f"no step {step} in {metrics} after {timeout} s")


def metrics(out: Path) -> list[dict]:
    """The loss lines of metrics.jsonl (validation and alarm lines, which share a step, left out)."""
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "lr" in r]


def final_weights(out: Path, name: str = "generator.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / name))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def training_processes(launcher_pid: int) -> dict[int, int]:
    """{global rank: pid} of the training processes a launcher started (RANK in their environment)."""
    ranks = {}
    for pid in child_pids(launcher_pid):
        try:
            env = dict(x.split("=", 1) for x in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in x)
        except OSError:
            continue
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks
