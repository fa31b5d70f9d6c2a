#!/usr/bin/env bash
# The checks a CUDA GPU must pass, in under 6 minutes on one GPU (what `make gpu-check` runs):
#
#   bash bench/gpu_check.sh [VENV] [OUT]       (defaults: .venv, gpu-check/)
#
#   bf16_channels_last   p2p-train with train.mixed_precision=bf16 and channels_last: every logged loss finite
#   deterministic_resume 6 steps in one go == 3 steps, stop, 3 more (train.deterministic=true), bit for bit
#   nccl_world1          an NCCL all-reduce with world size 1, then p2p-train under the multi-GPU config
#   deepspeed_zero2      ZeRO-2: save, resume, export of the generator
#   translate_score      p2p-translate and p2p-eval score on cuda
#   throughput           bench/train_throughput.py, unet_256 + patch70 at 256 px, batch 1 and 16: the rows
#                        reference (junyanz networks, its optimize_parameters order, fp32, cudnn.benchmark),
#                        eager, default, graph (train.cuda_graph=on), graph_bf16 (+ train.mixed_precision=bf16);
#                        synchronize timing, CUDA peak memory
#   speed_b1             our faster float32 row (default or graph) >= 5x the reference step at batch 1
#   speed_b16            the same >= 2.5x at batch 16
#   bf16_b16             graph_bf16 >= 1.5x graph at batch 16
#   real_device_b1       bench/real_train.py: p2p-train (recipes/pix2pix_base.yaml, the scenes set at 256 px, 400
#                        pairs) with data.placement=device at batch 1: >= 90% of the bench's default row
#   real_device_b16      the same at batch 16
#   real_stream_b16      the same with data.placement=stream and 12 DataLoader workers: images/s and host CPU
#                        per sample reported (passes when it runs)
#
# Each check prints one PASS/FAIL line (with its figures) and writes OUT/<check>.json ({"check",
# "passed", "seconds", "log", ...}); OUT/summary.json lists them all; the exit code is 1 when any
# check failed. A row whose config key this p2p-dist does not have (train.cuda_graph, data.placement)
# fails with a line naming the key, and the others still run.
# Without CUDA the script says so in one line and dry-runs every check on the CPU with a tiny
# network and 2 steps (gloo in place of NCCL, train.cuda_graph=auto, batch 2 for 16, targets not
# judged): exit 0 means the checks would run.
set -uo pipefail

