"""The real slurm/ scripts on a real SLURM: a 2-node training job that is preempted with USR1,
checkpoints, requeues itself and resumes to the end, and an evaluation job array.

Needs `sbatch` on PATH and a running cluster with 2 idle nodes (`.ci/run` starts one from
../shared/slurm/ when run as root); elsewhere every test here skips and says why (pytest -ra).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers.env import ROOT, subprocess_env
from helpers.scaleout import TINY, metrics

SHARED_SLURM = ROOT.parent / "shared" / "slurm"
FAST_REQUEUE = SHARED_SLURM / "fast-requeue.sh"
VENV = ROOT / ".venv"
STEPS = 60


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (CI starts a local SLURM from ../shared/slurm/ when run as root)"
    if not FAST_REQUEUE.is_file():
        return f"{FAST_REQUEUE} is missing (needed to skip SLURM's requeue hold)"
    if not (VENV / "bin" / "accelerate").is_file():
        return f"no {VENV} with accelerate: the jobs run the repository's venv"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM does not answer: {exc}"
    if "UP" not in ping.stdout:
        return f"the SLURM controller is not up: {(ping.stdout + ping.stderr).strip()[:200]}"
    usable = {
        line.split()[0]
        for line in nodes.stdout.splitlines()
        if len(line.split()) == 2 and re.match(r"idle|mixed", line.split()[1])
    }
    if len(usable) < 2:
        return f"needs 2 idle SLURM nodes, found: {nodes.stdout.strip() or 'none'}"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


def _job_records(jid: str) -> list[dict[str, str]]:
    """`scontrol show job` records of a job (one per array task), as key=value dicts."""
    text = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True, timeout=20).stdout
    return [
        dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", block)) for block in text.split("\n\n") if block.strip()
    ]


def _submit(args: list[str]) -> str:
    proc = subprocess.run(
        ["sbatch", "--parsable", *args], env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"sbatch refused the job: {proc.stderr.strip()}"
    return proc.stdout.strip().split(";")[0]


FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def _wait_done(jid: str, timeout: int) -> list[dict[str, str]]:
    """Until every task of the job is in a final state; ../shared/slurm/fast-requeue.sh releases a
    requeued job from SLURM's hold at once. It returns when `squeue` lists nothing, which also
    happens when squeue fails for a moment, so the final state is checked with scontrol.
    (`sbatch --wait` polls with a back-off of up to 32 s and reports 0 for a job cancelled while
    pending: not used here.)"""
    end = time.monotonic() + timeout
    while True:
        left = max(1, int(end - time.monotonic()))
        subprocess.run(
            ["timeout", str(left + 10), "bash", str(FAST_REQUEUE), jid, str(left)],
            capture_output=True,
            text=True,
            timeout=left + 30,
        )
        records = _job_records(jid)
        if records and all(r.get("JobState") in FINAL_STATES for r in records):
            return records
        if time.monotonic() > end:
            raise AssertionError(f"job {jid} not finished after {timeout} s: {[r.get('JobState') for r in records]}")
        time.sleep(0.5)


def _wait_for_requeue(jid: str, timeout: float) -> None:
    """Until SLURM holds the requeued job back (PENDING, reason BeginTime), then 2 s more: slurmd
    rejects a job whose new credential carries the same second as the revocation of the previous
    run's ("Job credential revoked"), which SLURM's own ~120 s hold avoids and fast-requeue would not."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = subprocess.run(
            ["squeue", "-h", "-j", jid, "-o", "%T %r"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
        if state == "PENDING BeginTime":
            time.sleep(2)
            return
        records = _job_records(jid)
        if records and all(r.get("JobState") in FINAL_STATES for r in records):
            return  # ended without a requeue: the assertions on the log say why
        time.sleep(0.1)
    raise AssertionError(f"job {jid} was not requeued within {timeout} s")


def _wait_for_training(out: Path, jid: str, timeout: float) -> None:
    """Until rank 0 logged step 1 (the signal handlers are installed by then)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip():
            return
        state = subprocess.run(
            ["squeue", "-h", "-j", jid, "-o", "%T"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
        if not state:
            raise AssertionError(f"job {jid} left the queue before training started: {_job_records(jid)}")
        time.sleep(0.2)
    raise AssertionError(f"job {jid}: no training step after {timeout} s")


@pytest.fixture(scope="module")
def preempted_training(cluster, scenes_data, tmp_path_factory):
    """slurm/train.sbatch on 2 nodes; USR1 to the batch script once training runs; the job must
    checkpoint, requeue itself and finish the run from that checkpoint."""
    work = tmp_path_factory.mktemp("slurm_train")
    out = work / "run"
    jid = _submit(
        [
            "--nodes=2",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--time=00:10:00",
            f"--output={work}/slurm-%j.out",
            f"--chdir={ROOT}",
            f"--export=ALL,P2P_REPO={ROOT},P2P_VENV={VENV}",
            str(ROOT / "slurm" / "train.sbatch"),
            "recipes/demo.yaml",
            f"data.train={scenes_data}/train",
            f"data.val={scenes_data}/val",
            f"train.output_dir={out}",
            *TINY,
            f"train.max_steps={STEPS}",
            "train.keep_checkpoints=3",
        ]
    )
    log = work / f"slurm-{jid}.out"
    try:
        _wait_for_training(out, jid, timeout=180)
        subprocess.run(["scancel", "--batch", "--signal=USR1", jid], check=True, timeout=20)
        _wait_for_requeue(jid, timeout=120)
        _wait_done(jid, 300)
    except BaseException:
        subprocess.run(["scancel", jid], timeout=20)
        print(log.read_text()[-6000:] if log.exists() else "(no job log)")
        raise
    return out, log.read_text(), jid


@pytest.mark.slurm
@pytest.mark.slow
def test_train_sbatch_checkpoints_requeues_and_resumes_on_usr1(preempted_training):
    out, text, jid = preempted_training
    assert "2 node(s) x 1 process(es), engine ddp" in text
    assert "2 process(es) on 2 machine(s), ddp" in text
    assert "USR1: asking every training process to checkpoint and stop" in text
    m = re.search(r"stopped by SIGUSR1 at step (\d+)", text)
    assert m, text[-6000:]
    stopped = int(m.group(1))
    assert 1 <= stopped < STEPS
    assert f"requeueing job {jid}" in text and f"job {jid} (restart 1)" in text
    assert f"resumed from {out / 'checkpoints' / f'step-{stopped:07d}'}" in text
    assert "training finished" in text
    [info] = _job_records(jid)
    assert (info.get("JobState"), info.get("ExitCode"), info.get("Restarts")) == ("COMPLETED", "0:0", "1"), info
    # the preemption checkpoint and the last one; every step logged exactly once across both runs
    names = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert names == [f"step-{stopped:07d}", f"step-{STEPS:07d}"], names
    assert [r["step"] for r in metrics(out)] == list(range(1, STEPS + 1))
    assert (out / "final" / "generator.safetensors").is_file()


@pytest.mark.slurm
@pytest.mark.slow
def test_eval_sbatch_array_scores_each_checkpoint(preempted_training, scenes_data, tmp_path):
    out, _, _ = preempted_training
    ckpts = sorted(p for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    items = [str(ckpts[0]), f"last={out}"]  # a checkpoint folder, and NAME=run folder (its final/)
    jid = _submit(
        [
            "--array=0-1",
            "--gpus=0",
            "--cpus-per-task=1",
            "--time=00:10:00",
            f"--output={tmp_path}/eval-%A_%a.out",
            f"--chdir={ROOT}",
            f"--export=ALL,P2P_REPO={ROOT},P2P_VENV={VENV}",
            str(ROOT / "slurm" / "eval.sbatch"),
            "--shards",
            f"{scenes_data}/val",
            "--out",
            str(tmp_path / "eval"),
            "--mode",
            "image",
            "--metrics",
            "l1,psnr",
            "--num-workers",
            "0",
            "--",
            *items,
        ]
    )
    records = _wait_done(jid, 300)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("eval-*.out")))
    assert sorted(r.get("ArrayTaskId") for r in records) == ["0", "1"], records
    assert all((r.get("JobState"), r.get("ExitCode")) == ("COMPLETED", "0:0") for r in records), logs[-4000:]
    scores = {}
    for name in (f"run-{ckpts[0].name}", "last"):
        data = json.loads((tmp_path / "eval" / name / "scores.json").read_text())
        assert data["name"] == name and data["results"]["samples"] == 4
        scores[name] = data["results"]["metrics"]
    assert all(0 < s["l1"] < 2 and s["psnr"] > 0 for s in scores.values())
    assert scores["last"] != scores[f"run-{ckpts[0].name}"]  # two different generators were scored


# --- the scripts' own checks, which need no cluster ------------------------------------------------


@pytest.mark.parametrize("script", ["train.sbatch", "eval.sbatch", "launch_node.sh"])
def test_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(ROOT / "slurm" / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("train.sbatch", ["--engine", "deepspeed_zero3", "recipes/demo.yaml"], "ZeRO-3 is not supported"),
        ("train.sbatch", ["--engine", "fsdp", "recipes/demo.yaml"], "choose ddp, deepspeed_zero1 or deepspeed_zero2"),
        ("train.sbatch", [], "usage: sbatch slurm/train.sbatch"),
        ("train.sbatch", ["recipes/missing.yaml"], "recipe recipes/missing.yaml not found"),
        ("eval.sbatch", ["--shards", "x"], "usage: sbatch --array"),
        ("eval.sbatch", ["--shards", "x", "--", "a"], "--out OUT is required"),
        ("eval.sbatch", ["--out", "o", "--checkpoint", "c", "--", "a"], "--checkpoint is set per ITEM"),
    ],
)
def test_scripts_refuse_bad_arguments_with_one_line(script, args, message, tmp_path):
    env = {
        k: v for k, v in subprocess_env(P2P_REPO=str(ROOT), P2P_VENV=str(VENV)).items() if not k.startswith("SLURM_")
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "slurm" / script), *args], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert proc.returncode == 2
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stdout + proc.stderr
