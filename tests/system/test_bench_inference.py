"""bench/inference_throughput.py: its rows and JSON on a narrow network (a real run, not timed)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.env import ROOT, subprocess_env


def test_inference_bench_writes_every_row(tmp_path):
    out = tmp_path / "inference.json"
    cmd = [sys.executable, str(ROOT / "bench" / "inference_throughput.py"), "--ngf", "4", "--repeats", "1"]
    cmd += ["--batch", "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["batch"] == 2 and data["ngf"] == 4
    rows = [k for k in data if k.endswith("_images_per_s")]
    assert sorted(rows) == sorted(
        [
            "translate_256_batch1_images_per_s",
            "translate_256_batch2_images_per_s",
            "translate_1024_whole_images_per_s",
            "translate_1024_tiled256_overlap64_batch2_images_per_s",
            "score_one_at_a_time_images_per_s",
            "score_batch2_images_per_s",
        ]
    )
    assert all(data[k] > 0 for k in rows)
