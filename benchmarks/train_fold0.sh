#!/usr/bin/env bash
# Train VRP and ProSAM on coco-mini COCO-20i fold-0 base classes with the same seed, episodes
# and budget, choose each checkpoint on the validation list, then evaluate both (and the
# training-free baselines) on the test lists with mask and box references.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="coco:../shared/data/coco-mini/coco-mini-b,../shared/data/coco-mini/coco-tiny-a,../shared/data/coco-mini/coco-tiny-c,../shared/data/coco-mini/coco-tiny-d"
EPOCHS=${EPOCHS:-2}
PER_EPOCH=${PER_EPOCH:-250}
RUNS=${RUNS:-runs}
for method in ${METHODS:-vrp prosam}; do
  prosam train --data "$DATA" --fold 0 --method "$method" --out "$RUNS/fold0-$method" \
    --epochs "$EPOCHS" --episodes-per-epoch "$PER_EPOCH" --batch-size 2 --seed 321 \
    --annotation mask --val-episodes benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-val.json \
    --model minisam --no-progress --resume
done
for kind in mask box; do
  for method in ${METHODS:-vrp prosam}; do
    prosam eval fss --data "$DATA" --fold 0 --method "$method" \
      --checkpoint "$RUNS/fold0-$method/best" --model minisam --no-progress \
      --episodes "benchmarks/episodes/coco-mini-fold0-novel-1shot-$kind-test.json" \
      --json "benchmarks/reports/fss-$method-fold0-$kind.json"
  done
done
