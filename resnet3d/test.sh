#!/usr/bin/env bash
# Test a finished run: predictions on val/test, bias correction fitted on val, report on test,
# results/resnet3d__<dataset>.json.
#   bash resnet3d/test.sh runs/resnet3d/ixi_hh/<run_name>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
help_requested "$@" && exec python -m resnet3d.train test --help
RUN_DIR="${RUN_DIR:-${1:?usage: bash resnet3d/test.sh RUN_DIR [--key=value ...]}}"
[[ $# -gt 0 ]] && shift
exec python -m resnet3d.train test --run_dir="$RUN_DIR" "$@"
