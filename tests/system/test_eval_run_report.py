"""`p2p-eval report RUN`: the page for a real (short) training run with validation, samples, an
alarm and p2p-eval scores in the run folder; rendered in headless Chromium, which must show the
curves (their colours are on the screenshot) with no script error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from helpers.training import score, train
from p2p_eval.svg import PALETTE


@pytest.fixture(scope="module")
def run_folder(scenes_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    # warmup 0: the near-constant outputs of the first step raise the collapse alarm (a row to show)
    train(
        scenes_data,
        out,
        "train.max_steps=6",
        "train.val_every=3",
        "train.sample_every=2",
        "train.health.warmup=0",
        "data.num_workers=0",
        "train.checkpoint_every=3",
    )
    score(out / "final", scenes_data / "val", out / "score", "l1,psnr")
    return out


def test_report_page_holds_curves_samples_alarms_scores_and_config(run_folder, tmp_path):
    from p2p_eval.cli import main

    assert main(["report", str(run_folder), "--out", str(tmp_path)]) == 0
    page = (tmp_path / "index.html").read_text()
    series = set(re.findall(r'class="curve" data-series="([^"]+)"', page))
    assert {"D_real", "D_fake", "G_GAN", "G_L1", "val_L1", "val_PSNR", "val_SSIM", "lr", "images/s"} <= series
    assert page.count("data:image/png;base64,") == 3  # the grids of steps 2, 4, 6
    assert "<tr class='alarm'><td>1</td><td>collapse</td>" in page
    assert "Evaluation (p2p-eval score)" in page and "score (4 samples)" in page
    assert "<td>L1 ↓</td>" in page and "<td>PSNR (dB) ↑</td>" in page  # p2p-eval's names and directions
    assert "val_every: 3" in page and "<script" not in page
    assert "src='http" not in page and 'href="http' not in page  # self-contained: nothing to fetch


def test_not_a_run_folder_is_one_line(tmp_path, capsys):
    from p2p_eval.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path), "--out", str(tmp_path / "r")])
    assert exc.value.code == 2 and "not a training run folder" in capsys.readouterr().err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    chromium() is None,
    reason="headless Chromium is not installed (apt-get install chromium); "
    "the page is checked without a browser by the test above",
)
def test_chromium_renders_the_curves_without_errors(run_folder, tmp_path):
    from PIL import Image

    from p2p_eval.cli import main

    main(["report", str(run_folder), "--out", str(tmp_path)])
    url = (tmp_path / "index.html").as_uri()
    flags = [
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    dom = subprocess.run([chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr
    assert dom.stdout.count('class="curve"') >= 9 and "Health alarms" in dom.stdout
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [chromium(), *flags, "--window-size=1280,2000", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    for colour in PALETTE[:2]:  # the first two series colours (D_fake, D_real) are drawn
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels.astype(int) - rgb).sum(1) < 40).sum() > 50, f"no {colour} curve on the screenshot"
