#!/usr/bin/env bash
# Train + test the OASIS ResBlock regressor. Tutorial values (paper profile): 64^3 at 4 mm (nilearn),
# MSE on z-scored age, AdamW 1e-3 / wd 0.05, 3 warm-up epochs then ReduceLROnPlateau, batch 8, <= 50 epochs.
#   bash baselines/oasis_resblock/train.sh
#   DATASET=ds000228 PROFILE=paper bash baselines/oasis_resblock/train.sh --epochs=30
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
# Environment: DATASET (ixi_hh), PROFILE, SEED, RUN_NAME, DATA_ROOT.
source scripts/method_args.sh
run_cli baselines.oasis_resblock.train train ixi_hh "$@"
