"""Real training throughput: p2p-train over shards, its steady images/s and the host CPU it spends.

    python bench/real_train.py --json real.json -- --config recipes/pix2pix_base.yaml \\
        data.train=shards/train train.output_dir=runs/b16 train.batch_size=16 train.max_steps=300 \\
        train.log_every=25 data.placement=device

Runs `python -m p2p_dist.train ARGS` (one process; the arguments after `--` are p2p-train's) and
watches it from outside: images/s is taken from metrics.jsonl between the `--skip`-th logged step and
the last one (the first windows hold start-up: data loading, cuDNN autotuning, graph capture), and
the host CPU time of the whole process tree (the trainer and its DataLoader workers, /proc) over the
same window, divided by the images trained in it, is the host CPU per sample. The figures go to
--json: {"images_per_s", "cpu_s_per_sample", "cpu_cores_busy", "steps", "batch_size", "exit_code"}.
Linux only (/proc). Exit status: p2p-train's, or 2 on bad input / too few logged steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from p2p_dist.config import ConfigError, load_config
from p2p_dist.fsutil import atomic_write_text
from p2p_dist.train.cli import parse_args

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and its live descendants, plus the reaped children of each."""
    parents, times = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    inside, changed = {root}, True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in inside and pid not in inside:
                inside.add(pid)
                changed = True
    return sum(times.get(pid, 0) for pid in inside) / TICK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="write the figures here")
    p.add_argument("--skip", type=int, default=2, help="logged steps left out at the start (default 2)")
    p.add_argument("--poll", type=float, default=0.02, help="seconds between looks at the process (default 0.02)")
    args = p.parse_args(ours)
    try:
        parsed = parse_args(train_args)  # p2p-train's own command line
        cfg = load_config(parsed.config, parsed.overrides)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    metrics = Path(cfg.train.output_dir) / "metrics.jsonl"
    if metrics.exists():
        print(f"error: {metrics} exists: give p2p-train a new train.output_dir")
        return 2
    proc = subprocess.Popen([sys.executable, "-m", "p2p_dist.train", *train_args])
    seen: list[tuple[dict, float, float]] = []  # (record, wall, tree CPU) when each step record appeared
    done = 0
    while True:
        running = proc.poll() is None
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            for line in lines[done:]:
                if line.endswith("}"):
                    record = json.loads(line)
                    if "images_per_s" in record:
                        seen.append((record, time.perf_counter(), tree_cpu_seconds(proc.pid) if running else None))
                    done += 1
        if not running:
            break
        time.sleep(args.poll)
    steady = [s for s in seen if s[2] is not None][args.skip :]
    result = {"exit_code": proc.returncode, "batch_size": cfg.train.batch_size, "steps": len(seen)}
    if proc.returncode == 0 and len(steady) >= 2:
        (first, _, cpu0), (last, _, cpu1) = steady[0], steady[-1]
        images = (last["step"] - first["step"]) * cfg.train.batch_size
        seconds = last["time"] - first["time"]
        result.update(
            images_per_s=images / seconds,
            cpu_s_per_sample=(cpu1 - cpu0) / images,
            cpu_cores_busy=(cpu1 - cpu0) / seconds,
            window_steps=last["step"] - first["step"],
        )
    atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
    if proc.returncode != 0:
        return proc.returncode
    if "images_per_s" not in result:
        print(f"error: only {len(seen)} logged steps: raise train.max_steps or lower train.log_every")
        return 2
    print(
        f"real training, batch {cfg.train.batch_size}: {result['images_per_s']:.1f} images/s over "
        f"{result['window_steps']} steps, host CPU {result['cpu_s_per_sample'] * 1e3:.2f} ms per sample "
        f"({result['cpu_cores_busy']:.1f} cores busy)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
