#!/usr/bin/env bash
# Where a stage-2 run's residual comes from, per split (tsan/README.md, "The stage-2 question"):
# writes <run_dir>/residual_sources.json.
#   bash tsan/analyse_second_stage.sh runs/tsan_stage2/ixi_hh/<run_name>/fold<k>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
help_requested "$@" && exec python -m tsan.train analyse_second_stage -- --help
[[ $# -ge 1 ]] || { echo "usage: bash tsan/analyse_second_stage.sh RUN_DIR [--device=...]" >&2; exit 2; }
exec python -m tsan.train analyse_second_stage "$@"
