"""DataLoader workers of the training stream end with the process, even when it exits mid-stream."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from helpers.env import ROOT, subprocess_env

SCRIPT = textwrap.dedent(
    """
    import io, sys
    import numpy as np
    from PIL import Image
    from p2p_dist.config import DataConfig
    from p2p_dist.data.loader import make_train_loader
    from p2p_dist.data.tario import write_shard

    def png(arr):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    folder = sys.argv[1]
    rng = np.random.default_rng(0)
    samples = []
    for i in range(8):
        a = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
        samples.append((f"s{i:03d}", {"a.png": png(a), "b.png": png(255 - a)}))
    write_shard(folder + "/t-000000.tar", samples)
    cfg = DataConfig(train=folder, load_size=24, crop_size=16, num_workers=1)
    loader = make_train_loader(cfg, batch_size=2, seed=0, rank=0, world_size=1)
    if sys.argv[2] == "prefetch":  # the staging thread of p2p_dist/data/prefetch.py reads it
        from p2p_dist.data.prefetch import prefetch

        stream = prefetch(loader, "cpu", threaded=True, slots=3)
    else:
        stream = iter(loader)
    next(stream)
    import multiprocessing
    print("workers", *[p.pid for p in multiprocessing.active_children()], flush=True)
    # the interpreter exits here with the stream (and its worker) still open
    """
)


@pytest.mark.parametrize("read", ["plain", "prefetch"])
def test_a_process_exiting_with_an_open_stream_ends_its_workers_and_exits(tmp_path, read):
    # Workers ignore SIGTERM (SLURM and torchrun signal the whole group), so multiprocessing's exit
    # handler could not terminate them and waited forever before p2p_dist/data/loader.py closed its open reads at exit.
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), read],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Exception ignored" not in proc.stderr and "killed by signal" not in proc.stderr, proc.stderr
    pids = [int(x) for x in proc.stdout.split("workers", 1)[1].split()]
    assert len(pids) == 1
    for pid in pids:  # gone, not left behind as an orphan
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as fh:
            assert fh.read().split()[2] == "Z", f"worker {pid} outlived its process"
