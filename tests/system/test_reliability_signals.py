"""Signals, the parts that tests/system/test_train_signals.py (2-process preemption) leaves out: the run
stops within one step of the signal, and a second signal (another one, or the same one a second
later) exits at once without touching the last complete checkpoint, from which the run then
continues to exactly the uninterrupted result."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from helpers.scaleout import (
    assert_same_weights,
    final_weights,
    metrics,
    run,
    start,
    stop_job,
    train_args,
    wait_for_step,
)

STEPS = 16
SETTINGS = [f"train.max_steps={STEPS}", "train.checkpoint_every=4", "train.keep_checkpoints=2", "data.num_workers=0"]


def train_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, *train_args(data, out, *SETTINGS)]


def logged_steps(out: Path) -> int:
    rows = metrics(out) if (out / "metrics.jsonl").is_file() else []
    return rows[-1]["step"] if rows else 0


def complete_checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / "trainer_state.json").is_file())


def fresh(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_signal_stops_within_one_step_and_a_second_one_exits_at_once(scenes_data, tmp_path):
    out = tmp_path / "run"

    # 1. SIGUSR1: the step in progress is the last one; its checkpoint is written; exit 75
    job = start(train_cmd(scenes_data, out), tmp_path / "first.log")
    try:
        wait_for_step(out, 2, job)
        job.send_signal(signal.SIGUSR1)
        done_when_sent = logged_steps(out)  # read after sending: the run was at most one step further
        assert job.wait(timeout=120) == 75
    finally:
        stop_job(job)
    text = (tmp_path / "first.log").read_text()
    stopped = json.loads((complete_checkpoints(out)[-1] / "trainer_state.json").read_text())["step"]
    assert 2 <= stopped <= done_when_sent + 1, (stopped, done_when_sent)
    assert logged_steps(out) == stopped and f"stopped by SIGUSR1 at step {stopped}" in text, text[-2000:]
    assert stopped < STEPS and not (out / "final").exists()

    # 2. resumed; SIGUSR1 (SLURM's advance warning), then SIGTERM while the stop checkpoint is being
    # written (the same signal twice within a second counts once: torchrun echoes what the process
    # group got). A tiny checkpoint is written in tens of milliseconds: when the poll misses the
    # window, the run stops by itself (which is fine) and the next attempt resumes from there.
    root = out / "checkpoints"
    for attempt in range(3):
        log = tmp_path / f"second-{attempt}.log"
        started = time.time()
        job = start(train_cmd(scenes_data, out), log)
        try:
            wait_for_step(out, stopped + 1, job)
            good = complete_checkpoints(out)[-1]  # the newest complete checkpoint: it must survive as it is
            before = digest(good)
            job.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 60
            # two signals sent back to back to a multi-threaded process may be handled in either order:
            # SIGTERM goes only after the run has acknowledged SIGUSR1, as with SLURM's advance warning
            while time.monotonic() < deadline and job.poll() is None and "received SIGUSR1" not in log.read_text():
                os.sched_yield()
            while time.monotonic() < deadline and job.poll() is None:  # busy poll: the window is short
                temps = [
                    n
                    for n in os.listdir(root)
                    if n.startswith(".step-") and n.endswith(".tmp") and ".deleting" not in n
                ]
                if any(fresh(root / n, started) for n in temps):
                    job.send_signal(signal.SIGTERM)  # mid-write of the stop checkpoint
                    break
                os.sched_yield()
            assert job.wait(timeout=60) == 75
        finally:
            stop_job(job)
        text = log.read_text()
        assert "received SIGUSR1: will checkpoint" in text and "Traceback" not in text, text[-3000:]
        assert good.is_dir() and digest(good) == before, "the last complete checkpoint changed"
        if "received SIGTERM again: exiting now" in text:
            break
        stopped = json.loads((complete_checkpoints(out)[-1] / "trainer_state.json").read_text())["step"]
    else:
        raise AssertionError("the second signal never arrived during a checkpoint write in 3 attempts")
    for folder in complete_checkpoints(out):
        assert {"trainer_state.json", "generator.safetensors", "model.safetensors", "optimizer.bin"} <= {
            f.name for f in folder.iterdir()
        }

    # 3. the next start cleans up, continues from the newest complete checkpoint and loses nothing
    resumed = run(train_cmd(scenes_data, out))
    assert "resumed from" in resumed.stderr
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "temp folders left after the restart"
    assert [r["step"] for r in metrics(out)] == list(range(1, STEPS + 1))
    reference = tmp_path / "reference"
    run(train_cmd(scenes_data, reference))
    assert_same_weights(final_weights(reference), final_weights(out))
