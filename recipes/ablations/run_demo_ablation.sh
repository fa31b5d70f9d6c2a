#!/usr/bin/env bash
# The paper's loss ablation (Isola et al. 2017, Table 1: L1 / cGAN / L1+cGAN, labels -> photo,
# scored by FCN-score) made real on the built-in `scenes` demo, on a CPU.
#
#   bash recipes/ablations/run_demo_ablation.sh [VENV]        (what `make ablation` runs)
#
# Steps: build the scenes demo set (if absent) -> train L1 (loss.gan=none), cGAN
# (loss.lambda_l1=0) and L1+cGAN (the full objective) briefly with recipes/demo.yaml -> train the
# FCN evaluator on the demo's real training photos -> score each run on the val split (FCN-score
# of generated photos + the evaluator's real-photo row, L1/PSNR/SSIM, Lab colour histograms, and
# LPIPS/FID/KID where their weights are in the torch cache) -> `p2p-eval compare` them into
# $ABLATION_DIR/report/report.{md,json,html}.
#
# Environment knobs (defaults in brackets):
#   ABLATION_DIR [ablation]        everything goes here: data/, runs/, fcn/, scores/, report/
#   ABLATION_DATA [$ABLATION_DIR/data]  an existing scenes set (train/ and val/) to reuse
#   ABLATION_STEPS [300]           training steps per variant (the paper trains ~200 epochs)
#   ABLATION_ACCELERATE [recipes/accelerate/cpu_2proc.yaml]  accelerate config for training
#   ABLATION_FCN_EPOCHS [12]       FCN evaluator epochs
#   ABLATION_VARIANTS ["l1 cgan l1_cgan"]
# A variant whose run already has final/ is not retrained; delete $ABLATION_DIR to start over.
#
# The full Cityscapes version on a cluster (the same steps at the paper's scale):
#   p2p-data cityscapes ... -> shards/cityscapes/{train,val}   (see README / p2p-data --help)
#   sbatch slurm/train.sbatch recipes/ablations/l1.yaml        (and cgan.yaml, l1_cgan.yaml)
#   p2p-eval fcn-train --shards shards/cityscapes/train --out runs/fcn_cityscapes --size 256 --width 32
#   sbatch slurm/eval.sbatch, or by hand per run (one node, all its processes):
#     accelerate launch --multi_gpu --num_processes N -m p2p_eval score \
#         --checkpoint runs/ablations/l1/final --shards shards/cityscapes/val \
#         --fcn runs/fcn_cityscapes --size 256 --out runs/ablations/l1/score --name L1
#   p2p-eval compare runs/ablations/{l1,cgan,l1_cgan}/score --out runs/ablations/report
set -euo pipefail

VENV=${1:-.venv}
cd "$(dirname "$0")/../.."
BIN="$VENV/bin"
OUT=${ABLATION_DIR:-ablation}
DATA=${ABLATION_DATA:-$OUT/data}
STEPS=${ABLATION_STEPS:-300}
ACCEL=${ABLATION_ACCELERATE:-recipes/accelerate/cpu_2proc.yaml}
FCN_EPOCHS=${ABLATION_FCN_EPOCHS:-12}
VARIANTS=${ABLATION_VARIANTS:-"l1 cgan l1_cgan"}

for tool in p2p-data p2p-eval accelerate; do
    if [ ! -x "$BIN/$tool" ]; then
        echo "ablation: $BIN/$tool not found; run \`make install\` first (or pass the venv folder)" >&2
        exit 2
    fi
done
if [ ! -f p2p_dist/train/__main__.py ]; then
    echo "ablation: the training entry point p2p_dist/train/__main__.py is missing" >&2
    exit 2
fi

say() { printf '\n== %s\n' "$*"; }

if [ -f "$DATA/train/index.json" ] && [ -f "$DATA/val/index.json" ]; then
    say "reusing the scenes demo set in $DATA"
else
    say "building the scenes demo set in $DATA"
    "$BIN/p2p-data" demo scenes "$DATA" --overwrite
fi

label_of() {
    case "$1" in
        l1) echo "L1" ;;
        cgan) echo "cGAN" ;;
        l1_cgan) echo "L1+cGAN" ;;
        *) echo "$1" ;;
    esac
}
overrides_of() {
    case "$1" in
        l1) echo "loss.gan=none" ;;
        cgan) echo "loss.lambda_l1=0" ;;
        l1_cgan) echo "" ;;
        *) echo "ablation: unknown variant $1 (l1, cgan, l1_cgan)" >&2; exit 2 ;;
    esac
}

for v in $VARIANTS; do
    run="$OUT/runs/$v"
    if [ -f "$run/final/generator.safetensors" ]; then
        say "$(label_of "$v"): $run/final exists, not retraining"
        continue
    fi
    say "training $(label_of "$v") for $STEPS steps -> $run"
    # shellcheck disable=SC2046  # the overrides are separate words on purpose
    "$BIN/accelerate" launch --config_file "$ACCEL" -m p2p_dist.train --config recipes/demo.yaml \
        data.train="$DATA/train" data.val="$DATA/val" train.output_dir="$run" \
        train.max_steps="$STEPS" train.checkpoint_every=0 train.resume=none $(overrides_of "$v")
done

if [ -f "$OUT/fcn/fcn.json" ] && [ -f "$OUT/fcn/fcn.safetensors" ]; then
    say "reusing the FCN evaluator in $OUT/fcn"
else
    say "training the FCN evaluator on the real photos of $DATA/train"
    "$BIN/p2p-eval" fcn-train --shards "$DATA/train" --val "$DATA/val" --out "$OUT/fcn" --epochs "$FCN_EPOCHS"
fi

runs=()
for v in $VARIANTS; do
    say "scoring $(label_of "$v")"
    "$BIN/p2p-eval" score --checkpoint "$OUT/runs/$v/final" --shards "$DATA/val" --fcn "$OUT/fcn" \
        --out "$OUT/scores/$v" --name "$(label_of "$v")"
    runs+=("$(label_of "$v")=$OUT/scores/$v")
done

say "comparing"
"$BIN/p2p-eval" compare "${runs[@]}" --out "$OUT/report"
echo "ablation: report in $OUT/report/report.html (and report.md, report.json)"
