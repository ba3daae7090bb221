"""The leaderboard is generated from result files only, and regeneration is stable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from scripts import make_leaderboard

REPO = Path(__file__).resolve().parents[1]


def _result(method: str, dataset: str, mae: float) -> dict:
    raw = {"mae": mae, "rmse": mae + 1, "pearson_r": 0.8, "r2": 0.6, "spearman_gap_age": -0.4, "mean_gap": 0.1,
           "n": 20, "mae_ci95": [mae - 1, mae + 1]}
    return {"method": method, "method_label": method.upper(), "dataset": dataset, "task": "brain_age",
            "profile": "cpu", "n_subjects": {"train": 70, "val": 15, "test": 15},
            "metrics": {"raw": raw, "corrected": {**raw, "mae": mae + 0.5}, "mean_predictor_mae": 14.0,
                        "mae_ratio_to_mean_predictor": mae / 14.0},
            "source_reported": {"mae": 9.13, "pearson_r": 0.734, "dataset": "IXI"}, "n_parameters": 33_000_000,
            "parameters": {"pipeline": "mni_brain"},
            "wall_time_s": 300.0, "device": "cpu", "notes": ["cpu profile"]}


def test_regeneration_is_stable_and_fills_readme(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for method, dataset, mae in [("b", "ixi_hh", 8.0), ("a", "ds000228", 3.0), ("a", "ixi_hh", 7.5)]:
        (results / f"{method}__{dataset}.json").write_text(json.dumps(_result(method, dataset, mae)))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- leaderboard:start -->\nold\n<!-- leaderboard:end -->\noutro\n")
    make_leaderboard.main(str(results), str(readme))
    board = (results / "LEADERBOARD.md").read_text()
    first_readme = readme.read_text()
    assert "| ixi_hh | A | cpu | shared: brain, N4, affine to MNI | 70/15/15 | 7.50 [6.50, 8.50]" in board
    assert board.index("| ds000228 |") < board.index("| ixi_hh | A |") < board.index("| ixi_hh | B |")
    assert "old" not in first_readme and first_readme.startswith("intro\n") and first_readme.endswith("outro\n")
    mtime = (results / "LEADERBOARD.md").stat().st_mtime_ns
    make_leaderboard.main(str(results), str(readme))
    assert (results / "LEADERBOARD.md").read_text() == board
    assert readme.read_text() == first_readme
    assert (results / "LEADERBOARD.md").stat().st_mtime_ns == mtime, "unchanged inputs do not rewrite the file"


def test_committed_leaderboard_matches_committed_results(tmp_path):
    """The committed LEADERBOARD.md is exactly what the committed result files generate."""
    shutil.copytree(REPO / "results", tmp_path / "results")
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    make_leaderboard.main(str(tmp_path / "results"), str(tmp_path / "README.md"))
    assert (tmp_path / "results" / "LEADERBOARD.md").read_text() == (REPO / "results" / "LEADERBOARD.md").read_text()
    assert (tmp_path / "README.md").read_text() == (REPO / "README.md").read_text()
