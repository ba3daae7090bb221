#!/usr/bin/env bash
# Train + test the 3D ResNet-18 brain-age regressor. Paper values are the `paper` profile's;
# anything below can be overridden by environment variables or by extra --key=value arguments.
#   bash resnet3d/train.sh
#   DATASET=ds000228 PROFILE=paper bash resnet3d/train.sh --epochs=50
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
# PROFILE: paper (source: 96^3 @ 2 mm, batch 2, AdamW 1e-5, 100 epochs) | cpu; also DATASET, SEED, RUN_NAME, DATA_ROOT
source scripts/method_args.sh
run_cli resnet3d.train train ixi_hh "$@"
