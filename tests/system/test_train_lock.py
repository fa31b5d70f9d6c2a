"""One run per output folder (p2p_dist/train/lock.py): a second run on a folder in use is refused
by every one of its processes with one line naming the holder; a holder killed with SIGKILL leaves
no stale lock, and the next run takes the folder over with a message."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys

import pytest

from helpers.scaleout import launch_cmd, metrics, run, start, stop_job, train_args, wait_for_step
from p2p_dist.train.lock import LOCK_FILE, FolderInUse, RunLock

LONG = ["train.max_steps=100000", "optim.schedule=constant"]  # a run that only a signal ends


def test_lock_in_one_process_names_the_holder_and_is_released(tmp_path):
    first = RunLock(tmp_path).acquire()
    info = json.loads((tmp_path / LOCK_FILE).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    with pytest.raises(FolderInUse, match=f"is in use by pid {os.getpid()} on host "):
        RunLock(tmp_path).acquire()  # another open file description: refused like another process
    first.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean release leaves no record
    again = RunLock(tmp_path).acquire()
    assert not again.taken_over
    again.release()


@pytest.mark.slow
def test_second_run_is_refused_and_a_killed_holder_leaves_no_stale_lock(scenes_data, tmp_path):
    out = tmp_path / "run"
    holder = start([sys.executable, *train_args(scenes_data, out, *LONG)], tmp_path / "holder.log")
    try:
        wait_for_step(out, 2, holder)
        # a second run, 2 processes: every rank exits (rank 0 with the reason, rank 1 quietly), none hangs
        second = run(launch_cmd("cpu_2proc", *train_args(scenes_data, out, "train.max_steps=4")), check=False)
        assert second.returncode != 0
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, second.stderr[-4000:]
        assert f"train.output_dir {out} is in use by pid {holder.pid} on host {socket.gethostname()}" in errors[0]
        codes = re.findall(r"exitcode\s*:\s*(-?\d+)", second.stderr)
        # every rank exits 2; the launcher may end the second one (SIGTERM) before it gets there itself
        assert "2" in codes and set(codes) <= {"2", "-15"}, second.stderr[-4000:]
        assert holder.poll() is None, "the holder stopped"
        steps = [r["step"] for r in metrics(out)]
        assert steps == sorted(set(steps)), "the refused run wrote metrics"
        # kill -9 of the training process only: its data worker may outlive it for a moment and
        # must not hold the lock (each forked child closes its copy)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        third = run([sys.executable, *train_args(scenes_data, out, "train.max_steps=2", "train.resume=none")])
        assert f"taking over {out / LOCK_FILE}: its holder (pid {holder.pid} on host" in third.stderr, third.stderr
        assert (out / "final" / "generator.safetensors").is_file()
        assert (out / LOCK_FILE).read_text() == ""
    finally:
        stop_job(holder)
