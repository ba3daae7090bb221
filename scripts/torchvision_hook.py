"""Make torchvision's pure-Python parts importable on a CPU-only torch build.

The package registry only carries the CUDA build of torchvision 0.28.0. Its compiled operators
cannot load against the CPU build of torch, so ``import torchvision`` raises
``RuntimeError: operator torchvision::nms does not exist`` while registering fake/autograd
kernels for those operators. Stubbing the two registration modules before the first import
lets the pure-Python models and transforms work (``torchvision.io`` and ``ops.nms`` stay
unavailable; the project uses PIL for images).

This script is run by ``scripts/setup_env.sh``. It tests the import in a fresh interpreter and
writes a one-line ``.pth`` start-up hook into the active virtualenv's site-packages only when
the plain import fails; when torchvision imports cleanly (a matching build), it removes the hook.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

HOOK_NAME = "_brainmri_torchvision_hook.pth"
STUBBED = ("torchvision._meta_registrations", "torchvision._autograd_registrations")
HOOK_LINE = (
    "import sys, types; "
    + "; ".join(f"sys.modules.setdefault({m!r}, types.ModuleType({m!r}))" for m in STUBBED)
    + "\n"
)


def _import_ok(disable_hook: bool) -> tuple[bool, str]:
    code = "import torchvision, torchvision.models, torchvision.transforms.v2"
    # -S skips site-packages hooks entirely, so we add the site dir back by hand when testing
    # the import without the hook.
    if disable_hook:
        site = sysconfig.get_paths()["purelib"]
        code = f"import sys; sys.path.append({site!r}); " + code
        cmd = [sys.executable, "-S", "-c", code]
    else:
        cmd = [sys.executable, "-c", code]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def main() -> int:
    """Install or remove the hook; exit 1 if torchvision cannot be imported either way."""
    hook = Path(sysconfig.get_paths()["purelib"]) / HOOK_NAME
    plain_ok, err = _import_ok(disable_hook=True)
    if plain_ok:
        if hook.exists():
            hook.unlink()
            print("[setup] torchvision imports cleanly; removed the compatibility hook")
        return 0
    if "torchvision::" not in err and "does not exist" not in err:
        print(f"[setup] torchvision import failed for another reason: {err}", file=sys.stderr)
        return 1
    if not hook.exists() or hook.read_text() != HOOK_LINE:
        hook.write_text(HOOK_LINE)
        print(f"[setup] torchvision compiled ops unavailable ({err}); installed start-up hook {hook.name}")
    ok, err = _import_ok(disable_hook=False)
    if not ok:
        print(f"[setup] torchvision still fails with the hook: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
