"""Paths and subprocess environment shared by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict:
    """Environment for training subprocesses: one thread each (2 cores, often 2 processes)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TERM="dumb", ACCELERATE_DISABLE_RICH="1")
    env.update(extra)
    return env


def run_ranks(script: Path, *args: str, nproc: int = 2, timeout: int = 240) -> list[str]:
    """Run `script` as `nproc` processes of one process group (torch's env:// variables, the ones
    Accelerate reads too); returns each rank's stdout, rank 0 first."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=subprocess_env(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                RANK=str(r),
                LOCAL_RANK=str(r),
                WORLD_SIZE=str(nproc),
                LOCAL_WORLD_SIZE=str(nproc),
            ),
        )
        for r in range(nproc)
    ]
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
    return [out for out, _ in outs]
