"""Host memory the process frees: kept for its next allocation instead of handed back to the system.

glibc's malloc serves blocks above a moving threshold (128 KB at start, at most 32 MB) with a fresh
mmap, and gives the free memory at the top of its heap back to the system as soon as more than twice
that threshold is free. A training step on the CPU, and the CPU jitter of each batch, allocate and
free the same tens of MB every step, so under those defaults a step's tensors keep landing on fresh
pages, which the kernel faults in and zeroes one page at a time. Measured on a 2-core CPU
(bench/README.md, "Host memory"): 41-101 thousand page faults per step for unet_256 + patch70 at
batch 1 and 4, and steps up to 18% slower than with the memory kept (1-18% by row and batch);
120-350 faults per sample in the CPU jitter of the data path, a fifth of its CPU time.

`train.host_memory=retain` (the default; `retain_freed_memory`) fixes both of glibc's thresholds
with mallopt: blocks up to MMAP_THRESHOLD_MB come from the heap, and up to TRIM_THRESHOLD_MB of free
memory stays with the process. Resident memory then stays at the run's peak, which every step
reaches again anyway, and later steps reuse it without faults. (torch's 64-byte aligned blocks fit
freed ones only once some have merged, so the heap settles over the first few steps: peak +4% at
batch 4.) DataLoader workers are forked from the training process and inherit the setting.
`release` leaves glibc as it is. `retain` leaves alone an allocator the user chose: with glibc's
MALLOC_* environment variables or malloc tunables set, or another malloc preloaded (jemalloc,
tcmalloc), nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import resource

MMAP_THRESHOLD_MB = 256
TRIM_THRESHOLD_MB = 512
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_applied: list[str] = []  # the outcome, once per process


def _glibc():
    """glibc's C library (None elsewhere: musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    return libc


def _user_choice() -> str | None:
    """Why the allocator is the user's choice (None: it is glibc's default)."""
    for name in _USER_SETTINGS:
        if name in os.environ:
            return f"{name} is set"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc"
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return f"{name} is preloaded"
    return None


def retain_freed_memory() -> str:
    """Set glibc's thresholds as the module docstring says (once per process); returns what was done,
    in a few words for the start-up line."""
    if _applied:
        return _applied[0]
    libc = _glibc()
    user = _user_choice()
    if libc is None:
        outcome = "not glibc's malloc here: left as it is"
    elif user:
        outcome = f"left to the allocator settings in the environment ({user})"
    elif libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MB << 20) and libc.mallopt(
        _M_TRIM_THRESHOLD, TRIM_THRESHOLD_MB << 20
    ):
        outcome = (
            f"freed memory kept for reuse (glibc malloc: mmap above {MMAP_THRESHOLD_MB} MB, "
            f"trimmed above {TRIM_THRESHOLD_MB} MB free)"
        )
    else:
        outcome = "glibc refused the thresholds: left as it is"
    _applied.append(outcome)
    return outcome


def apply(setting: str) -> str:
    """`train.host_memory` ("retain" | "release") -> what this process's allocator does now."""
    if setting == "release":
        if _applied:
            return f"{_applied[0]}, earlier in this process"
        return "glibc's default (freed memory returned to the system)"
    return retain_freed_memory()


def page_faults() -> int:
    """Minor page faults of this process so far (pages the kernel had to map in, zeroed)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
