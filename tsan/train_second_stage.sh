#!/usr/bin/env bash
# TSAN stage 2 (residual on the discretised stage-1 age; stage 1 frozen), then test.
# Paper values (public code bash_train_second_stage.sh): BATCH_SIZE=32 (non-tied sorter of length 32) LR=1e-5 EPOCHS=150 LBD=10
# DIS_RANGE=5, SGD, weight decay 5e-4. VARIANT=faithful (default), out_of_fold or normalized_d (see tsan/README.md).
#   FIRST_STAGE=runs/tsan_stage1/ixi_hh/<run_name> bash tsan/train_second_stage.sh
#   bash tsan/train_second_stage.sh             # the latest stage-1 run of $DATASET (default ixi_hh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
help_requested "$@" && exec python -m tsan.train train_second_stage -- --help
DATASET="${DATASET:-ixi_hh}"
FIRST_STAGE="${FIRST_STAGE:-$(ls -td runs/tsan_stage1/"$DATASET"/*/ 2>/dev/null | head -n 1)}"
[[ -n "$FIRST_STAGE" ]] || { echo "no stage-1 run for $DATASET: run bash tsan/train_first_stage.sh first" >&2; exit 2; }
BATCH_SIZE="${BATCH_SIZE:-}"; LR="${LR:-}"; EPOCHS="${EPOCHS:-}"; LBD="${LBD:-}"; DIS_RANGE="${DIS_RANGE:-}"
args=(--first_stage="${FIRST_STAGE%/}" --variant="${VARIANT:-faithful}")
[[ -n "$BATCH_SIZE" ]] && args+=(--batch_size="$BATCH_SIZE")
[[ -n "$LR" ]] && args+=(--lr="$LR")
[[ -n "$EPOCHS" ]] && args+=(--epochs="$EPOCHS")
[[ -n "$LBD" ]] && args+=(--lbd="$LBD")
[[ -n "$DIS_RANGE" ]] && args+=(--dis_range="$DIS_RANGE")
[[ -n "${PROFILE:-}" ]] && args+=(--profile="$PROFILE")
[[ -n "${RUN_NAME:-}" ]] && args+=(--run_name="$RUN_NAME")
[[ -n "${DATA_ROOT:-}" ]] && args+=(--data_root="$DATA_ROOT")
[[ -n "${SEED:-}" ]] && args+=(--seed="$SEED")
[[ -n "${RESUME:-}" ]] && args+=(--resume="$RESUME")
exec python -m tsan.train train_second_stage "${args[@]}" "$@"
