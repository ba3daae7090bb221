"""The cross-validation protocol (common/cv.py): every labelled subject predicted once out-of-fold,
finished folds reused by a resumed job, stale folds retrained, and no test label read before the
final evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import common.brain_age
import common.cv
import common.runlog
from common.splits import load_folds
from resnet3d.train import train
from tests.conftest import write_study

TINY = dict(dataset="study", profile="cpu", epochs=2, batch_size=2, image_size=16, spacing_mm=3.0, widths="4,4,8,8",
            pipeline="monai")


def _dirs(tmp_path: Path) -> dict:
    return dict(data_root=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
                cache_dir=str(tmp_path / "cache"))


@pytest.fixture
def commit(monkeypatch):
    """A fixed, clean commit id for every module that records one (the test tree may be dirty)."""
    state = {"id": "c0ffee1"}
    for module in (common.cv, common.brain_age, common.runlog):
        monkeypatch.setattr(module, "git_commit", lambda: state["id"])
    return state


def test_every_subject_is_predicted_once_and_finished_folds_are_reused(tmp_path, commit, caplog):
    write_study(tmp_path, 20)
    run_root = Path(train(**TINY, **_dirs(tmp_path), run_name="cv", resume=True))
    assert run_root == tmp_path / "runs" / "resnet3d" / "study" / "cv"
    folds = load_folds("study", tmp_path / "results").set_index("participant_id")["fold"]
    for k in range(5):  # fold k's model tested exactly fold k's subjects
        tested = pd.read_csv(run_root / f"fold{k}" / "predictions_test.csv")["participant_id"]
        assert set(tested) == set(folds[folds == k].index)
    doc = json.loads((tmp_path / "results" / "resnet3d__study.json").read_text())
    oof = pd.read_csv(tmp_path / "results" / doc["predictions"])
    assert len(oof) == 20 and oof["participant_id"].is_unique and doc["n_subjects"]["out_of_fold"] == 20
    assert (oof.set_index("participant_id")["fold"] == folds.loc[oof["participant_id"]]).all()
    assert doc["n_folds"] == 5 and len(doc["metrics"]["fold_mae"]) == 5 and doc["commit"] == "c0ffee1"
    assert doc["metrics"]["raw"]["mae"] == pytest.approx(np.abs(oof["predicted_age"] - oof["age"]).mean(), abs=1e-3)
    lo, hi = doc["metrics"]["raw"]["mae_ci95"]
    assert lo < doc["metrics"]["raw"]["mae"] < hi

    stamps = {k: (run_root / f"fold{k}" / "best.pt").stat().st_mtime_ns for k in range(5)}
    caplog.clear()
    train(**TINY, **_dirs(tmp_path), run_name="cv", resume=True)
    assert caplog.text.count("reusing the finished run") == 5
    assert stamps == {k: (run_root / f"fold{k}" / "best.pt").stat().st_mtime_ns for k in range(5)}, "nothing retrained"

    commit["id"] = "beef002"  # other code made fold 0 (folds 1-4 relabelled as made by it, to train one fold only)
    for k in range(1, 5):
        for doc_path in (run_root / f"fold{k}" / "fold_results").glob("*.json"):
            doc_path.write_text(json.dumps({**json.loads(doc_path.read_text()), "commit": "beef002"}))
    train(**TINY, **_dirs(tmp_path), run_name="cv", resume=True)
    assert len(list(run_root.glob("fold0.stale-*"))) == 1, "the stale fold is moved aside and retrained"
    assert not list(run_root.glob("fold1.stale-*"))
    assert json.loads((tmp_path / "results" / "resnet3d__study.json").read_text())["commit"] == "beef002"


def test_test_labels_are_not_read_before_the_final_evaluation(tmp_path, commit):
    """With the test fold's ages removed, training and checkpoint choice give identical weights."""
    study = write_study(tmp_path, 20)
    a = Path(train(**TINY, **_dirs(tmp_path), run_name="a", fold=0, publish=False))
    folds = load_folds("study", tmp_path / "results")
    test_ids = set(folds.loc[folds["fold"] == 0, "participant_id"])
    table = pd.read_csv(study / "participants.tsv", sep="\t")
    table.loc[table["participant_id"].isin(test_ids), "age"] = np.nan
    table.to_csv(study / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    with pytest.raises(ValueError, match="test rows"):  # trains, then has no labelled test subject to report
        train(**TINY, **_dirs(tmp_path), run_name="b", fold=0, publish=False)
    b = a.parent.parent / "b" / "fold0"
    wa, wb = (torch.load(r / "best.pt", weights_only=True) for r in (a, b))
    assert wa["epoch"] == wb["epoch"]
    for name, tensor in wa["model_state"].items():
        assert torch.equal(tensor, wb["model_state"][name]), name
    curves = [pd.read_csv(r / "metrics.csv").drop(columns=["time_s"], errors="ignore") for r in (a, b)]
    columns = [k for k in curves[0].columns if "loss" in k or "mae" in k]
    assert {"loss/train", "loss/val"} <= set(columns), columns
    pd.testing.assert_frame_equal(*[c[columns] for c in curves])  # the same curves, so the same checkpoint choice


def test_permuted_ages_row_permutes_training_and_validation_ages_only(tmp_path, commit):
    """The leakage check: its own method, training ages permuted among the training subjects and
    validation ages among the validation subjects (seeded, so the same twice), test ages untouched."""
    write_study(tmp_path, 20)
    run = Path(train(**TINY, **_dirs(tmp_path), run_name="p", fold=0, permuted_ages=True))
    assert run == tmp_path / "runs" / "resnet3d_permuted_ages" / "study" / "p" / "fold0"
    used = pd.read_csv(run / "training_ages.csv")
    truth = pd.read_csv(tmp_path / "data" / "study" / "participants.tsv", sep="\t").set_index("participant_id")["age"]
    assert (used["age_true"].to_numpy() == truth.loc[used["participant_id"]].to_numpy()).all()
    assert set(used["split"]) == {"train", "val"}
    for _, rows in used.groupby("split"):  # a permutation within each split
        assert sorted(rows["age_used"]) == sorted(rows["age_true"]) and (rows["age_used"] != rows["age_true"]).any()
    train_rows = used[used["split"] == "train"]
    assert abs(np.corrcoef(train_rows["age_true"], train_rows["age_used"])[0, 1]) <= 0.05, "no age left in the labels"
    validated = pd.read_csv(run / "predictions_val.csv").set_index("participant_id")["age"]
    val_used = used[used["split"] == "val"].set_index("participant_id")["age_used"]
    assert (validated.loc[val_used.index].to_numpy() == val_used.to_numpy()).all(), "epoch choice saw permuted ages"
    tested = pd.read_csv(run / "predictions_test.csv")  # the report uses the true test ages
    assert (tested["age"].to_numpy() == truth.loc[tested["participant_id"]].to_numpy()).all()
    doc = json.loads((run / "fold_results" / "resnet3d_permuted_ages__study.json").read_text())
    assert doc["method"] == "resnet3d_permuted_ages" and any("leakage check" in n for n in doc["notes"])
    assert json.loads((run / "config.json").read_text())["permute_train_ages"] is True
    again = Path(train(**TINY, **_dirs(tmp_path), run_name="q", fold=0, permuted_ages=True, publish=False))
    pd.testing.assert_frame_equal(used, pd.read_csv(again / "training_ages.csv"))


def test_decorrelated_permutation_leaves_no_chance_correlation_with_age():
    """A plain permutation of 110 ages correlates with them by chance (an IXI-HH fold: +0.17, and its
    permuted-age model then predicted test ages with r 0.69); the leakage check's does not."""
    from common.brain_age import decorrelated_permutation

    age = np.random.default_rng(0).uniform(20, 86, 110)
    plain = [abs(np.corrcoef(age, np.random.default_rng(s).permutation(age))[0, 1]) for s in range(200)]
    assert max(plain) > 0.15, "plain permutations do leave correlations of this size"
    for seed in range(20):
        drawn = decorrelated_permutation(age, np.random.default_rng(seed))
        assert sorted(drawn) == sorted(age) and abs(np.corrcoef(age, drawn)[0, 1]) <= 0.05
    three = decorrelated_permutation(np.array([10.0, 20.0, 30.0]), np.random.default_rng(0))
    assert sorted(three) == [10.0, 20.0, 30.0] and abs(np.corrcoef([10, 20, 30], three)[0, 1]) <= 0.5 + 1e-9
