"""Data loader throughput: decoded, jittered samples per second, in-process and with N workers.

    python bench/data_throughput.py                       # builds a temporary `scenes` set (256 px)
    python bench/data_throughput.py --shards data/train --workers 1 2 4 --batches 200

Each row runs the real training stream (`make_train_loader`: shard reading, shuffle buffer,
decode, resize 286 + random crop 256 + flip, tensors) for a warm-up and then a timed number of
batches. "per worker" divides by the worker processes (the in-process row counts as one).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from p2p_dist.config import DataConfig
from p2p_dist.data.demo import build_demo
from p2p_dist.data.index import read_index
from p2p_dist.data.stream import make_train_loader
from p2p_dist.errors import UserError


def measure(cfg: DataConfig, workers: int, batch_size: int, batches: int, warmup: int) -> dict:
    loader = make_train_loader(cfg, batch_size=batch_size, seed=0, rank=0, world_size=1, num_workers=workers,
                               pin_memory=False)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - t0
    rate = batches * batch_size / elapsed
    return {"workers": workers, "samples_per_s": rate, "per_worker": rate / max(1, workers),
            "batches": batches, "seconds": elapsed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default=None, help="shard source to read (default: a temporary scenes set)")
    p.add_argument("--samples", type=int, default=200, help="size of the temporary scenes set (default 200)")
    p.add_argument("--size", type=int, default=256, help="image size of the temporary set (default 256)")
    p.add_argument("--task", choices=("translation", "colorization"), default=None,
                   help="task of --shards (default: from its index.json, else translation)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts (default 1 2)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=60, help="timed batches per row (default 60)")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first (default 5)")
    p.add_argument("--load-size", type=int, default=286)
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    console = Console()
    try:
        with tempfile.TemporaryDirectory(prefix="p2p-bench-") as tmp:
            source = args.shards
            if source is None:
                console.print(f"building a temporary scenes set: {args.samples} samples at {args.size} px")
                build_demo("scenes", Path(tmp), train=args.samples, val=0, size=args.size, shard_size=50)
                source = str(Path(tmp) / "train")
            index = read_index(source)
            task = args.task or (index or {}).get("task", "translation")
            cfg = DataConfig(train=source, task=task, load_size=args.load_size, crop_size=args.crop_size,
                             shuffle_buffer=100)
            rows = [measure(cfg, 0, args.batch_size, args.batches, args.warmup)]
            rows += [measure(cfg, w, args.batch_size, args.batches, args.warmup) for w in args.workers if w > 0]
    except UserError as exc:
        console.print(f"error: {exc}")
        return 2
    table = Table(title=f"data throughput: {source if args.shards else 'scenes (temporary)'}, task {task}, "
                        f"resize {args.load_size} -> crop {args.crop_size} + flip, batch {args.batch_size}")
    for col in ("worker processes", "samples/s", "samples/s per worker", "timed batches"):
        table.add_column(col, justify="right")
    for r in rows:
        label = "0 (in-process)" if r["workers"] == 0 else str(r["workers"])
        table.add_row(label, f"{r['samples_per_s']:.1f}", f"{r['per_worker']:.1f}", str(r["batches"]))
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
