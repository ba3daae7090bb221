#!/usr/bin/env bash
# Shared set-up, sourced by every wrapper (through scripts/env.sh) and scripts/test.sh.
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
  echo "[setup] installing requirements (torch is pinned in the same install so the CPU build is used)" >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$ROOT/requirements.txt"
  "$VENV/bin/python" "$ROOT/scripts/torchvision_hook.py" >&2
  echo "$WANT" > "$STAMP"
elif [[ ! -f "$VENV/.torchvision_hook_checked" ]]; then  # a venv installed before this check was stamped
  "$VENV/bin/python" "$ROOT/scripts/torchvision_hook.py" >&2
fi
touch "$VENV/.torchvision_hook_checked"
# The repository on the venv's import path: `.venv/bin/python -m resnet3d.train ...` works from any folder.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
[[ -f "$SITE/_brainmri_repo.pth" && "$(cat "$SITE/_brainmri_repo.pth")" == "$ROOT" ]] || echo "$ROOT" > "$SITE/_brainmri_repo.pth"
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
