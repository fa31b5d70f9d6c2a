"""Gradient all-reduce per training step between processes: bytes and time, float32 against bf16,
and real training steps with gradient accumulation (train.grad_accum).

    python bench/comm_throughput.py                      # 2 gloo processes, unet_256 + patch70 gradients
    python bench/comm_throughput.py --repeats 5 --json out.json
    python bench/comm_throughput.py --grad-accum 1 2 4   # also: optimizer steps with k micro-batches

Each process builds G and D of the config, fills gradient-sized float32 buckets of train.ddp_bucket_mb
(as DDP does) and all-reduces them, as float32 and as bfloat16 (train.grad_compression=bf16, the hook in
p2p_dist/train/comm.py), in turn; the figure is the median time of one step's all-reduces. Bytes are
what each process sends into the ring all-reduce: 2 (n-1)/n x the gradient bytes.

`--grad-accum K ...`: each process also runs p2p-train's step (`p2p_dist.train.loop.train_step`
through the DDP engine, batch --batch-size per micro-batch) with K micro-batches per optimizer step,
the Ks in turn round after round; a counting comm hook (wrapping torch's allreduce hook) records the
all-reduce calls and bytes DDP sends per optimizer step. Reported per K: step time, time per image,
bytes per step and per image.
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
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)  # Accelerate's engine reuses it
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
    accumulation = accumulation_rows(args) if args.grad_accum else None
    if rank == 0:
        queue.put(
            {
                "accumulation": accumulation,
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
    if dist.is_initialized():
        dist.destroy_process_group()


def accumulation_rows(args) -> dict:
    """Optimizer steps of the real step with k micro-batches each, for every k of --grad-accum."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from p2p_dist.config import load_config
    from p2p_dist.train.build import build_models
    from p2p_dist.train.engines import build_engine
    from p2p_dist.train.loop import train_step

    overrides = [f"model.generator={args.generator}", f"model.ngf={args.ngf}", f"model.ndf={args.ngf}"]
    cfg = load_config(None, [*overrides, f"train.ddp_bucket_mb={args.bucket_mb}"])
    engine = build_engine(cfg)
    torch.manual_seed(0)
    models = engine.prepare(*build_models(cfg))
    sent = {"calls": 0, "bytes": 0}

    def counting(state, bucket):
        sent["calls"] += 1
        sent["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
        return allreduce_hook(state, bucket)

    for model in (models.G, models.D):
        model.register_comm_hook(None, counting)
    size, b = cfg.data.crop_size, args.batch_size
    rows = {k: {"step_s": [], "calls": [], "gradient_mb": []} for k in args.grad_accum}
    for i in range(args.repeats + 1):  # round 0 warms up (DDP rebuilds its buckets after the first step)
        for k, row in rows.items():
            A, B = (torch.rand(k * b, 3, size, size) * 2 - 1 for _ in "AB")
            sent.update(calls=0, bytes=0)
            dist.barrier()
            t = time.perf_counter()
            train_step(engine, models, cfg.loss, A, B, micro_batches=k)
            if i:
                row["step_s"].append(time.perf_counter() - t)
                row["calls"].append(sent["calls"])
                row["gradient_mb"].append(sent["bytes"] / 1e6)
    world = engine.world_size
    out = {}
    for k, row in rows.items():
        step = statistics.median(row["step_s"])
        mb = statistics.median(row["gradient_mb"])
        out[str(k)] = {
            "micro_batches": k,
            "images_per_step_per_process": k * b,
            "step_s_median": step,
            "s_per_image": step / (k * b),
            "allreduce_calls_per_step": statistics.median(row["calls"]),
            "gradient_mb_per_step": mb,
            "sent_mb_per_process_per_step": 2 * (world - 1) / world * mb,
            "sent_mb_per_image": 2 * (world - 1) / world * mb / (k * b),
            "step_s": row["step_s"],
        }
    models = None  # the DDP wrappers go before the process group (p2p_dist/train/engines/ddp.py `end`)
    engine.end()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2, help="gloo processes (default 2)")
    p.add_argument("--generator", default="unet_256", help="model.generator (default unet_256)")
    p.add_argument("--ngf", type=int, default=64, help="model.ngf and model.ndf (default 64)")
    p.add_argument("--bucket-mb", type=int, default=25, help="bucket size, as train.ddp_bucket_mb (default 25)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps (default 3)")
    p.add_argument(
        "--grad-accum",
        type=int,
        nargs="*",
        default=[],
        help="also time real optimizer steps with these micro-batch counts",
    )
    p.add_argument("--batch-size", type=int, default=1, help="micro-batch per process for --grad-accum (default 1)")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.processes < 2 or min(args.repeats, args.bucket_mb, args.ngf, args.batch_size, *args.grad_accum) < 1:
        print("error: --processes >= 2; --repeats, --bucket-mb, --ngf, --batch-size and --grad-accum >= 1")
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
    for k, r in (res["accumulation"] or {}).items():
        print(
            f"grad_accum {k}: {r['images_per_step_per_process']} images per process per step, "
            f"{r['step_s_median']:.2f} s per step ({r['s_per_image']:.2f} s per image), "
            f"{r['allreduce_calls_per_step']:g} all-reduce calls, {r['gradient_mb_per_step']:.0f} MB per step, "
            f"{r['sent_mb_per_image']:.0f} MB sent per image"
        )
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
