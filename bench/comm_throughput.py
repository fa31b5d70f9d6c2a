"""Gradient all-reduce per training step between processes: bytes and time, float32 against bf16.

    python bench/comm_throughput.py                      # 2 gloo processes, unet_256 + patch70 gradients
    python bench/comm_throughput.py --repeats 5 --json out.json

Each process builds G and D of the config, fills gradient-sized float32 buckets of train.ddp_bucket_mb
(as DDP does) and all-reduces them, as float32 and as bfloat16 (train.grad_compression=bf16, the hook in
p2p_dist/train/comm.py), in turn; the figure is the median time of one step's all-reduces. Bytes are
what each process sends into the ring all-reduce: 2 (n-1)/n x the gradient bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from p2p_dist.config import load_config
    from p2p_dist.train.build import build_models

    cfg = load_config(None, [f"model.generator={args.generator}", f"model.ngf={args.ngf}", f"model.ndf={args.ngf}"])
    G, D = build_models(cfg)
    n = sum(p.numel() for m in (G, D) for p in m.parameters())
    per_bucket = args.bucket_mb * 2**20 // 4
    sizes = [min(per_bucket, n - i) for i in range(0, n, per_bucket)]
    buckets = [torch.randn(s) for s in sizes]
    times: dict[str, list[float]] = {"float32": [], "bf16": []}
    for i in range(args.repeats + 1):
        for kind in times:
            dist.barrier()
            t = time.perf_counter()
            for b in buckets:
                x = b if kind == "float32" else b.to(torch.bfloat16)
                dist.all_reduce(x)
                if kind == "bf16":
                    b.copy_(x)
            if i:
                times[kind].append(time.perf_counter() - t)
    if rank == 0:
        queue.put(
            {
                "parameters": n,
                "buckets": len(buckets),
                "bucket_mb": args.bucket_mb,
                "processes": world,
                **{
                    kind: {
                        "gradient_mb": n * (4 if kind == "float32" else 2) / 1e6,
                        "sent_mb_per_process": 2 * (world - 1) / world * n * (4 if kind == "float32" else 2) / 1e6,
                        "step_s_median": statistics.median(t),
                        "step_s": t,
                    }
                    for kind, t in times.items()
                },
            }
        )
    dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2, help="gloo processes (default 2)")
    p.add_argument("--generator", default="unet_256", help="model.generator (default unet_256)")
    p.add_argument("--ngf", type=int, default=64, help="model.ngf and model.ndf (default 64)")
    p.add_argument("--bucket-mb", type=int, default=25, help="bucket size, as train.ddp_bucket_mb (default 25)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps (default 3)")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.processes < 2 or args.repeats < 1 or args.bucket_mb < 1 or args.ngf < 1:
        print("error: --processes >= 2, --repeats, --bucket-mb and --ngf >= 1")
        return 2
    from socket import socket

    from p2p_dist.fsutil import atomic_write_text

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(worker, args=(args.processes, port, args, queue), nprocs=args.processes, start_method="spawn")
    res = queue.get()
    for kind in ("float32", "bf16"):
        r = res[kind]
        print(
            f"{kind:8s} gradients {r['gradient_mb']:.0f} MB, sent {r['sent_mb_per_process']:.0f} MB per process, "
            f"all-reduce {r['step_s_median'] * 1e3:.0f} ms per step ({args.processes} gloo processes, "
            f"{res['buckets']} buckets of {args.bucket_mb} MB)"
        )
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
