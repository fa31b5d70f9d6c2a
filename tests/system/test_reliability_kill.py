"""kill -9 survival: a 2-process run (the default config, with EMA and validation on) killed again and
again (mid-step, mid-checkpoint, either rank) and resumed with train.resume=auto ends with exactly the
generators of an uninterrupted run, and no `step-*` folder is ever half written."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.scaleout import (
    assert_same_weights,
    final_weights,
    launch_cmd,
    run,
    start,
    stop_job,
    train_args,
    training_processes,
)

STEPS = 6
# every step checkpointed (so kills land in checkpoint writes), rotation on, no data worker
SETTINGS = [f"train.max_steps={STEPS}", "train.checkpoint_every=1", "train.keep_checkpoints=2", "data.num_workers=0"]
SETTINGS += ["train.ema_decay=0.5", "train.val_every=2"]  # + data.val in the test
CHECKPOINT_FILES = {
    "trainer_state.json",
    "generator.safetensors",
    "generator.json",
    "model.safetensors",
    "model_1.safetensors",
    "optimizer.bin",
    "optimizer_1.bin",
    "random_states_0.pkl",
    "random_states_1.pkl",
}


def step_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    return sorted(p for p in root.iterdir() if p.name.startswith("step-")) if root.is_dir() else []


def assert_no_half_written_step_dir(out: Path) -> None:
    """Cheap check, run while the job writes: a `step-*` name only ever holds a finished checkpoint."""
    for p in step_dirs(out):
        # rotation may rename a folder away between listing and looking: gone is fine, half is not
        assert (p / "trainer_state.json").is_file() or not p.exists(), f"{p} is visible before it is complete"


def assert_complete(folder: Path) -> None:
    """Every file of a 2-rank checkpoint is there and loads; the state names the folder's step."""
    assert {f.name for f in folder.iterdir()} >= CHECKPOINT_FILES, sorted(f.name for f in folder.iterdir())
    state = json.loads((folder / "trainer_state.json").read_text())
    assert f"step-{state['step']:07d}" == folder.name and state["world_size"] == 2
    for name in ("generator.safetensors", "model.safetensors", "model_1.safetensors"):
        assert load_file(str(folder / name)), name
    for name in ("optimizer.bin", "optimizer_1.bin", "random_states_0.pkl", "random_states_1.pkl"):
        assert torch.load(folder / name, weights_only=False, map_location="cpu") is not None, name


def wait_then_kill(
    job, out: Path, when: str, step: int, rank: int, delay: float, started: float, timeout: float = 120
) -> str:
    """Poll the checkpoints folder without pause; at the chosen moment SIGKILL one rank.

    when="step": `delay` s after this job completed checkpoint `step` (the ranks are in step+1);
    when="checkpoint": as soon as this job's temp folder of a checkpoint >= `step` exists (mid-write).
    Folders older than `started` (left by an earlier job) do not count. Returns what was seen.
    """
    root = out / "checkpoints"

    def fresh(name: str) -> bool:
        try:
            return (root / name).stat().st_mtime >= started
        except FileNotFoundError:
            return False

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert job.poll() is None, f"the job ended ({job.returncode}) before the kill point {when} {step}"
        names = os.listdir(root) if root.is_dir() else []
        assert_no_half_written_step_dir(out)
        if when == "step" and f"step-{step:07d}" in names and fresh(f"step-{step:07d}"):
            time.sleep(delay)
            break
        if when == "checkpoint" and any(
            n.startswith(".step-") and n.endswith(".tmp") and ".deleting" not in n and int(n[6:13]) >= step and fresh(n)
            for n in names
        ):
            break
        os.sched_yield()  # busy poll: a tiny checkpoint is written in milliseconds
    else:
        raise AssertionError(f"no kill point {when} {step} within {timeout} s")
    ranks = training_processes(job.pid)
    os.kill(ranks[rank], signal.SIGKILL)
    return ", ".join(sorted(names))


def assert_group_gone(job) -> None:
    """The launcher ended and took every training process (and any worker) of its session down."""
    rc = job.wait(timeout=120)
    assert rc != 0, "a killed rank must fail the launch"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(job.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("processes of the killed job are still running")


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_generator(scenes_data, tmp_path):
    settings = [*SETTINGS, f"data.val={scenes_data}/val"]
    reference = tmp_path / "reference"
    run(launch_cmd("cpu_2proc", *train_args(scenes_data, reference, *settings)))

    out = tmp_path / "killed"
    rng = random.Random(1611)  # random moments inside a step, the same on every run of the test
    # (when, step, rank): mid-step, then mid-checkpoint-write on rank 0 (it writes the models and
    # renames the folder) and on rank 1 (it writes its RNG state), each after resuming from the last
    kills = [("step", 2, 1), ("checkpoint", 3, 0), ("checkpoint", 4, 1)]
    seen = []
    for when, step, rank in kills:
        delay = rng.uniform(0.0, 0.05)
        log = tmp_path / f"kill-{when}-{step}.log"
        started = time.time()
        job = start(launch_cmd("cpu_2proc", *train_args(scenes_data, out, *settings)), log)
        try:
            seen.append((when, step, rank, wait_then_kill(job, out, when, step, rank, delay, started)))
            assert_group_gone(job)
        finally:
            stop_job(job)
        text = log.read_text()
        assert "SIGKILL" in text, f"{seen[-1]}: {text[-3000:]}"
        assert step_dirs(out), f"no complete checkpoint after the kill at {when} {step}"
        for folder in step_dirs(out):
            assert_complete(folder)

    # the last start resumes from the newest complete checkpoint and finishes the run
    proc = run(launch_cmd("cpu_2proc", *train_args(scenes_data, out, *settings)))
    assert "resumed from" in proc.stderr, proc.stderr[-3000:]
    for name in ("generator.safetensors", "generator_raw.safetensors"):  # the EMA and the online G
        assert_same_weights(final_weights(reference, name), final_weights(out, name))  # nothing lost, nothing twice
    records, reference_records = (
        [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()] for folder in (out, reference)
    )
    losses = [r["step"] for r in records if "G_L1" in r]
    assert losses == list(range(1, STEPS + 1)), "each step's losses once after the resumes"
    # the validations (steps 2, 4, 6) once each, with the uninterrupted run's numbers
    val = lambda rs: [{k: v for k, v in r.items() if k.startswith("val_") and k != "val_seconds"} for r in rs]  # noqa: E731
    assert [r["step"] for r in records] == [r["step"] for r in reference_records]
    assert val(records) == val(reference_records) and any(v.get("val_L1", 0) > 0 for v in val(records))
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")], "temp folders left behind"
    for folder in step_dirs(out):
        assert_complete(folder)
