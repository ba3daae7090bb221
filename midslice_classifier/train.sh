#!/usr/bin/env bash
# Train + test the ResNet-18 mid-slice age-group classifier (ds000228). Source values: SGD momentum
# 0.9, lr 1e-3 (new head 10x), 15 epochs, mini-batch floor(n_train/4), rotation +-30 degrees.
#   bash midslice_classifier/train.sh                      # from scratch (ImageNet weights unavailable here)
#   WEIGHTS=IMAGENET1K_V1 bash midslice_classifier/train.sh
#   WEIGHTS=runs/alz_resnet18/alzheimer4/<run>/best.pt bash midslice_classifier/train.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
# Environment: DATASET (ds000228), WEIGHTS (none), PROFILE, SEED, RUN_NAME, DATA_ROOT.
source scripts/method_args.sh
run_cli midslice_classifier.train train ds000228 --weights="${WEIGHTS:-none}" "$@"
