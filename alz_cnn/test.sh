#!/usr/bin/env bash
# Test a finished run on the published test/ folder (writes results/alz_<model>__alzheimer4.json).
#   bash alz_cnn/test.sh runs/alz_altzcnn/alzheimer4/<run_name>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
help_requested "$@" && exec python -m alz_cnn.train test --help
RUN_DIR="${RUN_DIR:-${1:?usage: bash alz_cnn/test.sh RUN_DIR [--key=value ...]}}"
[[ $# -gt 0 ]] && shift
exec python -m alz_cnn.train test --run_dir="$RUN_DIR" "$@"
