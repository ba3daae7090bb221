#!/usr/bin/env bash
# Test a finished mid-slice run on the test split (writes results/midslice_resnet18*__ds000228.json).
#   bash midslice_classifier/test.sh runs/midslice_resnet18/ds000228/<run_name>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
help_requested "$@" && exec python -m midslice_classifier.train test --help
RUN_DIR="${RUN_DIR:-${1:?usage: bash midslice_classifier/test.sh RUN_DIR [--key=value ...]}}"
[[ $# -gt 0 ]] && shift
exec python -m midslice_classifier.train test --run_dir="$RUN_DIR" "$@"
