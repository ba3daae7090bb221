#!/usr/bin/env bash
# The test command: set-up (virtualenv + requirements + torchvision hook), then the pytest suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
# The web app's browser test drives Debian's chromium; install it where apt-get can (else that test is skipped).
if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
  if command -v apt-get > /dev/null && [[ "$(id -u)" == 0 ]]; then
    echo "[setup] installing Debian's chromium + chromium-driver for the browser test" >&2
    { apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; } \
      > /tmp/brainmri-apt.log 2>&1 || echo "[setup] could not install chromium (see /tmp/brainmri-apt.log); the browser test will be skipped" >&2
  fi
fi
python -m pytest "$@"
