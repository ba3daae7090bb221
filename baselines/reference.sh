#!/usr/bin/env bash
# Reference rows: the mean-age predictor (every dataset) and ROI ridge on DLMUSE volumes (ixi_hh).
#   DATASET=ixi_hh bash baselines/reference.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
if help_requested "$@"; then python -m baselines.reference mean_age --help; exec python -m baselines.reference roi_ridge --help; fi
DATASET="${DATASET:-ixi_hh}"
args=(--dataset="$DATASET")
[[ -n "${DATA_ROOT:-}" ]] && args+=(--data_root="$DATA_ROOT")
python -m baselines.reference mean_age "${args[@]}" "$@"
if [[ "$DATASET" == "ixi_hh" ]]; then
  python -m baselines.reference roi_ridge "${args[@]}" "$@"
fi
