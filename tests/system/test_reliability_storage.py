"""Storage faults: a checkpoint write that fails (the file size limit stands in for a full disk, and
works without root or mounts) stops the run with one line and keeps the previous checkpoint intact
and resumable; packing into a folder that already holds shards is refused unless asked."""

from __future__ import annotations

import hashlib
import json
import re
import resource
import subprocess
import sys
from pathlib import Path

from helpers.env import BIN, ROOT, run_ranks, subprocess_env
from helpers.scaleout import TINY, launch_cmd, metrics, run, train_args

SETTINGS = ["train.max_steps=4", "train.checkpoint_every=2", "data.num_workers=0"]


def digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def run_with_file_size_limit(cmd: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    """Runs cmd where writes past max_bytes fail with EFBIG (Python ignores SIGXFSZ), as on a full disk;
    returns whatever the exit code (the callers check it)."""
    return subprocess.run(
        cmd,
        env=subprocess_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes)),
    )


def test_failed_checkpoint_write_stops_with_one_line_and_keeps_the_previous_one(scenes_data, tmp_path):
    out = tmp_path / "run"
    run([sys.executable, *train_args(scenes_data, out, *SETTINGS, "train.stop_after=2")])
    good = out / "checkpoints" / "step-0000002"
    before = digest(good)

    # the optimizer state (~7 MB at ngf=ndf=8) no longer fits: the step-4 checkpoint write fails
    proc = run_with_file_size_limit([sys.executable, *train_args(scenes_data, out, *SETTINGS)], 4_000_000)
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not write checkpoint {out / 'checkpoints' / 'step-0000004'}: "), last
    assert f"the last complete checkpoint ({good}) is intact" in last and "free space" in last, last
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"], "temp folder left behind"
    assert digest(good) == before and not (out / "final").exists()

    # with room again, the run resumes from that checkpoint and finishes
    proc = run([sys.executable, *train_args(scenes_data, out, *SETTINGS)])
    assert f"resumed from {good}" in proc.stderr
    assert (out / "final" / "generator.safetensors").is_file()
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]


def test_a_failed_write_on_one_rank_stops_every_rank_together(scenes_data, tmp_path):
    """2 processes: rank 0's optimizer file does not fit. Every rank exits 74 together (no rank left
    in a collective to die of a closed connection); one error line, the previous checkpoint intact."""
    out = tmp_path / "run"
    run(launch_cmd("cpu_2proc", *train_args(scenes_data, out, *SETTINGS, "train.stop_after=2")))
    good = out / "checkpoints" / "step-0000002"
    before = digest(good)
    proc = run_with_file_size_limit(launch_cmd("cpu_2proc", *train_args(scenes_data, out, *SETTINGS)), 4_000_000)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: could not write checkpoint {out / 'checkpoints'}"), (
        proc.stderr[-4000:]
    )
    # no rank died inside a collective (before: rank 1's "[rank1]: RuntimeError: Connection closed by peer")
    assert "[rank" not in proc.stderr and "Connection closed" not in proc.stderr, proc.stderr[-4000:]
    # the ranks stop together with 74; whichever exits first, the launcher may end the other (SIGTERM) before
    # its own exit, so the order and the second code depend on timing, not on the behaviour
    report = proc.stderr[proc.stderr.index("Failures:") :]
    codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", report)]
    assert 74 in codes and set(codes) <= {74, -15}, proc.stderr[-4000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"], "temp folder left behind"
    assert digest(good) == before


def test_first_checkpoint_that_fails_says_there_is_none_to_resume(scenes_data, tmp_path):
    """The weights file (3.4 MB, written through safetensors) fails: the same line, nothing half
    written under a final name."""
    out = tmp_path / "run"
    settings = ("train.max_steps=1", "train.checkpoint_every=0", "data.num_workers=0")
    proc = run_with_file_size_limit([sys.executable, *train_args(scenes_data, out, *settings)], 1_000_000)
    assert proc.returncode == 74, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not write checkpoint") and "File too large" in last, last
    assert "the last complete checkpoint (none) is intact" in last, last
    assert not list((out / "checkpoints").iterdir())
    assert not (out / "final" / "generator.safetensors").exists()


def p2p_data(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "p2p-data"), *args], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )


def test_packing_over_existing_shards_is_refused_unless_overwrite(tmp_path):
    from PIL import Image

    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 200 - 30 * i, 90)).save(src / f"p{i}.png")
    out = tmp_path / "shards"
    first = p2p_data("pack", "colorization", str(src), str(out), "--shard-size", "2")
    assert first.returncode == 0, first.stderr
    shards = {p.name: p.read_bytes() for p in out.iterdir()}

    again = p2p_data("pack", "colorization", str(src), str(out), "--shard-size", "1")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip().startswith("error:") and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "--overwrite" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == shards, "a refused pack must not touch the shards"

    forced = p2p_data("pack", "colorization", str(src), str(out), "--shard-size", "1", "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.glob("*.tar")) == ["photos-000000.tar", "photos-000001.tar", "photos-000002.tar"]


ERROR_PATH_SCRIPT = """
import gc, json, resource, sys
import torch
from p2p_dist.config import load_config
from p2p_dist.errors import UserError
from p2p_dist.train.run import train

resource.setrlimit(resource.RLIMIT_FSIZE, (4_000_000, 4_000_000))  # rank 0's optimizer file will not fit
try:
    train(load_config(None, sys.argv[1:]))
    result = {"code": 0}
except UserError as exc:  # while the error and its traceback live, as they do until the process exits
    gc.collect()
    ddp = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    result = {"code": exc.exit_code, "group": torch.distributed.is_initialized(), "ddp_alive": ddp}
print(json.dumps(result))
"""


def test_an_error_ends_the_process_group_and_releases_ddp_before_exit(scenes_data, tmp_path):
    """2 processes, a checkpoint that does not fit: train() raises on both ranks (exit code 74) with the
    DDP wrappers released and the gloo group destroyed, not left to interpreter shutdown, where a DDP
    object outliving its group could abort the process (SIGABRT instead of 74, once in a fresh clone)."""
    script = tmp_path / "error_path.py"
    script.write_text(ERROR_PATH_SCRIPT)
    out = tmp_path / "run"
    args = [f"data.train={scenes_data}/train", f"train.output_dir={out}", *TINY, "data.num_workers=0"]
    args += ["train.max_steps=4", "train.checkpoint_every=2"]
    results = [json.loads(o.strip().splitlines()[-1]) for o in run_ranks(script, *args)]
    assert results == [{"code": 74, "group": False, "ddp_alive": 0}] * 2
