"""Preemption: a signal sent to a running 2-process job makes every rank finish its step, write one
checkpoint together and exit with code 75 (p2p_dist.errors.EXIT_PREEMPTED)."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from helpers.scaleout import launch_cmd, start, stop_job, train_args, training_processes, wait_for_step

LONG = "train.max_steps=100000"  # a run that only a signal ends


def _checkpoints(out):
    root = out / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.mark.slow
def test_usr1_to_one_rank_stops_every_rank_at_the_same_step(scenes_data, tmp_path):
    """USR1 reaches rank 1 only (DDP): rank 0 learns it in the per-step agreement, both checkpoint."""
    out, log = tmp_path / "run", tmp_path / "job.log"
    job = start(launch_cmd("cpu_2proc", *train_args(scenes_data, out, LONG)), log)
    try:
        wait_for_step(out, 2, job)
        ranks = training_processes(job.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGUSR1)
        job.wait(timeout=120)
    finally:
        stop_job(job)
    text = log.read_text()
    assert text.count("received SIGUSR1: will checkpoint after the current step and exit") >= 1, text[-4000:]
    # both training processes exited with the preemption code (torchrun reports each failure)
    assert re.search(r"exitcode\s*:\s*75\b", text), text[-4000:]
    assert "killed by signal" not in text and "DataLoader worker" not in text, text[-4000:]
    names = _checkpoints(out)
    assert len(names) == 1 and not names[0].startswith("."), names
    ckpt = out / "checkpoints" / names[0]
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert f"stopped by SIGUSR1 at step {step}" in text or f"stopped by a signal on another rank at step {step}" in text
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()  # every rank
    assert not (out / "final").exists()


@pytest.mark.slow
def test_sigterm_to_the_launcher_checkpoints_every_deepspeed_rank(scenes_data, tmp_path):
    """TERM to `accelerate launch` (what `kill`, a container runtime or SLURM sends): torchrun passes
    it to each training process group (trainer and its data workers); the trainers checkpoint and exit
    75, the data workers must survive until then."""
    out, log = tmp_path / "run", tmp_path / "job.log"
    job = start(launch_cmd("deepspeed_zero2", *train_args(scenes_data, out, LONG)), log)
    try:
        wait_for_step(out, 2, job)
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=120)
    finally:
        stop_job(job)
    text = log.read_text()
    assert "DataLoader worker" not in text, "a data worker died from the signal before the checkpoint:\n" + text[-4000:]
    assert text.count("received SIGTERM: will checkpoint after the current step and exit") >= 2, text[-4000:]
    names = _checkpoints(out)
    assert len(names) == 1 and not names[0].startswith("."), names
    ckpt = out / "checkpoints" / names[0]
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert step >= 2 and f"stopped by SIGTERM at step {step}" in text
    for model in ("G", "D"):
        for rank in (0, 1):
            assert (ckpt / "deepspeed" / model / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    assert (ckpt / "rng_state_0.pt").is_file() and (ckpt / "rng_state_1.pt").is_file()
    assert (ckpt / "generator.safetensors").is_file()
