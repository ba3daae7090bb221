#!/usr/bin/env bash
# Speed benchmark (set-up included): cached vs naive loading, fp32 vs fast path, main-job wall time.
# Writes benchmarks/BENCHMARKS.md and benchmarks/BENCHMARKS.json. Run it with nothing else on the machine.
#   bash scripts/bench.sh
#   bash scripts/bench.sh --sections=models --models=resnet3d --repeats=5
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
help_requested "$@" && exec python scripts/bench.py -- --help
exec python scripts/bench.py "$@"
