#!/usr/bin/env bash
# TSAN stage 1 (ScaleDense, MSE + 10 x (ranking + 1 x age difference)) on a shared split, then test.
# Paper values (public code bash_train_first_stage.sh): BATCH_SIZE=32 LR=1e-3 EPOCHS=150 LBD=10,
# Adam (amsgrad), weight decay 5e-4. Left unset, the profile decides (paper with a GPU, cpu here).
#   bash tsan/train_first_stage.sh
#   DATASET=ds000228 BATCH_SIZE=8 bash tsan/train_first_stage.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
BATCH_SIZE="${BATCH_SIZE:-}"; LR="${LR:-}"; EPOCHS="${EPOCHS:-}"; LBD="${LBD:-}"
args=()
[[ -n "$BATCH_SIZE" ]] && args+=(--batch_size="$BATCH_SIZE")
[[ -n "$LR" ]] && args+=(--lr="$LR")
[[ -n "$EPOCHS" ]] && args+=(--epochs="$EPOCHS")
[[ -n "$LBD" ]] && args+=(--lbd="$LBD")
# Environment: DATASET (ixi_hh), PROFILE, SEED, RUN_NAME, DATA_ROOT.
source scripts/method_args.sh
run_cli tsan.train train_first_stage ixi_hh "${args[@]}" "$@"
