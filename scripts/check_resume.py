"""Kill-and-resume check for any deep method's train CLI.

Runs the same training twice from scratch: once uninterrupted, once killed with SIGKILL after
``kill_after`` epochs have been logged and then continued with ``--resume``. Passes when both
runs end with bit-identical ``best.pt`` weights, the same best epoch and the same test metrics.

    python scripts/check_resume.py --module=midslice_classifier.train --args="--epochs=4 --max_per_split=8"
    python scripts/check_resume.py --module=baselines.oasis_resblock.train --args="--epochs=4 --max_per_split=8"
    python scripts/check_resume.py --module=tsan.train:train_first_stage --args="--epochs=3 --max_per_split=8"
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common.cli import run as run_cli
from common.runlog import fold_dirs

REPO = Path(__file__).resolve().parents[1]


def _cmd(module: str, args: list[str], runs_dir: Path, run_name: str) -> list[str]:
    """``module`` is ``package.module`` (its ``train`` command) or ``package.module:command``."""
    module, _, command = module.partition(":")
    fold = [] if any(a.startswith("--fold") for a in args) else ["--fold=0"]  # one outer fold unless told
    return [sys.executable, "-m", module, command or "train", *args, *fold, f"--runs_dir={runs_dir}", f"--run_name={run_name}",
            "--publish=False"]


def _folds(runs_dir: Path, run_name: str) -> list[Path]:
    """The ``fold<k>`` folders of the runs named ``run_name`` (:func:`common.runlog.fold_dirs`)."""
    return [f for run_root in sorted(runs_dir.glob(f"*/*/{run_name}")) for f in fold_dirs(run_root)]


def _run_dir(runs_dir: Path, run_name: str) -> Path:
    found = _folds(runs_dir, run_name)
    if len(found) != 1:
        raise RuntimeError(f"expected one run folder named {run_name} under {runs_dir}, found {found}")
    return found[0]


def kill_and_resume(module: str, args: list[str], runs_dir: Path, kill_after: int = 1, timeout: float = 1200,
                    env: dict | None = None) -> dict:
    """Uninterrupted run vs. SIGKILL-ed and resumed run; returns the comparison.

    Args:
        module: ``python -m`` module with a fire ``train`` command, or ``module:command`` for another
            command (``tsan.train:train_first_stage``); the command takes ``--runs_dir``,
            ``--run_name``, ``--publish``, ``--resume`` and ``--fold``.
        args: further ``--key=value`` arguments for both runs (dataset, epochs, sizes...).
        runs_dir: where both run folders go.
        kill_after: epochs that must be logged in ``metrics.csv`` before the kill.

    Returns:
        ``{"identical": bool, "killed_after_epoch": int (-1: before any checkpoint), "best_epoch": (full, resumed),
        "differing_tensors": [...], "metrics_equal": bool}``.

    Raises:
        RuntimeError: a run failed, or the killed run had already finished.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    # the uninterrupted run goes alongside the one that will be killed (the two cores are used by both)
    with tempfile.TemporaryFile("w+") as full_log:
        full = subprocess.Popen(_cmd(module, args, runs_dir, "full"), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=full_log, text=True)
        try:
            killed, done = _kill_after(module, args, runs_dir, env, kill_after, timeout)
            full.wait(timeout=timeout)
        finally:
            full.kill()  # only where it still runs: the other run failed, or it ran out of time
        if full.returncode != 0:
            full_log.seek(0)
            raise RuntimeError(f"uninterrupted run failed:\n{full_log.read()[-3000:]}")
    resumed = subprocess.run(_cmd(module, args, runs_dir, "killed") + ["--resume"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=timeout)
    if resumed.returncode != 0:
        raise RuntimeError(f"resumed run failed:\n{resumed.stderr[-3000:]}")
    full_dir = _run_dir(runs_dir, "full")
    a = torch.load(full_dir / "best.pt", weights_only=True)
    b = torch.load(killed / "best.pt", weights_only=True)
    differing = [k for k, v in a["model_state"].items() if not torch.equal(v, b["model_state"][k])]
    metrics_equal = (json.loads((full_dir / "metrics_test.json").read_text())
                     == json.loads((killed / "metrics_test.json").read_text()))
    return {"identical": not differing and metrics_equal and a["epoch"] == b["epoch"], "killed_after_epoch": int(done),
            "best_epoch": (int(a["epoch"]), int(b["epoch"])), "differing_tensors": differing,
            "metrics_equal": metrics_equal, "resume_log": resumed.stderr}


def _kill_after(module: str, args: list[str], runs_dir: Path, env: dict, kill_after: int, timeout: float) -> tuple[Path, int]:
    """Start the run named ``killed`` and SIGKILL it once ``kill_after`` epochs are logged; its run folder
    and the last epoch in its ``last.pt`` (-1: none yet). Raises RuntimeError if it finished first."""
    proc = subprocess.Popen(_cmd(module, args, runs_dir, "killed"), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    metrics = None
    while time.time() < deadline and proc.poll() is None:
        found = [f / "metrics.csv" for f in _folds(runs_dir, "killed") if (f / "metrics.csv").is_file()]
        if found and found[0].read_text().count("\n") >= kill_after + 1:
            metrics = found[0]
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed = _run_dir(runs_dir, "killed")
    last = killed / "last.pt"  # may be missing: killed after logging epoch 0 but before saving it
    done = torch.load(last, weights_only=True)["epoch"] if last.exists() else -1
    if metrics is None or (killed / "metrics_test.json").exists():
        raise RuntimeError("the run finished before it could be killed; use more epochs")
    return killed, int(done)


def main(module: str, args: str = "", kill_after: int = 1, keep: bool = False) -> None:
    """Print the kill-and-resume comparison for ``module``; exit 1 when the runs differ.

    Args:
        module: e.g. ``resnet3d.train``, ``baselines.oasis_resblock.train``, ``midslice_classifier.train``
            (their ``train`` command), or ``module:command`` such as ``tsan.train:train_first_stage``.
        args: extra arguments for both runs, one string (e.g. ``"--epochs=4 --max_per_split=8"``).
        kill_after: epochs logged before the SIGKILL.
        keep: keep the temporary run folders.
    """
    work = Path(tempfile.mkdtemp(prefix="check_resume_"))
    try:
        out = kill_and_resume(module, shlex.split(args), work / "runs", kill_after)
        out.pop("resume_log")
        print(json.dumps(out, indent=1))
        print(("PASS" if out["identical"] else "FAIL") + f": {module} killed after epoch {out['killed_after_epoch']}")
        if not out["identical"]:
            sys.exit(1)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="scripts/check_resume.py")
