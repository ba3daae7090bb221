#!/usr/bin/env bash
# Train + test the 3D ResNet-18 brain-age regressor. Paper values are the `paper` profile's;
# anything below can be overridden by environment variables or by extra --key=value arguments.
#   bash resnet3d/train.sh
#   DATASET=ds000228 PROFILE=paper bash resnet3d/train.sh --epochs=50
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATASET="${DATASET:-ixi_hh}"
PROFILE="${PROFILE:-}"            # paper (source: 96^3 @ 2 mm, batch 2, AdamW 1e-5, 100 epochs) | cpu
SEED="${SEED:-42}"
RUN_NAME="${RUN_NAME:-}"
args=(--dataset="$DATASET" --seed="$SEED")
[[ -n "$PROFILE" ]] && args+=(--profile="$PROFILE")
[[ -n "$RUN_NAME" ]] && args+=(--run_name="$RUN_NAME")
[[ -n "${DATA_ROOT:-}" ]] && args+=(--data_root="$DATA_ROOT")
exec python -m resnet3d.train train "${args[@]}" "$@"
