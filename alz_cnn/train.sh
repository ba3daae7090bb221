#!/usr/bin/env bash
# Train + test one model on the 4-class Alzheimer slices (published train/ and test/ folders).
# Source values (paper profile): AltzCNN 64x64, batch 128, Adam lr 3e-4, 20 epochs, cross-entropy.
#   bash alz_cnn/train.sh                               # AltzCNN
#   MODEL=resnet50_dora bash alz_cnn/train.sh           # a transfer model (from scratch here)
#   MODEL=resnet50 WEIGHTS=IMAGENET1K_V1 bash alz_cnn/train.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
# Environment: MODEL (altzcnn), WEIGHTS (none), PROFILE, SEED, RUN_NAME, DATA_ROOT.
source scripts/method_args.sh
run_cli alz_cnn.train train alzheimer4 --model="${MODEL:-altzcnn}" --weights="${WEIGHTS:-none}" "$@"
