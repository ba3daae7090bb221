#!/usr/bin/env bash
# Train + test the ResNet-18 mid-slice age-group classifier (ds000228). Source values: SGD momentum
# 0.9, lr 1e-3 (new head 10x), 15 epochs, mini-batch floor(n_train/4), rotation +-30 degrees.
#   bash midslice_classifier/train.sh                      # from scratch (ImageNet weights unavailable here)
#   WEIGHTS=IMAGENET1K_V1 bash midslice_classifier/train.sh
#   WEIGHTS=runs/alz_cnn/.../best.pt bash midslice_classifier/train.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATASET="${DATASET:-ds000228}"
PROFILE="${PROFILE:-}"
WEIGHTS="${WEIGHTS:-none}"
SEED="${SEED:-42}"
args=(--dataset="$DATASET" --weights="$WEIGHTS" --seed="$SEED")
[[ -n "$PROFILE" ]] && args+=(--profile="$PROFILE")
[[ -n "${RUN_NAME:-}" ]] && args+=(--run_name="$RUN_NAME")
[[ -n "${DATA_ROOT:-}" ]] && args+=(--data_root="$DATA_ROOT")
exec python -m midslice_classifier.train train "${args[@]}" "$@"
