#!/usr/bin/env bash
# Test a finished TSAN first-stage run on the test split (writes its result JSON).
#   bash tsan/test_first_stage.sh runs/tsan_stage1/<dataset>/<run_name>/fold<k>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
test_run tsan.train test_first_stage "$@"
