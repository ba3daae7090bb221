#!/usr/bin/env bash
# VGG16 triplet features + linear SVR (early fusion C=98 eps=0.064; late fusion C=1 eps=0.1), fitted on
# the training split, bias correction on validation, reported on test. Features are cached on disk.
#   bash baselines/vgg16_svr/train.sh                                  # random-init VGG16 (no download here)
#   WEIGHTS=IMAGENET1K_V1 DATASET=ixi_hh bash baselines/vgg16_svr/train.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
# Environment: DATASET (ixi_hh), WEIGHTS (none), PROFILE, RUN_NAME, DATA_ROOT.
source scripts/method_args.sh
run_cli baselines.vgg16_svr.train "" ixi_hh --weights="${WEIGHTS:-none}" "$@"
