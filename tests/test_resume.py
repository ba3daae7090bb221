"""Kill-and-resume: a resnet3d run killed with SIGKILL mid-training and resumed with --resume ends
with the same best.pt and the same test metrics as an uninterrupted run with the same seed.

On CPU the kernels used here are deterministic, so the comparison is exact (bit-identical weights).
"""

from __future__ import annotations

import pandas as pd

from scripts.check_resume import kill_and_resume
from tests.conftest import write_study

EPOCHS = 6


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    write_study(tmp_path, 20)
    args = ["--dataset=study", f"--data_root={tmp_path / 'data'}", f"--results_dir={tmp_path / 'results'}",
            f"--cache_dir={tmp_path / 'cache'}", "--profile=cpu", f"--epochs={EPOCHS}", "--batch_size=2",
            "--image_size=24", "--spacing_mm=2", "--widths=4,8,8,8", "--pipeline=monai"]
    out = kill_and_resume("resnet3d.train", args, tmp_path / "runs", kill_after=2, timeout=300,
                          env={"OMP_NUM_THREADS": "1"})
    assert out["killed_after_epoch"] < EPOCHS - 1, "the run was killed before it finished"
    assert f"at epoch {out['killed_after_epoch'] + 1}" in out["resume_log"], "it resumed from last.pt"
    assert out["differing_tensors"] == [] and out["metrics_equal"] and out["identical"], out
    run = tmp_path / "runs" / "resnet3d" / "study" / "killed" / "fold0"
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == list(range(EPOCHS)), "no epoch logged twice"


def test_check_resume_runs_another_command_of_a_module():
    """``module:command`` (TSAN's stages have no ``train`` command) runs that command; a bare module runs ``train``."""
    from pathlib import Path

    from scripts.check_resume import _cmd

    assert _cmd("tsan.train:train_first_stage", ["--epochs=3"], Path("r"), "full")[2:5] == [
        "tsan.train", "train_first_stage", "--epochs=3"]
    assert _cmd("resnet3d.train", [], Path("r"), "full")[2:4] == ["resnet3d.train", "train"]


def test_check_resume_ignores_a_dead_output_retry_folder(tmp_path):
    """TSAN keeps a dead seed's first try as ``fold0.dead-seed42`` beside ``fold0``; the check compares ``fold0``."""
    from scripts.check_resume import _run_dir

    for name in ("fold0", "fold0.dead-seed42"):
        (tmp_path / "tsan_stage1" / "ds000228" / "full" / name).mkdir(parents=True)
    assert _run_dir(tmp_path, "full").name == "fold0"
