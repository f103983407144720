#!/usr/bin/env bash
# Issue 14: ProSAM's Monte-Carlo samples K (the paper's 10) and the n reading on a short CPU
# run: the same 200 episodes (paired 0.5, distractor 0.1, msrc-v2 joined) for each setting,
# validated with the reference gain. Logs in runs/kstudy-*/train.log.
#   bash benchmarks/prosam_k_study.sh        (SETTINGS="k1 k3 k10 k3-element" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
for setting in ${SETTINGS:-k1 k3 k10 k3-element}; do
  k=${setting%%-*}
  k=${k#k}
  mode=token
  [[ $setting == *-element ]] && mode=element
  METHOD=prosam MIX="--paired 0.5 --distractor 0.1" EPOCHS=1 EPISODES=${EPISODES:-200} \
    RUN="runs/kstudy-$setting" ARGS="--samples $k --n-mode $mode" \
    bash benchmarks/train_reference_gain.sh
done
