#!/usr/bin/env bash
# Test a finished run on the published test/ folder (writes results/alz_<model>__alzheimer4.json).
#   bash alz_cnn/test.sh runs/alz_altzcnn/alzheimer4/<run_name>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
test_run alz_cnn.train test "$@"
