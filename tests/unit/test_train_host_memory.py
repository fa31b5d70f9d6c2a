"""p2p_dist/train/host_memory.py: glibc's malloc keeps freed memory in a training process, unless the
user chose the allocator. Each case runs in a fresh interpreter (the setting is process-wide); the
probe allocates, fills and frees a 32 MB block with libc itself (no other thread), so the page-fault
counts are exact: under glibc's defaults every block is a fresh mmap (5 x 8192 pages faulted in)."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys

import pytest

PROBE = """
import ctypes, resource, sys
from p2p_dist.train.host_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def churn(size=32 << 20):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
print(int(kept), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(mode: str = "keep", **env_extra: str) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept == "1", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults():
    kept, faults = probe("glibc-default")
    assert not kept and faults >= 5 * (32 << 20) // resource.getpagesize()  # 5 fresh 32 MB blocks
    assert probe() == (True, 0)


@pytest.mark.parametrize(
    "env",
    [{"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, {"LD_PRELOAD": "libjemalloc.so"}],
)
def test_an_allocator_the_user_chose_is_left_alone(env):
    # a preload that does not exist: ld.so says so on stderr and runs on; only the variable is read
    kept, _ = probe(**env)
    assert not kept
