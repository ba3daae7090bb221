#!/usr/bin/env bash
# Test a finished TSAN second-stage run on the test split (writes its result JSON).
#   bash tsan/test_second_stage.sh runs/tsan_stage2/<dataset>/<run_name>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
help_requested "$@" && exec python -m tsan.train test_second_stage --help
RUN_DIR="${RUN_DIR:-${1:?usage: bash tsan/test_second_stage.sh RUN_DIR [--key=value ...]}}"
[[ $# -gt 0 ]] && shift
exec python -m tsan.train test_second_stage --run_dir="$RUN_DIR" "$@"
