#!/usr/bin/env bash
# Brain age on your own T1-weighted scans with a fitted VGG16 + SVR run: the fold ensemble of one
# fusion (common/predict.py; --help lists every flag).
#   bash baselines/vgg16_svr/predict.sh --model_path=runs/vgg16_svr_randinit/ixi_hh/main-cpu --method=vgg16_svr_late_randinit --inputs=my_scans/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
help_requested "$@" && exec python -m common.predict --help
exec python -m common.predict "$@"