VENV=${1:-.venv}
OUT=${2:-gpu-check}
PY="$VENV/bin/python"
BIN="$VENV/bin"
cd "$(dirname "$0")/.." || exit 2
[ -x "$PY" ] || { echo "gpu-check: $PY not found (run make install first)"; exit 2; }
mkdir -p "$OUT"
rm -rf "${OUT:?}"/*
START=$(date +%s.%N)

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    DRY=0
    NET=(model.generator=unet_128 model.ngf=32 model.ndf=32 data.load_size=143 data.crop_size=128)
    STEPS=20 HALF=3 SIZE=128 SMALL=1 LARGE=16 BENCH=(--device cuda --size 256 --warmup 5 --repeats 20)
    DDP_CONFIG=recipes/accelerate/multi_gpu.yaml BACKEND=nccl GRAPH=on
    REAL_DATA="$OUT/data256" REAL_NET=(--config recipes/pix2pix_base.yaml) REAL_WORKERS=12
    REAL_STEPS=(400 200) REAL_LOG=(40 20) REAL_SKIP=2  # batch 1, batch 16
    "$PY" -c 'import torch; print("gpu-check on", torch.cuda.get_device_name(0), "torch", torch.__version__)'
else
    DRY=1
    NET=(model.generator=unet_128 model.ngf=4 model.ndf=4 data.load_size=128 data.crop_size=128)
    STEPS=2 HALF=1 SIZE=128 SMALL=1 LARGE=2 BENCH=(--dry-run)
    DDP_CONFIG=recipes/accelerate/cpu_2proc.yaml BACKEND=gloo GRAPH=auto
    REAL_DATA="$OUT/data" REAL_NET=("${NET[@]}") REAL_WORKERS=1 REAL_STEPS=(4 4) REAL_LOG=(1 1) REAL_SKIP=1
    echo "gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False): dry run of every check on the CPU"
fi

FAILED=0
DATA="$OUT/data"
COMMON=(data.train="$DATA/train" data.val="$DATA/val" data.direction=BtoA data.num_workers=1
        train.log_every=1 train.sample_every=0 train.checkpoint_every=100 "${NET[@]}")

# check NAME CMD...: run CMD with its output in OUT/NAME.log, print PASS/FAIL, write OUT/NAME.json
check() {
    local name=$1; shift
    local t0 rc
    t0=$(date +%s.%N)
    "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    "$PY" - "$OUT" "$name" "$rc" "$t0" "$(date +%s.%N)" "$DRY" <<'EOF'
import json, pathlib, sys
out, name, rc, t0, t1, dry = sys.argv[1:]
out = pathlib.Path(out)
extra = out / f"{name}.extra.json"
record = {"check": name, "passed": rc == "0", "exit_code": int(rc), "seconds": round(float(t1) - float(t0), 1),
          "dry_run": dry == "1", "log": str(out / f"{name}.log")}
if extra.is_file():
    record.update(json.loads(extra.read_text()))
    extra.unlink()
(out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
tail = f": {record['line']}" if record.get("line") else ""
if not record["passed"]:
    tail += " (last lines: " + " | ".join((out / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]) + ")"
print(f"{'PASS' if record['passed'] else 'FAIL'} {name} {record['seconds']:.0f} s{tail}")
EOF
    [ "$rc" = 0 ] || FAILED=1
}

train() {  # train OUTPUT_DIR OVERRIDES...: one process
    local dir=$1; shift
    "$PY" -m p2p_dist.train train.output_dir="$dir" "${COMMON[@]}" "$@"
}

finite_losses() {  # finite_losses RUN: every logged loss is finite, then report the device
    "$PY" - "$1" "$OUT/bf16_channels_last.extra.json" <<'EOF'
import json, math, pathlib, sys
rows = [json.loads(x) for x in (pathlib.Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
losses = {k: [r[k] for r in rows] for k in ("D_fake", "D_real", "G_GAN", "G_L1")}
assert rows and all(math.isfinite(v) for vs in losses.values() for v in vs), losses
pathlib.Path(sys.argv[2]).write_text(json.dumps({"steps": len(rows), "last": {k: v[-1] for k, v in losses.items()}}))
EOF
}

check_bf16() {
    train "$OUT/runs/bf16" train.max_steps="$STEPS" train.mixed_precision=bf16 \
        train.memory_format=channels_last && finite_losses "$OUT/runs/bf16"
}

same_generator() {  # same_generator RUN_A RUN_B
    "$PY" - "$@" <<'EOF'
import sys
from safetensors.torch import load_file
a, b = (load_file(f"{d}/final/generator.safetensors") for d in sys.argv[1:3])
bad = [k for k in a if not a[k].equal(b[k])]
assert a.keys() == b.keys() and not bad, f"generators differ in {bad[:5]}"
print(f"{len(a)} tensors equal bit for bit")
EOF
}

check_resume() {
    local args=(train.max_steps=$((2 * HALF)) train.deterministic=true)
    train "$OUT/runs/whole" "${args[@]}" &&
        train "$OUT/runs/split" "${args[@]}" train.stop_after="$HALF" &&
        train "$OUT/runs/split" "${args[@]}" && same_generator "$OUT/runs/whole" "$OUT/runs/split"
}

check_nccl() {
    "$PY" - "$BACKEND" <<'EOF' || return 1
import os, sys, torch, torch.distributed as dist
backend = sys.argv[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
dist.init_process_group(backend, rank=0, world_size=1)
x = torch.ones(4, device="cuda" if backend == "nccl" else "cpu")
dist.all_reduce(x)
assert dist.get_backend() == backend and x.sum().item() == 4
dist.destroy_process_group()
print(f"{backend} all_reduce with world size 1: ok")
EOF
    "$BIN/accelerate" launch --config_file "$DDP_CONFIG" --num_processes 1 --main_process_port 29534 \
        -m p2p_dist.train train.output_dir="$OUT/runs/ddp1" "${COMMON[@]}" train.max_steps="$STEPS"
}

check_deepspeed() {
    local launch=("$BIN/accelerate" launch --config_file recipes/accelerate/deepspeed_zero2.yaml --num_processes 1
                  --main_process_port 29535 -m p2p_dist.train train.output_dir="$OUT/runs/ds" "${COMMON[@]}"
                  train.max_steps=$((2 * HALF)))
    "${launch[@]}" train.stop_after="$HALF" && "${launch[@]}" >"$OUT/runs/ds.resume.log" 2>&1
    local rc=$?
    cat "$OUT/runs/ds.resume.log"
    [ "$rc" = 0 ] && grep -q "resumed from" "$OUT/runs/ds.resume.log" &&
        test -f "$OUT/runs/ds/final/generator.safetensors"
}

check_translate_score() {
    local device=cpu
    [ "$DRY" = 1 ] || device=cuda
    "$BIN/p2p-translate" --checkpoint "$OUT/runs/whole/final" --shards "$DATA/val" --output "$OUT/translated" \
        --device "$device" --batch-size 4 &&
        "$BIN/p2p-eval" fcn-train --shards "$DATA/train" --out "$OUT/fcn" --size "$SIZE" --epochs 1 &&
        "$BIN/p2p-eval" score --pred "$OUT/translated" --shards "$DATA/val" --fcn "$OUT/fcn" --out "$OUT/report"
}

knows() {  # knows KEY=VALUE: this p2p-dist's config has the key (else one line saying so, status 1)
    "$PY" - "$1" <<'EOF'
import sys
from p2p_dist.config import ConfigError, load_config
try:
    load_config(None, [sys.argv[1]])
except ConfigError as exc:
    key = sys.argv[1].split("=")[0]
    print(f"{key} is not a key of this p2p-dist's config: the row was not run" if "unknown key" in str(exc) else exc)
    sys.exit(1)
EOF
}

check_throughput() {
    local variants=()
    knows train.cuda_graph="$GRAPH" >/dev/null &&
        variants=(--variant "graph:train.cuda_graph=$GRAPH"
                  --variant "graph_bf16:train.cuda_graph=$GRAPH,train.mixed_precision=bf16")
    "$PY" bench/train_throughput.py "${BENCH[@]}" --batch-size "$SMALL" "$LARGE" --no-translate "${variants[@]}" \
        --json "$OUT/throughput.bench.json" &&
        "$PY" - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
data = json.loads((out / "throughput.bench.json").read_text())
keys = ("images_per_s", "speedup_vs_reference", "speedup_vs_eager", "peak_memory_mib")
rows = {r["batch_size"]: {name: {k: row[k] for k in keys} for name, row in r["rows"].items()} for r in data["training"]}
line = "; ".join(f"batch {b}: " + ", ".join(f"{n} {r['images_per_s']:.3g}" for n, r in rs.items()) + " images/s"
                 for b, rs in rows.items())
(out / "throughput.extra.json").write_text(json.dumps({"device": data["device_name"], "rows": rows, "line": line}))
EOF
}

target() {  # target NAME BATCH GOAL|bf16: judge the bench's rows against a target (see the header)
    "$PY" - "$OUT" "$@" "$DRY" <<'EOF'
import json, pathlib, sys
out, name, batch, what, dry = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
bench = out / "throughput.bench.json"
if not bench.is_file():
    sys.exit("no bench figures: the throughput check failed")
rows = next((r["rows"] for r in json.loads(bench.read_text())["training"] if r["batch_size"] == batch), None)
if rows is None:
    sys.exit(f"no bench figures at batch {batch}")
if what == "bf16":
    if "graph" not in rows:
        sys.exit("train.cuda_graph is not a key of this p2p-dist's config: the graph and graph_bf16 rows were not run")
    row, base, goal = "graph_bf16", "graph", 1.5
else:
    row = max((n for n in ("default", "graph") if n in rows), key=lambda n: rows[n]["images_per_s"])
    base, goal = "reference", float(what)
ratio = rows[row]["images_per_s"] / rows[base]["images_per_s"]
line = (f"{row} {rows[row]['images_per_s']:.3g} images/s = {ratio:.2f}x {base} at batch {batch} (target {goal:g}x"
        + ("; dry run: not judged)" if dry else ")"))
(out / f"{name}.extra.json").write_text(json.dumps({"row": row, "versus": base, "ratio": ratio, "target": goal,
                                                    "target_met": ratio >= goal, "line": line}))
print(line)
sys.exit(0 if ratio >= goal or dry else 1)
EOF
}

real_train() {  # real_train NAME BATCH PLACEMENT: bench/real_train.py, then its share of the bench's default row
    local name=$1 batch=$2 placement=$3 i=0
    [ "$batch" = "$SMALL" ] || i=1
    knows data.placement="$placement" || return 1
    "$PY" bench/real_train.py --json "$OUT/$name.real.json" --skip "$REAL_SKIP" -- "${REAL_NET[@]}" \
        data.train="$REAL_DATA/train" data.direction=BtoA data.placement="$placement" \
        data.num_workers="$REAL_WORKERS" train.batch_size="$batch" train.max_steps="${REAL_STEPS[$i]}" \
        train.log_every="${REAL_LOG[$i]}" train.sample_every=0 train.checkpoint_every=0 \
        train.output_dir="$OUT/runs/$name" || return 1
    "$PY" - "$OUT" "$name" "$batch" "$placement" "$DRY" <<'EOF'
import json, pathlib, sys
out, name, batch, placement, dry = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
real_file = out / f"{name}.real.json"
real = json.loads(real_file.read_text())
real_file.unlink()
bench = out / "throughput.bench.json"
runs = json.loads(bench.read_text())["training"] if bench.is_file() else []
step = next((r["rows"]["default"]["images_per_s"] for r in runs if r["batch_size"] == batch), None)
fraction = None if step is None else real["images_per_s"] / step
line = (f"{real['images_per_s']:.3g} images/s, host CPU {real['cpu_s_per_sample'] * 1e3:.2f} ms per sample "
        f"({real['cpu_cores_busy']:.1f} cores busy)")
if fraction is None:
    line += "; no synthetic step figure (the throughput check failed)"
else:
    line += f" = {fraction:.0%} of the synthetic step ({step:.3g} images/s)"
judged = placement == "device" and not dry
if placement == "device":
    line += " (target 90%" + ("; dry run: not judged)" if dry else ")")
(out / f"{name}.extra.json").write_text(json.dumps({**real, "placement": placement, "synthetic_images_per_s": step,
                                                    "fraction_of_synthetic": fraction, "line": line}))
print(line)
sys.exit(1 if judged and not (fraction is not None and fraction >= 0.9) else 0)
EOF
}

"$BIN/p2p-data" demo scenes "$DATA" --train 16 --val 4 --size "$SIZE" --shard-size 8 >"$OUT/data.log" 2>&1 ||
    { echo "FAIL data: could not build the scenes set (see $OUT/data.log)"; exit 1; }
check bf16_channels_last check_bf16
check deterministic_resume check_resume
check nccl_world1 check_nccl
check deepspeed_zero2 check_deepspeed
check translate_score check_translate_score
check throughput check_throughput
check speed_b1 target speed_b1 "$SMALL" 5
check speed_b16 target speed_b16 "$LARGE" 2.5
check bf16_b16 target bf16_b16 "$LARGE" bf16
if [ "$DRY" = 0 ]; then
    "$BIN/p2p-data" demo scenes "$REAL_DATA" --train 400 --val 4 --size 256 >"$OUT/data256.log" 2>&1 ||
        echo "the 256 px scenes set could not be built (see $OUT/data256.log)"
fi
check real_device_b1 real_train real_device_b1 "$SMALL" device
check real_device_b16 real_train real_device_b16 "$LARGE" device
check real_stream_b16 real_train real_stream_b16 "$LARGE" stream

"$PY" - "$OUT" "$START" <<'EOF'
import json, pathlib, sys, time
out = pathlib.Path(sys.argv[1])
checks = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"), key=lambda p: p.stat().st_mtime)
          if p.name != "summary.json" and not p.name.endswith(".bench.json")]
seconds = time.time() - float(sys.argv[2])
summary = {"passed": all(c["passed"] for c in checks), "checks": {c["check"]: c["passed"] for c in checks},
           "seconds": round(seconds, 1), "within_6_minutes": seconds < 360}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"gpu-check: {sum(summary['checks'].values())}/{len(checks)} passed in {seconds:.0f} s "
      f"({'within' if seconds < 360 else 'OVER'} the 6-minute budget); {out}/summary.json")
EOF
exit "$FAILED"
