"""p2p_dist/hostmem.py: train.host_memory, on this process's real allocator (each case in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.env import ROOT, subprocess_env
from p2p_dist import hostmem

# Rounds of a step-like pattern: tensors of 1 to 32 MB written, then all freed. Under glibc's defaults
# the free memory at the heap's top passes its trim threshold (dynamic, at most 64 MB) each round and
# goes back to the system, so every round faults thousands of pages in again; retained, the heap
# settles within a few rounds (torch's aligned allocations fit freed blocks only once some have
# merged) and then reuses its pages.
CHURN = """
import json, sys
import torch
from p2p_dist import hostmem
outcome = hostmem.apply(sys.argv[1])
faults = []
for _ in range(16):
    before = hostmem.page_faults()
    tensors = [torch.ones(mb << 18) for mb in (1, 2, 4, 8, 16, 32)]
    del tensors
    faults.append(hostmem.page_faults() - before)
print(json.dumps({"outcome": outcome, "faults": faults}))
"""


def churn(setting: str, **env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHURN, setting], capture_output=True, text=True, env=subprocess_env(**env), cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


needs_glibc = pytest.mark.skipif(hostmem._glibc() is None, reason="glibc's malloc only")


@needs_glibc
def test_retain_keeps_freed_memory_for_the_next_step_and_release_does_not():
    retained, released = churn("retain"), churn("release")
    assert retained["outcome"].startswith("freed memory kept for reuse")
    assert released["outcome"].startswith("glibc's default")
    # the first round faults its ~63 MB in under either setting (16k 4 KB pages)
    assert retained["faults"][0] > 10_000 and released["faults"][0] > 10_000
    assert max(retained["faults"][-6:]) < 100  # settled: the same pages again
    assert min(released["faults"][-6:]) > 4_000  # returned and faulted in again, round after round


@needs_glibc
def test_allocator_settings_in_the_environment_are_left_alone():
    result = churn("retain", MALLOC_TRIM_THRESHOLD_="1000000")
    assert result["outcome"] == "left to the allocator settings in the environment (MALLOC_TRIM_THRESHOLD_ is set)"
    result = churn("retain", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000")
    assert "GLIBC_TUNABLES sets glibc.malloc" in result["outcome"]


def test_the_outcome_is_decided_once_per_process(monkeypatch):
    monkeypatch.setattr(hostmem, "_applied", [])
    first = hostmem.apply("retain")
    assert hostmem.apply("retain") == first
    assert hostmem.apply("release") == f"{first}, earlier in this process"
