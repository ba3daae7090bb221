"""scripts/validation_curves.py: the plateau rule and the report, on synthetic fold metrics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("validation_curves", ROOT / "scripts" / "validation_curves.py")
vc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vc)


def test_plateau_epoch_rule():
    falling = pd.Series([10.0, 8.0, 6.0, 5.2, 5.1, 5.0])
    assert vc.plateau_epoch(falling, higher_is_better=False, tolerance=0.05) == 3  # 5.2 <= 5.25
    still = pd.Series([10.0, 8.0, 6.0, 5.0])
    assert vc.plateau_epoch(still, higher_is_better=False, tolerance=0.01) == 3
    worse = pd.Series([10.0, 5.0, 9.0])
    assert vc.plateau_epoch(worse, higher_is_better=False, tolerance=0.05) is None
    accuracy = pd.Series([0.4, 0.6, 0.59, 0.6])
    assert vc.plateau_epoch(accuracy, higher_is_better=True, tolerance=0.05) == 1


def _fold(run_root: Path, fold: int, values: list[float], column: str = "mae/val") -> None:
    folder = run_root / f"fold{fold}"
    folder.mkdir(parents=True)
    pd.DataFrame({"epoch": range(len(values)), column: values, "time/steps_s": 2.0, "time/validation_s": 0.5,
                  "time/elapsed_s": 3.0}).to_csv(folder / "metrics.csv", index=False)


def test_report_reads_folds_and_skips_dead_retries(tmp_path):
    root = tmp_path / "runs" / "resnet3d" / "ixi_hh" / "main-cpu"
    _fold(root, 0, [10, 8, 7, 7])
    _fold(root, 1, [12, 9, 8, 7])
    (root / "fold0.dead-seed42").mkdir()  # a dead-output retry's folder is not a fold
    pd.DataFrame({"epoch": [0], "mae/val": [99.0]}).to_csv(root / "fold0.dead-seed42" / "metrics.csv", index=False)
    md = vc.main(runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "curves"))
    text = md.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| resnet3d | ixi_hh"))
    assert "| 2 | 4 |" in row, "2 folds, 4 epochs"
    assert "7.000 (3)" in row and "2.0, –, 0.5" in row
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="main job"):
        vc.main(runs_dir=str(tmp_path), out=str(tmp_path / "x"))
