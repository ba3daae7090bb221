#!/usr/bin/env bash
# One epoch of every brain-age method's paper profile on a CUDA machine (fp16 autocast), then a
# 2-process nccl torchrun of resnet3d when there are 2 or more GPUs; writes benchmarks/gpu_check.{json,md}.
# The shared preprocessing is filled first with one process per core.
#   bash scripts/gpu_check.sh                  # real data (ixi_hh), needs CUDA; about 10 minutes on one GPU
#   bash scripts/gpu_check.sh --dry_run        # the same steps on the CPU, shrunk models, synthetic data
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
help_requested "$@" && exec python scripts/gpu_check.py --help
if [[ " $* " != *" --dry_run "* && " $* " != *" --dry_run=True "* ]]; then
  python scripts/preprocess.py --datasets="${DATASET:-ixi_hh}" --workers="$(nproc)"
fi
exec python scripts/gpu_check.py "$@"
