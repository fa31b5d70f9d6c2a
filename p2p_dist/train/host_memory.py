"""Host memory a training process frees is kept for its next step instead of handed back to the system.

Under glibc's moving mmap threshold a CPU step's tensors keep landing on fresh pages that the kernel
faults in and zeroes (60-120 thousand per step for unet_256 + patch70); fixing both thresholds high
keeps resident memory at the run's peak, which every step reaches anyway (bench/README.md: 1.09-1.30x).
Numerics are untouched. An allocator the user chose (MALLOC_*, GLIBC_TUNABLES, a preloaded
jemalloc/tcmalloc/mimalloc), or a C library other than glibc, is left alone.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD, TRIM_THRESHOLD = 256 << 20, 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def keep_freed_memory() -> bool:
    """Fix glibc's thresholds as the module says; False where the allocator is left alone."""
    env = os.environ
    if any(k.startswith("MALLOC_") for k in env) or "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return False
    if any(name in env.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
