#!/usr/bin/env bash
# Brain age on your own T1-weighted scans with a trained tsan model: the fold ensemble of a
# cross-validated run by default (common/predict.py; --help lists every flag).
#   bash tsan/predict.sh --model_path=runs/tsan_stage2/ixi_hh/main-cpu-faithful --inputs=my_scans/
#   bash tsan/predict.sh --model_path=runs/tsan_stage2/ixi_hh/main-cpu-faithful --inputs=scans.csv --fold=0 --saliency=True
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
help_requested "$@" && exec python -m common.predict --help
exec python -m common.predict "$@"
