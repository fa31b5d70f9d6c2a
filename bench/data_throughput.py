"""Data path throughput: samples delivered ready for the step (decoded, jittered, float tensors on the
training device) per second and per CPU-second of every process involved.

    python bench/data_throughput.py                                  # a temporary `scenes` set (256 px)
    python bench/data_throughput.py --samples 200 --landed 4595f09 --json out.json
    python bench/data_throughput.py --shards data/train --workers 1 2 4 --batches 200

Each row runs the real training stream (`make_train_loader`: shard reading, shuffle buffer, decode)
and the step's `p2p_dist.data.jitter.jitter_batch` (resize 286 + random crop 256 + flip, scaling to
[-1, 1], on --device) for a warm-up, then a timed number of batches. CPU time is the user + system
time of the bench process (all its threads) plus that of every live DataLoader worker (psutil), over
the timed batches only. "samples/s" is wall-clock and depends on the load from other processes;
"per CPU-s" much less so.

"stream only" rows (`--no-stream-only` drops them) time the batches as the stream
delivers them, before `jitter_batch`: decoded uint8 pixels and the draws, i.e. the host's share of the
work when the step's device is a GPU and the resize, crop, flip and scaling run there (their kernel
launches, a few per batch, and the DataLoader's pinned-memory copy are not in it).

`--landed REV` also measures the reader of another commit (for instance the one before the
device-side jitter, 4595f09) with the same code: `git archive REV p2p_dist` into a temporary folder,
the same rows run in a subprocess that imports that copy. Rows run round after round (--rounds),
landed and current in turn, and the JSON keeps the median of each row. The JSON object holds
`samples_per_cpu_s` (the current reader, in-process row), `landed_samples_per_cpu_s`,
`landed_samples_per_s`, `ratio` (current per CPU-s / landed per CPU-s), `ratio_vs_landed_samples_per_s`
(current per CPU-s / landed's in-process samples per wall second: the landed reader's second intra-op
thread spins while it decodes, so its CPU-s overstate the work; this is the fairer yardstick),
`stream_only_samples_per_cpu_s` and its `stream_only_ratio_vs_landed_samples_per_s`, plus `rows`.

The "device" placement row (data.placement=device, p2p_dist/data/resident.py) decodes the set once into
memory on --device (its load time is reported, not counted in its CPU-s), then times batches gathered
and jittered there, with no loader and no worker: `device_samples_per_cpu_s`, `device_load_seconds`,
`device_vs_stream` (against the in-process first-pass stream row), and with --landed `device_ratio`
(against the landed reader's per CPU-s) and `device_ratio_vs_landed_samples_per_s`.

Batches are made as p2p-train makes them on --device: contiguous NCHW on a CPU, channels_last on CUDA
(train.memory_format=auto; --channels-last / --no-channels-last force one). "faults/sample" counts
this process's minor page faults per sample (not the workers').

Every row above is a first pass: the decoded-image cache (`data.cache_mb`, p2p_dist/data/cache.py) is
off, so every sample is decoded. "later (cached)" rows (`--no-cached` drops them) time a later pass
with the cache at its default: the warm-up first reads the whole set (and the shuffle buffer), then the
timed batches take their decoded images from memory, as every epoch after the first does when a
process's share of the data fits its cache. Their figures are `cached_samples_per_cpu_s` and
`cached_stream_only_samples_per_cpu_s`, with the same `..._ratio_vs_landed_samples_per_s`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROW_KEYS = ("samples_per_s", "samples_per_cpu_s", "cpu_s", "seconds", "page_faults_per_sample")  # medians


def _cpu_seconds(proc: psutil.Process) -> tuple[float, dict[int, float]]:
    """(CPU seconds of this process, {pid: CPU seconds} of its live children)."""
    children = {}
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            children[child.pid] = c.user + c.system
        except psutil.NoSuchProcess:
            continue
    return time.process_time(), children  # this process: all threads, finer than psutil's clock ticks


def _step_inputs_of_reader():
    """(prepare_batch(batch, device, channels_last) -> (real_A, real_B), as the importable reader's run.py
    makes them, whether that reader jittered in the stream already)."""
    import torch

    try:
        from p2p_dist.data.jitter import jitter_batch
    except ImportError:
        pass
    else:

        def prepare_batch(batch, dev, channels_last):
            out = jitter_batch(batch, dev, channels_last=channels_last)
            return out["A"], out["B"]

        return prepare_batch, False
    try:
        from p2p_dist.data.device import prepare_batch  # a reader with the jitter split over two modules
    except ImportError:  # a reader from before the device-side jitter: its batches are float tensors

        def prepare_batch(batch, dev, channels_last):  # what that commit's run.py did with a batch
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            return tuple(batch[k].to(dev, non_blocking=True).contiguous(memory_format=fmt) for k in "AB")

        return prepare_batch, True
    return prepare_batch, False


def measure(
    source: str,
    task: str,
    workers: int,
    batch_size: int,
    batches: int,
    warmup: int,
    load_size: int,
    crop_size: int,
    device: str,
    channels_last: bool,
    stream_only: bool = False,
    cached_after: int = 0,
    resident: bool = False,
) -> dict:
    """One row with whatever `p2p_dist` is importable (this checkout, or a landed copy on sys.path).

    `stream_only`: the batches as the stream delivers them (decoded uint8 pixels and draws), without
    `jitter_batch`: the host's share when the jitter runs on an accelerator. `cached_after=N`: a later
    pass, with the decoded-image cache (`data.cache_mb`, its default) filled by N samples of warm-up
    first (a whole pass over the set and the shuffle buffer); 0: the first pass, the cache off, so that
    every sample is decoded. `resident`: data.placement=device, the set decoded once into memory on
    `device` (its load time is in the row, not in its CPU-s), each batch gathered and jittered there."""
    import torch

    from p2p_dist.config import DataConfig

    try:
        from p2p_dist.data.loader import make_train_loader
    except ImportError:  # a reader from before p2p_dist/data/stream.py was split
        from p2p_dist.data.stream import make_train_loader

    try:  # as p2p-train does before its loader starts: freed memory is kept, not returned and faulted in again
        from p2p_dist.train.host_memory import keep_freed_memory

        keep_freed_memory()
    except ImportError:  # a reader from before it
        pass
    prepare_batch, jittered_in_stream = _step_inputs_of_reader()
    jitter_on = "host" if jittered_in_stream else "excluded" if stream_only else device

    fields = dict(train=source, task=task, load_size=load_size, crop_size=crop_size, shuffle_buffer=100)
    if "cache_mb" in DataConfig.__dataclass_fields__:  # older readers have no cache
        fields["cache_mb"] = DataConfig.cache_mb if cached_after else 0
    cfg = DataConfig(**fields)
    dev = torch.device(device)
    kw = {}
    if "device" in inspect.signature(make_train_loader).parameters:  # readers before it resized on a CPU device
        # stream only: the host's share when the step's device is a GPU, which resizes there
        kw["device"] = "cuda" if stream_only else dev
    layout = dict(batch_size=batch_size, seed=0, rank=0, world_size=1)
    load_s = None
    if resident:
        from p2p_dist.data.resident import make_resident_loader

        t = time.perf_counter()
        loader, _ = make_resident_loader(
            cfg, placement="device", device=dev, local_processes=1, channels_last=channels_last, **layout
        )
        load_s, prepare_batch = time.perf_counter() - t, lambda batch, dev, channels_last: (batch["A"], batch["B"])
    else:
        loader = make_train_loader(cfg, num_workers=workers, pin_memory=dev.type == "cuda", **layout, **kw)
    it = iter(loader)

    def step():
        if stream_only:
            return next(it)
        A, B = prepare_batch(next(it), dev, channels_last=channels_last)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return A, B

    for _ in range(warmup + -(-cached_after // batch_size)):
        step()
    proc = psutil.Process()
    cpu0, kids0 = _cpu_seconds(proc)
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    elapsed = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    cpu1, kids1 = _cpu_seconds(proc)
    cpu = cpu1 - cpu0 + sum(kids1[p] - kids0.get(p, 0.0) for p in kids1)
    it = None  # the loader's workers go with their iterator
    n = batches * batch_size
    return {
        "workers": workers,
        "jitter": jitter_on,
        "pass": "later (cached)" if cached_after else "first",
        "placement": "device" if resident else "stream",
        "load_seconds": load_s,
        "samples_per_s": n / elapsed,
        "samples_per_cpu_s": n / cpu,
        "cpu_s": cpu,
        "seconds": elapsed,
        "page_faults_per_sample": faults / n,  # this process's minor page faults (not its workers')
        "batches": batches,
        "batch_size": batch_size,
    }


def _landed_copy(rev: str, into: Path) -> Path:
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "p2p_dist"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"error: cannot read p2p_dist at {rev!r}: {archive.stderr.decode().strip()}")
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _landed_row(code: Path, args, source: str, task: str, workers: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [
        sys.executable,
        __file__,
        "--_row",
        source,
        task,
        str(workers),
        str(args.batch_size),
        str(args.batches),
        str(args.warmup),
        str(args.load_size),
        str(args.crop_size),
        str(int(args.channels_last)),
        args.device,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: the landed reader's row failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median_rows(runs: list[dict]) -> dict:
    row = dict(runs[0])
    for key in (*ROW_KEYS, "load_seconds"):
        if row.get(key) is not None:
            row[key] = statistics.median(r[key] for r in runs)
    row["rounds"] = len(runs)
    return row


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_row":  # a landed row, in a subprocess
        source, task, *nums, device = sys.argv[2:]
        workers, batch_size, batches, warmup, load_size, crop_size, cl = (int(x) for x in nums)
        print(
            json.dumps(
                measure(source, task, workers, batch_size, batches, warmup, load_size, crop_size, device, bool(cl))
            )
        )
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default=None, help="shard source to read (default: a temporary scenes set)")
    p.add_argument("--samples", type=int, default=200, help="size of the temporary scenes set (default 200)")
    p.add_argument("--size", type=int, default=256, help="image size of the temporary set (default 256)")
    p.add_argument(
        "--task",
        choices=("translation", "colorization"),
        default=None,
        help="task of --shards (default: from its index.json, else translation)",
    )
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts (default 1 2)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=60, help="timed batches per row (default 60)")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of all rows, medians kept (default 2)")
    p.add_argument("--load-size", type=int, default=286)
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="training device of jitter_batch (default cpu)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="batches in channels_last memory, as the step wants them with train.memory_format="
        "channels_last; --no-channels-last: contiguous NCHW; default: what train.memory_format=auto "
        "gives on --device (channels_last on cuda, contiguous on cpu)",
    )
    p.add_argument(
        "--stream-only",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the stream alone, without jitter_batch (the host's share with the jitter on a GPU)",
    )
    p.add_argument(
        "--landed",
        default=None,
        metavar="REV",
        help="also measure the reader of this git revision, in-process (e.g. 4595f09)",
    )
    p.add_argument(
        "--cached",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time later passes over the set, decoded images taken from the data.cache_mb cache",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.channels_last is None:
        args.channels_last = args.device.startswith("cuda")  # train.memory_format=auto

    from rich.console import Console
    from rich.table import Table

    from p2p_dist.data.demo import build_demo
    from p2p_dist.data.index import read_index
    from p2p_dist.errors import UserError
    from p2p_dist.fsutil import atomic_write_text

    console = Console(width=max(Console().width, 150))
    worker_counts = [0] + [w for w in args.workers if w > 0]
    try:
        with tempfile.TemporaryDirectory(prefix="p2p-bench-") as tmp:
            source = args.shards
            if source is None:
                console.print(f"building a temporary scenes set: {args.samples} samples at {args.size} px")
                build_demo("scenes", Path(tmp) / "set", train=args.samples, val=0, size=args.size, shard_size=50)
                source = str(Path(tmp) / "set" / "train")
            index = read_index(source) or {}
            task = args.task or index.get("task", "translation")
            code = _landed_copy(args.landed, Path(tmp) / "landed") if args.landed else None
            total = index.get("total") or args.samples
            runs: dict[tuple[str, int, bool, int], list[dict]] = {}
            kinds = [False, True] if args.stream_only else [False]
            passes = [0, total + 100] if args.cached else [0]  # 100: the shuffle buffer
            rows_of_a_round = [(w, so, c) for c in passes for so in kinds for w in worker_counts]
            shape = (args.batch_size, args.batches, args.warmup, args.load_size, args.crop_size, args.device)
            for _ in range(args.rounds):
                if code is not None:
                    runs.setdefault(("landed", 0, False, 0), []).append(_landed_row(code, args, source, task, 0))
                runs.setdefault(("current", 0, False, 0, "device"), []).append(
                    measure(source, task, 0, *shape, args.channels_last, resident=True)
                )
                for w, stream_only, cached_after in rows_of_a_round:
                    runs.setdefault(("current", w, stream_only, cached_after), []).append(
                        measure(source, task, w, *shape, args.channels_last, stream_only, cached_after)
                    )
    except UserError as exc:
        console.print(f"error: {exc}")
        return 2
    rows = [dict(_median_rows(r), reader=name) for (name, *_), r in runs.items()]
    table = Table(
        title=f"data path: {source if args.shards else 'scenes (temporary)'}, task {task}, resize "
        f"{args.load_size} -> crop {args.crop_size} + flip, batch {args.batch_size}, device {args.device}"
        f"{', channels_last' if args.channels_last else ''}"
    )
    columns = (
        "reader",
        "placement",
        "pass",
        "worker processes",
        "jitter on",
        "samples/s",
        "samples per CPU-s",
        "CPU-s",
        "faults/sample",
    )
    for col in (*columns, "timed batches"):
        table.add_column(col, justify="right")
    for r in rows:
        label = "0 (in-process)" if r["workers"] == 0 else str(r["workers"])
        table.add_row(
            r["reader"] + (f" ({args.landed})" if r["reader"] == "landed" else ""),
            r.get("placement", "stream") + (f" (loaded in {r['load_seconds']:.1f} s)" if r.get("load_seconds") else ""),
            "every (resident)" if r.get("placement") == "device" else r.get("pass", "first"),
            label,
            {"host": "the stream", "excluded": "(stream only)"}.get(r["jitter"], r["jitter"]),
            f"{r['samples_per_s']:.1f}",
            f"{r['samples_per_cpu_s']:.1f}",
            f"{r['cpu_s']:.2f}",
            f"{r['page_faults_per_sample']:.0f}" if r["workers"] == 0 else "-",  # the workers' are not counted
            f"{r['batches']} x {args.rounds}",
        )
    console.print(table)

    def in_process(stream_only: bool, cached: bool) -> dict | None:
        return next(
            (
                r
                for r in rows
                if r["reader"] == "current"
                and r["placement"] == "stream"
                and r["workers"] == 0
                and (r["jitter"] == "excluded") == stream_only
                and (r["pass"] != "first") == cached
            ),
            None,
        )

    current, stream_row = in_process(False, False), in_process(True, False)
    cached_row, cached_stream_row = in_process(False, True), in_process(True, True)
    device_row = next(r for r in rows if r.get("placement") == "device")
    result = {
        "samples_per_cpu_s": current["samples_per_cpu_s"],
        "samples_per_s": current["samples_per_s"],
        "device": args.device,
        "channels_last": args.channels_last,
        "device_samples_per_cpu_s": device_row["samples_per_cpu_s"],
        "device_load_seconds": device_row["load_seconds"],
        "device_vs_stream": device_row["samples_per_cpu_s"] / current["samples_per_cpu_s"],
        "rows": rows,
    }
    console.print(
        f"data.placement=device: {device_row['samples_per_cpu_s']:.0f} samples per CPU-s "
        f"(x{result['device_vs_stream']:.2f} the stream's first pass in-process), the set loaded in "
        f"{device_row['load_seconds']:.1f} s"
    )
    for name, row in (
        ("stream_only_", stream_row),
        ("cached_", cached_row),
        ("cached_stream_only_", cached_stream_row),
    ):
        if row is not None:
            result[f"{name}samples_per_cpu_s"] = row["samples_per_cpu_s"]
    landed = next((r for r in rows if r["reader"] == "landed"), None)
    if landed is not None:
        result.update(
            landed_rev=args.landed,
            landed_samples_per_cpu_s=landed["samples_per_cpu_s"],
            landed_samples_per_s=landed["samples_per_s"],
            ratio=current["samples_per_cpu_s"] / landed["samples_per_cpu_s"],
            ratio_vs_landed_samples_per_s=current["samples_per_cpu_s"] / landed["samples_per_s"],
            device_ratio=device_row["samples_per_cpu_s"] / landed["samples_per_cpu_s"],
        )
        console.print(
            f"current in-process {current['samples_per_cpu_s']:.0f} samples per CPU-s, landed "
            f"{landed['samples_per_cpu_s']:.0f} per CPU-s ({landed['samples_per_s']:.0f}/s wall): "
            f"x{result['ratio']:.2f} per CPU-s, x{result['ratio_vs_landed_samples_per_s']:.2f} against its samples/s"
        )
        for name, row, what in (
            ("stream_only_", stream_row, "first pass, stream only (the host's share with the jitter on a GPU)"),
            ("cached_", cached_row, f"later passes (cached), jitter on {args.device}"),
            ("cached_stream_only_", cached_stream_row, "later passes (cached), stream only"),
            ("device_", device_row, f"data.placement=device, jitter on {args.device}"),
        ):
            if row is None:
                continue
            result[f"{name}ratio_vs_landed_samples_per_s"] = row["samples_per_cpu_s"] / landed["samples_per_s"]
            console.print(
                f"{what}: {row['samples_per_cpu_s']:.0f} samples per CPU-s, "
                f"x{result[f'{name}ratio_vs_landed_samples_per_s']:.2f} against the landed reader's samples/s"
            )
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
