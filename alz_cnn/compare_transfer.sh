#!/usr/bin/env bash
# The whole comparison: AltzCNN, ResNet-18, ResNet-50 (+ DoRA head), EfficientNet-B0 (+ DoRA head)
# and ViT-B/16, each trained and tested in its own process, then the table in alz_cnn/README.md.
#   bash alz_cnn/compare_transfer.sh
#   MODELS=altzcnn,resnet18 bash alz_cnn/compare_transfer.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
# Environment: MODELS (all), PROFILE, SEED, RUN_NAME, DATA_ROOT.
source scripts/method_args.sh
run_cli alz_cnn.train compare alzheimer4 ${MODELS:+--models="$MODELS"} "$@"
