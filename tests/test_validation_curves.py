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


def test_entries_of_runs_on_other_machines_are_kept(tmp_path):
    """A report made where only some runs exist keeps the other entries of <out>.json (a main job
    spread over machines) and replaces the entries of the runs it finds."""
    first = tmp_path / "a" / "runs" / "resnet3d" / "ixi_hh" / "main-cpu"
    _fold(first, 0, [10, 8, 7, 7])
    out = str(tmp_path / "curves")
    vc.main(runs_dir=str(tmp_path / "a" / "runs"), out=out)
    second = tmp_path / "b" / "runs"
    _fold(second / "midslice_resnet18" / "ds000228" / "main-cpu", 0, [0.4, 0.6, 0.6], column="acc/val")
    _fold(second / "resnet3d" / "ixi_hh" / "main-cpu", 0, [9, 6, 5])
    text = vc.main(runs_dir=str(second), out=out).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| resnet3d") or line.startswith("| midslice")]
    assert len(rows) == 2 and "| 1 | 3 |" in rows[1] and "5.000 (2)" in rows[1], "the new resnet3d run replaced the old"
    assert "0.600 (1)" in rows[0]
    (tmp_path / "empty").mkdir()
    assert vc.main(runs_dir=str(tmp_path / "empty"), out=out).read_text() == text.replace(str(second), str(tmp_path / "empty"))
