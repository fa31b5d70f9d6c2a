"""bench/data_throughput.py: its rows and JSON, on a tiny temporary scenes set (a real run, not timed)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.env import ROOT, subprocess_env


def test_data_bench_writes_rows_and_ratios_against_a_landed_reader(tmp_path):
    out = tmp_path / "data.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "data_throughput.py"),
        "--samples", "12", "--size", "64", "--load-size", "72", "--crop-size", "64",
        "--workers", "0", "1", "--batch-size", "2", "--batches", "2", "--warmup", "1", "--rounds", "1",
        "--landed", "HEAD", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {
        (r["reader"], r["workers"], r["jitter"], r["pass"]): r for r in result["rows"] if r.get("placement") != "device"
    }
    (device,) = [r for r in result["rows"] if r.get("placement") == "device"]  # data.placement=device
    assert device["reader"] == "current" and device["workers"] == 0 and device["load_seconds"] > 0
    # HEAD's reader has jitter_batch, so its row jitters on the device like the current one
    assert set(rows) == {("landed", 0, "cpu", "first")} | {
        ("current", w, jitter, p) for w in (0, 1) for jitter in ("cpu", "excluded") for p in ("first", "later (cached)")
    }
    for r in rows.values():
        assert r["samples_per_s"] > 0 and r["samples_per_cpu_s"] > 0 and r["cpu_s"] > 0
        assert r["batches"] == 2 and r["batch_size"] == 2 and r["rounds"] == 1
        assert r["page_faults_per_sample"] >= 0
    # train.memory_format=auto on a CPU device: contiguous batches
    assert result["channels_last"] is False
    current, landed = rows[("current", 0, "cpu", "first")], rows[("landed", 0, "cpu", "first")]
    assert result["samples_per_cpu_s"] == current["samples_per_cpu_s"]
    assert result["stream_only_samples_per_cpu_s"] == rows[("current", 0, "excluded", "first")]["samples_per_cpu_s"]
    cached = rows[("current", 0, "cpu", "later (cached)")]
    assert result["cached_samples_per_cpu_s"] == cached["samples_per_cpu_s"]
    assert result["cached_ratio_vs_landed_samples_per_s"] == cached["samples_per_cpu_s"] / landed["samples_per_s"]
    assert (
        result["cached_stream_only_samples_per_cpu_s"]
        == (rows[("current", 0, "excluded", "later (cached)")]["samples_per_cpu_s"])
    )
    assert result["ratio"] == current["samples_per_cpu_s"] / landed["samples_per_cpu_s"]
    assert result["ratio_vs_landed_samples_per_s"] == current["samples_per_cpu_s"] / landed["samples_per_s"]
    assert result["stream_only_ratio_vs_landed_samples_per_s"] == (
        result["stream_only_samples_per_cpu_s"] / landed["samples_per_s"]
    )
    assert "stream only (the host's share with the jitter on a GPU)" in proc.stdout
    assert "later passes (cached), jitter on cpu" in proc.stdout
    assert result["device_samples_per_cpu_s"] == device["samples_per_cpu_s"] > 0
    assert result["device_load_seconds"] == device["load_seconds"]
    assert result["device_vs_stream"] == device["samples_per_cpu_s"] / current["samples_per_cpu_s"]
    assert result["device_ratio"] == device["samples_per_cpu_s"] / landed["samples_per_cpu_s"]
    assert result["device_ratio_vs_landed_samples_per_s"] == device["samples_per_cpu_s"] / landed["samples_per_s"]
    assert "data.placement=device: " in proc.stdout


def test_data_bench_refuses_an_unknown_revision(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "data_throughput.py"), "--samples", "4", "--size", "32"]
    cmd += ["--load-size", "36", "--crop-size", "32", "--workers", "0", "--landed", "no-such-rev"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
    assert proc.returncode != 0
    assert "cannot read p2p_dist at 'no-such-rev'" in proc.stderr
