"""The leaderboard is generated from result files only, and regeneration is stable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scripts import make_leaderboard

REPO = Path(__file__).resolve().parents[1]


def _result(results: Path, method: str, dataset: str, errors: np.ndarray, commit: str = "abc1234") -> dict:
    """A pooled cross-validated result file and its out-of-fold predictions (``errors``: years)."""
    ages = np.linspace(20, 80, len(errors))
    pred = ages + errors
    table = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(len(errors))], "session_id": "",
                          "age": ages, "predicted_age": pred, "predicted_age_corrected": pred,
                          "fold": np.arange(len(errors)) % 5})
    (results / "predictions").mkdir(parents=True, exist_ok=True)
    table.to_csv(results / "predictions" / f"{method}__{dataset}.csv", index=False)
    mae = float(np.abs(errors).mean())
    raw = {"mae": mae, "rmse": mae + 1, "pearson_r": 0.8, "r2": 0.6, "spearman_gap_age": -0.4, "mean_gap": 0.1,
           "n": len(errors), "mae_ci95": [mae - 1, mae + 1], "mae_by_age": {"20-30": {"mae": mae, "n": 7}}}
    doc = {"method": method, "method_label": method.upper(), "dataset": dataset, "task": "brain_age",
           "profile": "cpu", "n_folds": 5, "n_subjects": {"out_of_fold": len(errors)},
           "metrics": {"raw": raw, "corrected": {**raw, "mae": mae + 0.5}, "mean_predictor_mae": 14.0,
                       "mae_ratio_to_mean_predictor": mae / 14.0, "fold_mae_mean": mae, "fold_mae_sd": 0.3,
                       "bias_correction": {"formula": "cole"},
                       "correction_on_validation": {"raw_mae": mae, "corrected_mae_leave_one_out": mae + 1}},
           "source_reported": {"mae": 9.13, "pearson_r": 0.734, "dataset": "IXI"}, "n_parameters": 33_000_000,
           "parameters": {"pipeline": "mni_brain"}, "predictions": f"predictions/{method}__{dataset}.csv",
           "wall_time_s": 300.0, "device": "cpu", "notes": ["cpu profile", f"own note of {method}"], "commit": commit}
    (results / f"{method}__{dataset}.json").write_text(json.dumps(doc))
    return doc


def test_rows_are_ranked_by_paired_differences_and_regeneration_is_stable(tmp_path):
    results = tmp_path / "results"
    rng = np.random.default_rng(0)
    base = rng.normal(0, 3, 60)
    _result(results, "a", "ixi_hh", base)
    _result(results, "b", "ixi_hh", base + np.sign(base) * 3 + rng.normal(0, 0.5, 60))  # clearly worse on the same subjects
    _result(results, "c", "ixi_hh", base + rng.normal(0, 0.3, 60))  # indistinguishable from a
    _result(results, "a", "ds000228", rng.normal(0, 1, 60))
    old = {"method": "d", "dataset": "ixi_hh", "task": "brain_age", "n_subjects": {"train": 70, "val": 15, "test": 15}}
    (results / "d__ixi_hh.json").write_text(json.dumps(old))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- leaderboard:start -->\nstale text\n<!-- leaderboard:end -->\noutro\n")
    make_leaderboard.main(str(results), str(readme))
    board = (results / "LEADERBOARD.md").read_text()
    ixi = board[board.index("### Brain age on ixi_hh"):]
    table = ixi[:ixi.index("MAE by age band")].splitlines()
    rows = {line.split(" | ")[1].strip("*"): line for line in table if line.startswith("| ") and line[2].isdigit()}
    assert rows["A"].startswith("| 1 | **A** |") and rows["C"].startswith("| 1 | **C** |"), "a and c are not separable"
    assert rows["B"].startswith("| 3 | B |"), "b is worse than both, with CIs that exclude 0"
    assert "60 (5 folds)" in rows["A"] and "abc1234" in rows["A"]
    pairs = ixi[ixi.index("Paired comparisons"):]
    b_vs = [line for line in pairs.splitlines() if line.startswith("| ") and " B |" in line]
    assert len(b_vs) == 2 and all("]*" in line for line in b_vs), b_vs
    assert board.index("### Brain age on ds000228") < board.index("### Brain age on ixi_hh")
    assert board.count("own note of a") == 1, "a note is said once per method (A has two datasets)"
    assert "- every row on ixi_hh: cpu profile" in board and board.count("cpu profile") == 2, \
        "a note every row of a dataset carries is said once for the dataset (and once for A, alone on ds000228)"
    assert "Not shown (single-split results of the earlier protocol): d__ixi_hh.json" in board
    first_readme = readme.read_text()
    assert "stale text" not in first_readme and first_readme.startswith("intro\n") and first_readme.endswith("outro\n")
    mtime = (results / "LEADERBOARD.md").stat().st_mtime_ns
    make_leaderboard.main(str(results), str(readme))
    assert (results / "LEADERBOARD.md").read_text() == board
    assert readme.read_text() == first_readme
    assert (results / "LEADERBOARD.md").stat().st_mtime_ns == mtime, "unchanged inputs do not rewrite the file"


def test_each_row_names_the_cpu_kind_that_made_it(tmp_path):
    results = tmp_path / "results"
    rng = np.random.default_rng(1)
    kinds = {"zen3": ("AMD EPYC", {"avx2": True, "avx512f": False, "avx512_bf16": False}),
             "zen4": ("AMD EPYC", {"avx2": True, "avx512f": True, "avx512_bf16": True}),
             "xeon": ("Intel(R) Xeon(R) Processor", {"avx2": True, "avx512f": True, "amx_bf16": True})}
    for method, (model, flags) in kinds.items():
        doc = _result(results, method, "ixi_hh", rng.normal(0, 3, 30))
        doc["environment"] = {"cpu": {"cpu_model": model, "cpu_flags": flags, "cpu_capability": "AVX2"}}
        (results / f"{method}__ixi_hh.json").write_text(json.dumps(doc))
    _result(results, "old", "ixi_hh", rng.normal(0, 3, 30))  # an older file that records no CPU
    make_leaderboard.main(str(results), str(tmp_path / "README.md"))
    lines = (results / "LEADERBOARD.md").read_text().splitlines()
    assert any("| commit (CPU) |" in line for line in lines)
    row = {m: next(line for line in lines if f"| {m.upper()} |" in line or f"**{m.upper()}**" in line)
           for m in ("zen3", "zen4", "xeon", "old")}
    assert row["zen3"].endswith("| abc1234 (EPYC, AVX2) |")
    assert row["zen4"].endswith("| abc1234 (EPYC, AVX-512) |")
    assert row["xeon"].endswith("| abc1234 (Xeon, AMX) |")
    assert row["old"].endswith("| abc1234 |")


def test_rows_from_uncommitted_code_are_refused(tmp_path):
    results = tmp_path / "results"
    _result(results, "a", "ixi_hh", np.ones(10), commit="abc1234-dirty")
    with pytest.raises(ValueError, match="uncommitted"):
        make_leaderboard.main(str(results), str(tmp_path / "README.md"), method_readmes=False)
    make_leaderboard.main(str(results), str(tmp_path / "README.md"), method_readmes=False, allow_dirty=True)
    assert "abc1234-" in (results / "LEADERBOARD.md").read_text()


def test_committed_leaderboard_matches_committed_results(tmp_path):
    """The committed LEADERBOARD.md is exactly what the committed result files generate."""
    shutil.copytree(REPO / "results", tmp_path / "results")
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    make_leaderboard.main(str(tmp_path / "results"), str(tmp_path / "README.md"))
    assert (tmp_path / "results" / "LEADERBOARD.md").read_text() == (REPO / "results" / "LEADERBOARD.md").read_text()
    assert (tmp_path / "README.md").read_text() == (REPO / "README.md").read_text()


def _classifier(method: str, bacc: float, **extra) -> dict:
    metrics = {"accuracy": bacc, "accuracy_ci95": [bacc - 0.02, bacc + 0.02], "balanced_accuracy": bacc,
               "balanced_accuracy_ci95": [bacc - 0.02, bacc + 0.02], "macro_f1": bacc, "majority_class_rate": 0.5,
               "per_class_recall": {"Mild": bacc, "Non": bacc}, "confusion_matrix": [[5, 5], [5, 5]]}
    return {"method": method, "method_label": method.upper(), "dataset": "alzheimer4", "task": "classification",
            "subject_split": False, "profile": "cpu", "n_subjects": {"train": 10, "val": 2, "test": 20, "unit": "images"},
            "wall_time_s": 60.0, "commit": "abc1234", "_file": f"{method}__alzheimer4.json",
            "metrics": {**metrics, **extra}}


def test_transfer_rows_at_chance_leave_the_table_and_the_leaky_row_stands_apart(tmp_path):
    docs = [_classifier("alz_altzcnn", 0.33), _classifier("alz_resnet18", 0.55), _classifier("alz_resnet50", 0.30),
            _classifier("alz_altzcnn_leaky_emulation", 0.90, test_images_with_original_in_train=0.8,
                        original_in_train={"accuracy": 0.95}, original_not_in_train={"accuracy": 0.6})]
    board = make_leaderboard.render(docs, tmp_path)
    ranked = board[:board.index("Leaky protocol")]
    assert "| ALZ_RESNET18 |" in ranked or "**ALZ_RESNET18**" in ranked
    assert "ALZ_ALTZCNN |" in ranked, "the source's own model keeps its honest row, whatever it scores"
    assert "ALZ_RESNET50" not in ranked and "ALZ_ALTZCNN_LEAKY" not in ranked
    leaky = board[board.index("Leaky protocol"):]
    assert "not a generalisation result" in leaky and "| ALZ_ALTZCNN_LEAKY_EMULATION | cpu | 20 | 0.900" in leaky
    assert "0.800 | 0.950 | 0.600" in leaky
    assert "not trained enough" in board and "ALZ_RESNET50 on alzheimer4, cpu: balanced accuracy 0.300" in board


def test_classifiers_without_subject_ids_are_paired_by_image(tmp_path):
    """alzheimer4 has no subject IDs: its rows' predictions are keyed by ``image``, and the McNemar
    table pairs two classifiers on the same test images."""
    images = [f"test/Non/{i}.jpg" for i in range(40)]
    truth = np.array(["Non", "Mild"] * 20)
    docs = []
    for method, right in (("alz_resnet18", np.arange(40) < 36), ("alz_altzcnn", np.arange(40) < 20)):
        pred = np.where(right, truth, np.where(truth == "Non", "Mild", "Non"))
        (tmp_path / "predictions").mkdir(exist_ok=True)
        table = pd.DataFrame({"image": images, "label": truth, "pred": pred})
        table.to_csv(tmp_path / "predictions" / f"{method}.csv", index=False)
        docs.append(_classifier(method, float(right.mean())) | {"predictions": f"predictions/{method}.csv"})
    board = make_leaderboard.render(docs, tmp_path)
    pairs = board[board.index("Paired comparisons on alzheimer4"):]
    row = next(line for line in pairs.splitlines() if line.startswith("| ALZ_RESNET18") or line.startswith("| **ALZ_RESNET18"))
    assert "| 16 / 0 |" in row and row.endswith("| 40 |"), "resnet18 alone right on 16 images, the other never alone"


def test_compare_rerun_pairs_a_changed_row_with_its_committed_version(tmp_path):
    """scripts/compare_rerun.py: a rerun row whose errors grew by 1 y on every subject gives ΔMAE
    +1 with a CI of exactly [1, 1]; an untouched row is listed as unchanged; a row the revision
    lacks as new; a bad revision is an error naming it."""
    import subprocess

    from scripts import compare_rerun

    results = tmp_path / "results"
    errors = np.tile([2.0, -3.0, 1.0, -1.5], 5)
    _result(results, "alpha", "ixi_hh", errors)
    _result(results, "beta", "ixi_hh", errors * 2)
    _result(results, "delta", "ixi_hh", errors)
    (results / "predictions" / "delta__ixi_hh.csv").unlink()  # committed without its predictions

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "rows")
    _result(results, "alpha", "ixi_hh", errors + np.sign(errors), commit="def5678")  # |error| + 1 everywhere
    _result(results, "gamma", "ixi_hh", errors)
    _result(results, "delta", "ixi_hh", errors)
    text = compare_rerun.main(rev="HEAD", results_dir=str(results))
    assert "Not paired, the HEAD row kept no per-subject predictions: delta on ixi_hh." in text
    row = next(line for line in text.splitlines() if line.startswith("| alpha"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:6] == ["20", "abc1234 → def5678", "1.88 → 2.88", "+1.00 [1.00, 1.00]"]
    assert float(cells[7]) == pytest.approx(1.0)  # every prediction moved by 1 y
    assert "Unchanged: beta on ixi_hh." in text and "gamma on ixi_hh" in text.split("New since HEAD")[1]
    with pytest.raises(ValueError, match="no-such-rev"):
        compare_rerun.main(rev="no-such-rev", results_dir=str(results))


def test_correction_label_says_when_folds_used_different_formulas():
    """A Cole fit with slope ~0 falls back to the identity in that fold only; the row's label must not name
    fold 0's formula for all five (an OASIS row said "identity" while three folds inverted Cole's fit)."""
    from scripts.make_leaderboard import correction_label

    folds = [{"formula": f} for f in ("identity", "cole", "identity", "cole", "cole")]
    assert correction_label({"formula": "identity", "per_fold": folds}) == "cole in 3 of 5 folds, identity in 2"
    assert correction_label({"formula": "gap_on_age", "per_fold": [{"formula": "gap_on_age"}] * 5}) == "gap_on_age"
    assert correction_label({"formula": "cole"}) == "cole" and correction_label({}) == "?"
