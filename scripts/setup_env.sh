#!/usr/bin/env bash
# Shared set-up, sourced by scripts/reproduce.sh and scripts/test.sh.
# Creates .venv (if missing), installs requirements.txt, and applies the torchvision
# compatibility hook only where torchvision's compiled ops cannot load (see README.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
# Re-install only when requirements.txt changed since the last successful install.
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "[setup] installing requirements (torch is pinned in the same install so the CPU build is used)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$ROOT/requirements.txt"
  echo "$WANT" > "$STAMP"
fi
"$VENV/bin/python" "$ROOT/scripts/torchvision_hook.py"
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
