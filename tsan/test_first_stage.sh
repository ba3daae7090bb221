#!/usr/bin/env bash
# Test a finished TSAN first-stage run on the test split (writes its result JSON).
#   bash tsan/test_first_stage.sh runs/tsan_stage1/<dataset>/<run_name>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
help_requested "$@" && exec python -m tsan.train test_first_stage --help
RUN_DIR="${RUN_DIR:-${1:?usage: bash tsan/test_first_stage.sh RUN_DIR [--key=value ...]}}"
[[ $# -gt 0 ]] && shift
exec python -m tsan.train test_first_stage --run_dir="$RUN_DIR" "$@"
