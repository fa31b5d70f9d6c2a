"""Ctrl-C (SIGINT) as a terminal delivers it, to the whole foreground process group: the first one
finishes the step, checkpoints on every rank and exits 130 saying how to resume; the resumed run
ends with the uninterrupted run's generator, bit for bit. A second Ctrl-C exits at once and leaves
the last complete checkpoint as it was. Each signal goes only after the run has acknowledged the
one before (its log line), so nothing depends on signal order."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from helpers.scaleout import (
    assert_same_weights,
    final_weights,
    launch_cmd,
    metrics,
    run,
    start,
    stop_job,
    train_args,
    wait_for_step,
)
from p2p_dist.train.signals import REPEAT_WINDOW_S

LONG = ["train.max_steps=100000", "optim.schedule=constant"]  # the learning rate does not depend on max_steps
BATCH = 48  # seconds per step: the second press lands in a step or its checkpoint, after the echo window
ACK = "received SIGINT: will checkpoint after the current step and exit"


def complete_checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    return (
        sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / "trainer_state.json").is_file())
        if root.is_dir()
        else []
    )


def newest_checkpoint(out: Path) -> Path:
    return complete_checkpoints(out)[-1]


def wait_for_checkpoint_after(out: Path, step: int, job, timeout: float = 120) -> Path:
    """The newest complete checkpoint once one past `step` exists (fails early when the job ends)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and job.poll() is None:
        done = complete_checkpoints(out)
        if done and step_of(done[-1]) > step:
            return done[-1]
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after step {step} (job: {job.poll()})")


def step_of(ckpt: Path) -> int:
    return json.loads((ckpt / "trainer_state.json").read_text())["step"]


def digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def wait_for_text(log: Path, text: str, job, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and job.poll() is None:
        if text in log.read_text():
            return
        time.sleep(0.05)
    assert text in log.read_text(), f"no {text!r} in the log:\n{log.read_text()[-3000:]}"


def interrupt_once(cmd: list[str], out: Path, log: Path, after_step: int) -> tuple[int, str]:
    """Start `cmd` in its own session, Ctrl-C its process group after `after_step`; (exit code, log)."""
    job = start(cmd, log)
    try:
        wait_for_step(out, after_step, job)
        os.killpg(job.pid, signal.SIGINT)
        rc = job.wait(timeout=120)
    finally:
        stop_job(job)
    return rc, log.read_text()


def test_ctrl_c_single_process_checkpoints_exits_130_and_resumes_exactly(scenes_data, tmp_path):
    out = tmp_path / "run"
    rc, text = interrupt_once([sys.executable, *train_args(scenes_data, out, *LONG)], out, tmp_path / "a.log", 2)
    assert rc == 130, text[-3000:]
    ckpt = newest_checkpoint(out)
    stopped = step_of(ckpt)
    assert text.count(ACK) == 1 and "Traceback" not in text and "DataLoader worker" not in text, text[-3000:]
    assert f"stopped by SIGINT at step {stopped}; to resume, run the same command again" in text, text[-3000:]
    assert f"checkpoint {ckpt}" in text and not (out / "final").exists()
    end = stopped + 2
    resumed = run([sys.executable, *train_args(scenes_data, out, "optim.schedule=constant", f"train.max_steps={end}")])
    assert f"resumed from {ckpt}" in resumed.stderr
    assert [r["step"] for r in metrics(out)] == list(range(1, end + 1))
    reference = tmp_path / "reference"
    run([sys.executable, *train_args(scenes_data, reference, "optim.schedule=constant", f"train.max_steps={end}")])
    assert_same_weights(final_weights(reference), final_weights(out))


@pytest.mark.slow
def test_ctrl_c_to_accelerate_launch_checkpoints_every_rank_and_resumes_exactly(scenes_data, tmp_path):
    """The terminal signals the launcher's process group; torchrun passes SIGINT on to each rank's own
    group (the rank and its data worker)."""
    out = tmp_path / "run"
    rc, text = interrupt_once(launch_cmd("cpu_2proc", *train_args(scenes_data, out, *LONG)), out, tmp_path / "a.log", 2)
    assert rc != 0
    ckpt = newest_checkpoint(out)
    stopped = step_of(ckpt)
    # each rank acknowledged once (its data worker stays quiet); the launcher itself ends with its
    # own SignalException report after the ranks have exited (torchrun prints no exit codes then)
    assert text.count(ACK) == 2 and "DataLoader worker" not in text, text[-4000:]
    assert re.search(rf"stopped by (SIGINT|Ctrl-C on another rank) at step {stopped}; to resume", text), text[-4000:]
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    end = stopped + 2
    settings = ("optim.schedule=constant", f"train.max_steps={end}")
    resumed = run(launch_cmd("cpu_2proc", *train_args(scenes_data, out, *settings)))
    assert f"resumed from {ckpt}" in resumed.stderr
    reference = tmp_path / "reference"
    run(launch_cmd("cpu_2proc", *train_args(scenes_data, reference, *settings)))
    assert_same_weights(final_weights(reference), final_weights(out))


def test_second_ctrl_c_exits_at_once_and_keeps_the_last_checkpoint(scenes_data, tmp_path):
    """Steps of BATCH images (seconds each) and a checkpoint after every step: the second Ctrl-C, sent
    once the run has acknowledged the first and the echo window has passed, lands while a step or
    its checkpoint is in progress. When the run was quicker (it then stopped by itself, which is
    fine) the next attempt resumes and tries again."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        *train_args(scenes_data, out, *LONG, f"train.batch_size={BATCH}", "train.checkpoint_every=1"),
    ]
    for attempt in range(3):
        log = tmp_path / f"attempt-{attempt}.log"
        job = start(cmd, log)
        try:
            wait_for_checkpoint_after(out, step_of(newest_checkpoint(out)) if attempt else 0, job)
            os.killpg(job.pid, signal.SIGINT)
            wait_for_text(log, ACK, job)
            time.sleep(REPEAT_WINDOW_S + 0.2)  # a second press, not the launcher's echo of the first
            good = newest_checkpoint(out)  # the newest complete checkpoint: it must survive as it is
            before = digest(good)
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGINT)
            rc = job.wait(timeout=120)
        finally:
            stop_job(job)
        text = log.read_text()
        if "received SIGINT again: exiting now (last complete checkpoint kept)" in text:
            assert rc == 130 and "Traceback" not in text, text[-3000:]
            break
        # the run finished its stop by itself; a press that lands while it is exiting ends it by
        # SIGINT's default action (the checkpoint is complete by then): either way, try again
        assert "stopped by SIGINT at step" in text and rc in (130, -signal.SIGINT), text[-3000:]
    else:
        raise AssertionError("the second Ctrl-C never arrived before the run stopped by itself in 3 attempts")
    assert good.is_dir() and digest(good) == before, "the last complete checkpoint changed"
    for folder in complete_checkpoints(out):
        assert {"trainer_state.json", "generator.safetensors", "model.safetensors", "optimizer.bin"} <= {
            f.name for f in folder.iterdir()
        }
    good = newest_checkpoint(out)
    # the next start removes the half-written temp folder and continues from that checkpoint
    resumed = run(
        [
            sys.executable,
            *train_args(
                scenes_data,
                out,
                "optim.schedule=constant",
                f"train.batch_size={BATCH}",
                f"train.max_steps={step_of(good) + 1}",
            ),
        ]
    )
    assert f"resumed from {good}" in resumed.stderr
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
