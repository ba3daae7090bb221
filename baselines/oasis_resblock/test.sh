#!/usr/bin/env bash
# Test a finished OASIS ResBlock run (bias correction fitted on validation, report on test).
#   bash baselines/oasis_resblock/test.sh runs/oasis_resblock/ixi_hh/<run_name>/fold<k>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
test_run baselines.oasis_resblock.train test "$@"
