#!/usr/bin/env bash
# The in-domain transfer row: the mid-slice classifier fine-tuned from the repository's own alz_cnn
# ResNet-18 (the checkpoint of the run behind results/alz_resnet18__alzheimer4.json), on the same folds
# as the from-scratch row. Run alz_cnn first (bash alz_cnn/compare_transfer.sh, or MODEL=resnet18
# bash alz_cnn/train.sh).
#   bash midslice_classifier/train_from_alz.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
# Environment: RESULTS_DIR (results), and those of midslice_classifier/train.sh.
help_requested "$@" && exec bash midslice_classifier/train.sh "$@"  # help needs no checkpoint
result="${RESULTS_DIR:-results}/alz_resnet18__alzheimer4.json"
if [[ ! -f "$result" ]]; then
  echo "error: $result not found: train the alz_cnn ResNet-18 first (MODEL=resnet18 bash alz_cnn/train.sh)" >&2
  exit 2
fi
run_dir="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["run_dir"])' "$result")"
checkpoint="$run_dir/best.pt"
[[ -f "$checkpoint" ]] || { echo "error: $checkpoint (named by $result) is missing" >&2; exit 2; }
WEIGHTS="$checkpoint" exec bash midslice_classifier/train.sh "$@"
