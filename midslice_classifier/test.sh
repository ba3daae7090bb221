#!/usr/bin/env bash
# Test a finished mid-slice run on the test split (writes results/midslice_resnet18*__ds000228.json).
#   bash midslice_classifier/test.sh runs/midslice_resnet18/ds000228/<run_name>/fold<k>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
test_run midslice_classifier.train test "$@"
