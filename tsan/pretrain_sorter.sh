#!/usr/bin/env bash
# Pretrain the SoDeep sorter TSAN's ranking loss needs, for one sequence length (= training batch size),
# and cache it under .cache/tsan/ (SoDeep weights cannot be downloaded).
# Paper recipe (SoDeep): LSTM 512 units, Adam lr 1e-3 halved every 70 epochs, 400 epochs of 1,406 batches of 256.
# Stage 1 uses a tied-rank sorter, stage 2 a non-tied one, as the source (STAGE=1 or 2).
#   bash tsan/pretrain_sorter.sh                # length 8, stage 1 (cpu profile: both stages use batch 8)
#   SEQ_LEN=32 STAGE=2 PROFILE=paper bash tsan/pretrain_sorter.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
SEQ_LEN="${SEQ_LEN:-8}"
args=(--seq_len="$SEQ_LEN" --stage="${STAGE:-1}")
[[ -n "${PROFILE:-}" ]] && args+=(--profile="$PROFILE")
help_requested "$@" && exec python -m tsan.train pretrain_sorter -- --help
exec python -m tsan.train pretrain_sorter "${args[@]}" "$@"
