#!/usr/bin/env bash
# Both TSAN stages on one dataset (what scripts/reproduce.sh runs): sorter (cached), stage 1 and the
# faithful stage 2. VARIANTS adds the non-default stage-2 variants (tsan/README.md):
#   DATASET=ds000228 bash tsan/train.sh
#   VARIANTS="faithful out_of_fold normalized_d" bash tsan/train.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
if help_requested "$@"; then  # both stages' settings; nothing runs
  python -m tsan.train train_first_stage --help; exec python -m tsan.train train_second_stage --help
fi
export DATASET="${DATASET:-ixi_hh}"
RUN_NAME="${RUN_NAME:-${PROFILE:-auto}-$(date -u +%Y%m%d-%H%M%S)}"
RUN_NAME="$RUN_NAME" bash tsan/train_first_stage.sh "$@"
for variant in ${VARIANTS:-faithful}; do
  FIRST_STAGE="runs/tsan_stage1/$DATASET/$RUN_NAME" VARIANT="$variant" RUN_NAME="$RUN_NAME-$variant" \
    bash tsan/train_second_stage.sh
done
