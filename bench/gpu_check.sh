#!/usr/bin/env bash
# The checks a CUDA GPU must pass, in under 5 minutes on one GPU (what `make gpu-check` runs):
#
#   bash bench/gpu_check.sh [VENV] [OUT]       (defaults: .venv, gpu-check/)
#
#   bf16_channels_last   p2p-train with train.mixed_precision=bf16 and channels_last: every logged loss finite
#   deterministic_resume 6 steps in one go == 3 steps, stop, 3 more (train.deterministic=true), bit for bit
#   nccl_world1          an NCCL all-reduce with world size 1, then p2p-train under the multi-GPU config
#   deepspeed_zero2      ZeRO-2: save, resume, export of the generator
#   translate_score      p2p-translate and p2p-eval score on cuda
#   throughput           bench/train_throughput.py at batch 1/4/16, eager vs default, synchronize timing,
#                        CUDA peak memory
#
# Each check prints one PASS/FAIL line and writes OUT/<check>.json ({"check", "passed", "seconds",
# "log", ...}); OUT/summary.json lists them all; the exit code is 1 when any check failed.
# Without CUDA the script says so in one line and dry-runs every check on the CPU with a tiny
# network and 2 steps (gloo in place of NCCL): exit 0 means the checks would run.
set -uo pipefail

VENV=${1:-.venv}
OUT=${2:-gpu-check}
PY="$VENV/bin/python"
BIN="$VENV/bin"
cd "$(dirname "$0")/.." || exit 2
[ -x "$PY" ] || { echo "gpu-check: $PY not found (run make install first)"; exit 2; }
mkdir -p "$OUT"
rm -rf "${OUT:?}"/*

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    DRY=0
    NET=(model.generator=unet_128 model.ngf=32 model.ndf=32 data.load_size=143 data.crop_size=128)
    STEPS=20 HALF=3 SIZE=128 BATCHES=(1 4 16) BENCH=(--device cuda --size 256 --warmup 3 --repeats 10)
    DDP_CONFIG=recipes/accelerate/multi_gpu.yaml BACKEND=nccl
    "$PY" -c 'import torch; print("gpu-check on", torch.cuda.get_device_name(0), "torch", torch.__version__)'
else
    DRY=1
    NET=(model.generator=unet_128 model.ngf=4 model.ndf=4 data.load_size=128 data.crop_size=128)
    STEPS=2 HALF=1 SIZE=128 BATCHES=(1) BENCH=(--dry-run)
    DDP_CONFIG=recipes/accelerate/cpu_2proc.yaml BACKEND=gloo
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
tail = "" if record["passed"] else " (last lines: " + " | ".join(
    (out / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]) + ")"
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

check_throughput() {
    "$PY" bench/train_throughput.py "${BENCH[@]}" --batch-size "${BATCHES[@]}" --no-translate \
        --json "$OUT/throughput.bench.json" &&
        "$PY" - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
data = json.loads((out / "throughput.bench.json").read_text())
rows = {r["batch_size"]: {name: {k: row[k] for k in ("images_per_s", "speedup_vs_eager", "peak_memory_mib")}
                          for name, row in r["rows"].items()} for r in data["training"]}
(out / "throughput.extra.json").write_text(json.dumps({"device": data["device_name"], "rows": rows}))
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

"$PY" - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
checks = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "summary.json"
          and not p.name.endswith(".bench.json")]
summary = {"passed": all(c["passed"] for c in checks), "checks": {c["check"]: c["passed"] for c in checks},
           "seconds": round(sum(c["seconds"] for c in checks), 1)}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"gpu-check: {sum(summary['checks'].values())}/{len(checks)} passed in {summary['seconds']:.0f} s; "
      f"{out}/summary.json")
EOF
exit "$FAILED"
