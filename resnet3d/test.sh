#!/usr/bin/env bash
# Test a finished run: predictions on val/test, bias correction fitted on val, report on test,
# results/resnet3d__<dataset>.json.
#   bash resnet3d/test.sh runs/resnet3d/ixi_hh/<run_name>/fold<k>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
test_run resnet3d.train test "$@"
