#!/usr/bin/env bash
# Test a finished OASIS ResBlock run (bias correction fitted on validation, report on test).
#   bash baselines/oasis_resblock/test.sh runs/oasis_resblock/ixi_hh/<run_name>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
help_requested "$@" && exec python -m baselines.oasis_resblock.train test --help
RUN_DIR="${RUN_DIR:-${1:?usage: bash baselines/oasis_resblock/test.sh RUN_DIR [--key=value ...]}}"
[[ $# -gt 0 ]] && shift
exec python -m baselines.oasis_resblock.train test --run_dir="$RUN_DIR" "$@"
