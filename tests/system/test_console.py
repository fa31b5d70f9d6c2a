"""Console output that is not a terminal (SLURM logs, `> log`, pipes) is never hard-wrapped: one
message, one line, on every command; progress bars become plain lines (p2p_dist/console.py).
Each command writes to a log file a message that names a path longer than 200 characters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.env import BIN, ROOT, subprocess_env
from helpers.scaleout import train_args
from p2p_dist.console import LineProgress, make_console


@pytest.fixture
def deep(tmp_path) -> Path:
    """A folder whose path is longer than 200 characters (rich wrapped at 80 before)."""
    path = tmp_path / ("long-folder-name-" * 6) / ("and-another-one-" * 6)
    assert len(str(path)) > 200
    return path


def logged(cmd: list[str], log: Path) -> list[str]:
    """Run a command with stdout and stderr going to a file, as in a batch job; its lines."""
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=ROOT, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text.splitlines()


def one_line(lines: list[str], *parts: str) -> str:
    found = [line for line in lines if all(p in line for p in parts)]
    assert found, "no line holds all of " + repr(parts) + ":\n" + "\n".join(lines[-40:])
    return found[0]


def test_console_and_progress_in_a_file(tmp_path):
    message = "checkpoint " + "/very/long/path" * 20
    with open(tmp_path / "log", "w") as fh:
        console = make_console(stderr=False)
        console.file = fh
        console.print(message)
        progress = LineProgress(console)
        task = progress.add_task("packing train", total=20)
        for _ in range(20):
            progress.advance(task)
        progress.stop()
    lines = (tmp_path / "log").read_text().splitlines()
    assert lines[0] == message
    assert lines[1] == "packing train: started, 20 to do"
    assert [line.split(",")[0] for line in lines[2:]] == [f"packing train: {n}/20 ({5 * n}%)" for n in range(2, 21, 2)]
    assert lines[-1].endswith(", done")


@pytest.mark.slow
def test_every_command_logs_a_long_message_as_one_line(scenes_data, deep, tmp_path):
    # p2p-data: the summary table names the shard folder
    data = deep / "data"
    lines = logged(
        [
            str(BIN / "p2p-data"),
            "demo",
            "scenes",
            str(data),
            "--train",
            "2",
            "--val",
            "1",
            "--size",
            "64",
            "--shard-size",
            "2",
        ],
        tmp_path / "data.log",
    )
    one_line(lines, str(data / "train"))
    # p2p-train: the checkpoint line
    out = deep / "run"
    lines = logged(
        [sys.executable, *train_args(scenes_data, out, "train.max_steps=1", "data.num_workers=0")],
        tmp_path / "train.log",
    )
    one_line(lines, f"checkpoint {out / 'checkpoints' / 'step-0000001'}")
    # p2p-translate: the closing line names the output folder
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(images / f"p{i}.png")
    translated = deep / "translated"
    lines = logged(
        [
            str(BIN / "p2p-translate"),
            "--checkpoint",
            str(out / "final"),
            "--input",
            str(images),
            "--output",
            str(translated),
        ],
        tmp_path / "translate.log",
    )
    one_line(lines, "translated 2 image(s)", f"into {translated}")
    # p2p-eval score: the closing line names the report folder
    scores = deep / "scores"
    lines = logged(
        [
            str(BIN / "p2p-eval"),
            "score",
            "--pred",
            str(translated),
            "--target",
            str(images),
            "--metrics",
            "psnr",
            "--out",
            str(scores),
        ],
        tmp_path / "eval.log",
    )
    one_line(lines, f"wrote {scores}/scores.json")
    # p2p-convert: a reference generator file in, the written files named
    from helpers.reference import make_reference

    reference = tmp_path / "latest_net_G.pth"
    torch.save(make_reference("unet_128").state_dict(), reference)
    converted = deep / "converted"
    lines = logged(
        [str(BIN / "p2p-convert"), str(reference), str(converted), "--arch", "unet_128", "--ngf", "8"],
        tmp_path / "convert.log",
    )
    one_line(lines, f"wrote {converted / 'generator.safetensors'} and {converted / 'generator.json'}")
