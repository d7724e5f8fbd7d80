#!/usr/bin/env bash
# The runs behind issue 5's evidence (online bootstrapping at CPU scale). Two runs at a time, one thread each:
#   experiments/online_evidence.sh [train|evaluate]
# Run folders go to outputs/online/<name>/ (a finished run is skipped: its checkpoint is resumed at its last step) (checkpoints are not committed); evaluate adds the offline metric
# (fd_cls, precision, recall, cls_score: a small classifier's features, not FID) to each manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
SG=${SG:-.venv/bin/selfguide}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
BASE="--preset tiny --steps 1500 --batch-size 128 --lr 1e-3 --warmup-steps 100 --ema-decay 0.999 --clusters 10 --ckpt-every 500"
SMALL="--guidance online --feature-readout patches --no-sk-mask --feature-t 0.05"   # the small-image defaults
PAPER="--guidance online --feature-readout token --sk-mask --feature-t 0.2"          # Algorithm 1 as written
STUDY="--preset tiny --steps 400 --batch-size 128 --lr 1e-3 --warmup-steps 100 --ema-decay 0.999 --clusters 10 --ckpt-every 400 --monitor-every 100"
runs() {  # name | options
cat <<RUNS
digits_online_s0|--dataset digits --patch-size 4 $BASE $SMALL --seed 0
digits_none_s0|--dataset digits --patch-size 4 $BASE --guidance none --seed 0
digits_online_s1|--dataset digits --patch-size 4 $BASE $SMALL --seed 1
digits_none_s1|--dataset digits --patch-size 4 $BASE --guidance none --seed 1
digits_online_s2|--dataset digits --patch-size 4 $BASE $SMALL --seed 2
digits_none_s2|--dataset digits --patch-size 4 $BASE --guidance none --seed 2
digits_online_paper_s0|--dataset digits --patch-size 4 $BASE $PAPER --seed 0
fashion_none_s0|--dataset fashion_mnist --patch-size 7 $BASE --guidance none --seed 0
fashion_online_s0|--dataset fashion_mnist --patch-size 7 $BASE $SMALL --seed 0
digits_online_sigma0.25_s0|--dataset digits --patch-size 4 $BASE $SMALL --sk-sigma 0.25 --seed 0
digits_online_index_s0|--dataset digits --patch-size 4 $BASE $SMALL --online-condition index --seed 0
digits_online_patch_s0|--dataset digits --patch-size 4 $BASE --guidance online_patch --feature-readout patches --no-sk-mask --feature-t 0.05 --seed 0
study_token_mask_t0.2|--dataset digits --patch-size 4 $STUDY --guidance online --feature-readout token --sk-mask --feature-t 0.2
study_mean_mask_t0.2|--dataset digits --patch-size 4 $STUDY --guidance online --feature-readout mean --sk-mask --feature-t 0.2
study_patches_mask_t0.2|--dataset digits --patch-size 4 $STUDY --guidance online --feature-readout patches --sk-mask --feature-t 0.2
study_token_nomask_t0.05|--dataset digits --patch-size 4 $STUDY --guidance online --feature-readout token --no-sk-mask --feature-t 0.05
study_mean_nomask_t0.05|--dataset digits --patch-size 4 $STUDY --guidance online --feature-readout mean --no-sk-mask --feature-t 0.05
study_patches_nomask_t0.2|--dataset digits --patch-size 4 $STUDY --guidance online --feature-readout patches --no-sk-mask --feature-t 0.2
study_patches_nomask_t0.05|--dataset digits --patch-size 4 $STUDY --guidance online --feature-readout patches --no-sk-mask --feature-t 0.05
study_token_twoview_t0.05|--dataset digits --patch-size 4 $STUDY --guidance online --feature-readout token --no-sk-mask --sk-two-view --feature-t 0.05
study_mean_twoview_t0.05|--dataset digits --patch-size 4 $STUDY --guidance online --feature-readout mean --no-sk-mask --sk-two-view --feature-t 0.05
study_patches_twoview_t0.05|--dataset digits --patch-size 4 $STUDY --guidance online --feature-readout patches --no-sk-mask --sk-two-view --feature-t 0.05
RUNS
}
one() {  # train one run, logging to its folder
  name=${1%%|*}; opts=${1#*|}; out=outputs/online/$name
  mkdir -p "$out"; $SG train $opts --out-dir "$out" > "$out/train.log" 2>&1 && echo "done $name" || echo "FAILED $name"
}
evaluate() {
  name=${1%%|*}; out=outputs/online/$name
  case $name in study_*) return;; esac
  $SG evaluate --run "$out" --n 1000 --rtol 1e-3 --atol 1e-3 --out "$out/metrics.json" > "$out/evaluate.log" 2>&1 && echo "evaluated $name" || echo "FAILED evaluate $name"
}
export -f one evaluate; export SG
case ${1:-train} in
  train) runs | xargs -d '\n' -P 2 -I{} bash -c 'one "$@"' _ {} ;;
  evaluate) runs | xargs -d '\n' -P 2 -I{} bash -c 'evaluate "$@"' _ {} ;;
esac
