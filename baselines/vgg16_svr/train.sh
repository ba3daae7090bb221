#!/usr/bin/env bash
# VGG16 triplet features + linear SVR (early fusion C=98 eps=0.064; late fusion C=1 eps=0.1), fitted on
# the training split, bias correction on validation, reported on test. Features are cached on disk.
#   bash baselines/vgg16_svr/train.sh                                  # random-init VGG16 (no download here)
#   WEIGHTS=IMAGENET1K_V1 DATASET=ixi_hh bash baselines/vgg16_svr/train.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATASET="${DATASET:-ixi_hh}"
PROFILE="${PROFILE:-}"
WEIGHTS="${WEIGHTS:-none}"
args=(--dataset="$DATASET" --weights="$WEIGHTS")
[[ -n "$PROFILE" ]] && args+=(--profile="$PROFILE")
[[ -n "${RUN_NAME:-}" ]] && args+=(--run_name="$RUN_NAME")
[[ -n "${DATA_ROOT:-}" ]] && args+=(--data_root="$DATA_ROOT")
exec python -m baselines.vgg16_svr.train "${args[@]}" "$@"
