#!/usr/bin/env bash
# The brain-age web app: set-up included, then Streamlit on localhost; it prints the address.
#   bash scripts/app.sh                          # http://localhost:8501
#   PORT=8600 bash scripts/app.sh                # another port
#   HOST=0.0.0.0 bash scripts/app.sh             # reachable from other machines (only on a network you trust)
# It offers every tested model under runs/ (BRAINAGE_RUNS_DIR) and accepts uploaded checkpoints.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if help_requested "$@"; then
  echo "NAME"; sed -n '2,6p' scripts/app.sh | sed 's/^# \{0,1\}/    /'
  echo "FLAGS"; echo "    none of its own: set PORT, HOST, BRAINAGE_RUNS_DIR, BRAINAGE_CACHE_DIR; other arguments go to streamlit run"
  exit 0
fi
exec python -m streamlit run scripts/app.py --server.address="${HOST:-localhost}" --server.port="${PORT:-8501}" \
  --server.headless=true --server.maxUploadSize=512 --browser.gatherUsageStats=false "$@"
