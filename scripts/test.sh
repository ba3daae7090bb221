#!/usr/bin/env bash
# The test command: set-up (virtualenv + requirements + torchvision hook), then the pytest suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
python -m pytest "$@"
