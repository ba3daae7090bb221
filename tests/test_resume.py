"""Kill-and-resume: a resnet3d run killed with SIGKILL mid-training and resumed with --resume ends
with the same best.pt and the same test metrics as an uninterrupted run with the same seed.

On CPU the kernels used here are deterministic, so the comparison is exact (bit-identical weights).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from common.data.sources import load_bids
from common.splits import make_age_stratified_split
from tests.conftest import write_volume

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6


def _study(tmp_path: Path) -> None:
    root = tmp_path / "data" / "study"
    lines = ["participant_id\tage"]
    for i in range(20):
        lines.append(f"sub-{i:02d}\t{20 + 3 * i}")
        write_volume(root / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz", shape=(28, 28, 28), seed=i)
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    manifest, _ = load_bids(root)
    (tmp_path / "results" / "splits").mkdir(parents=True)
    make_age_stratified_split(manifest[["participant_id", "age"]], seed=0).to_csv(
        tmp_path / "results" / "splits" / "study.csv", index=False)


def _cmd(tmp_path: Path, run_name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "resnet3d.train", "train", "--dataset=study", f"--data_root={tmp_path / 'data'}",
            f"--results_dir={tmp_path / 'results'}", f"--runs_dir={tmp_path / 'runs'}",
            f"--cache_dir={tmp_path / 'cache'}", "--profile=cpu", f"--epochs={EPOCHS}", "--batch_size=2",
            "--image_size=24", "--spacing_mm=2", "--widths=4,8,8,8", f"--run_name={run_name}", "--publish=False",
            *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    _study(tmp_path)
    subprocess.run(_cmd(tmp_path, "full"), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)

    run = tmp_path / "runs" / "resnet3d" / "study" / "killed"
    proc = subprocess.Popen(_cmd(tmp_path, "killed"), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        metrics = run / "metrics.csv"
        if metrics.exists() and metrics.read_text().count("\n") >= 3:  # header + epochs 0 and 1 logged
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before_kill = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert done_before_kill < EPOCHS - 1, "the run was killed before it finished"
    assert not (run / "metrics_test.json").exists()

    resumed = subprocess.run(_cmd(tmp_path, "killed", "--resume"), cwd=REPO, env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {run / 'last.pt'} at epoch {done_before_kill + 1}" in resumed.stderr

    full = tmp_path / "runs" / "resnet3d" / "study" / "full"
    a = torch.load(full / "best.pt", weights_only=True)
    b = torch.load(run / "best.pt", weights_only=True)
    assert a["epoch"] == b["epoch"]
    for name, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][name]), name
    assert json.loads((full / "metrics_test.json").read_text()) == json.loads((run / "metrics_test.json").read_text())
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == list(range(EPOCHS)), "no epoch logged twice"
