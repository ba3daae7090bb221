#!/usr/bin/env bash
# Both TSAN stages on one dataset (what scripts/reproduce.sh runs): sorter (cached), stage 1, stage 2,
# and stage 2's normalized-d variant (VARIANTS="faithful normalized_d" by default).
#   DATASET=ds000228 bash tsan/train.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DATASET="${DATASET:-ixi_hh}"
RUN_NAME="${RUN_NAME:-${PROFILE:-auto}-$(date -u +%Y%m%d-%H%M%S)}"
RUN_NAME="$RUN_NAME" bash tsan/train_first_stage.sh "$@"
for variant in ${VARIANTS:-faithful normalized_d}; do
  FIRST_STAGE="runs/tsan_stage1/$DATASET/$RUN_NAME" VARIANT="$variant" RUN_NAME="$RUN_NAME-$variant" \
    bash tsan/train_second_stage.sh
done
