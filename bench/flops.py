"""Yardsticks shared by the benchmarks: FLOPs of a callable and a measured matmul peak."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def step_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of one call of `fn` (forward and backward ops), as torch.utils.flop_counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously; a CPU has nothing queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    n: int = 2048, repeats: int = 10, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """Best matmul rate of this process on `device` (n x n times n x n), in FLOP/s."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)  # leaves the global RNG alone
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
