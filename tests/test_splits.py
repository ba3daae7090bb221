"""Shared folds: subject-level, age-stratified, seeded; leakage is refused; the validation split of
an outer fold is drawn without reading the test fold's ages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.splits import (
    N_FOLDS,
    SplitLeakageError,
    assign_fold,
    attach_split,
    check_no_leakage,
    load_folds,
    make_age_stratified_folds,
)


def _subjects(n: int = 100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(n)], "age": rng.uniform(20, 80, n)})


def test_folds_are_balanced_in_size_and_age():
    subjects = _subjects(203)
    folds = make_age_stratified_folds(subjects, seed=1)
    sizes = folds["fold"].value_counts()
    assert sorted(sizes.index) == list(range(N_FOLDS)) and sizes.max() - sizes.min() <= 1
    ages = subjects.merge(folds).groupby("fold")["age"].mean()
    assert ages.max() - ages.min() < 3, "age-stratified folds have similar mean ages"


def test_folds_are_seeded_and_order_independent():
    subjects = _subjects(60)
    a = make_age_stratified_folds(subjects, seed=3)
    b = make_age_stratified_folds(subjects.sample(frac=1, random_state=0), seed=3)
    c = make_age_stratified_folds(subjects, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_folds_refuse_duplicates_and_missing_age():
    subjects = _subjects(10)
    with pytest.raises(ValueError, match="one row per participant"):
        make_age_stratified_folds(pd.concat([subjects, subjects.iloc[:1]]))
    subjects.loc[0, "age"] = np.nan
    with pytest.raises(ValueError, match="without age"):
        make_age_stratified_folds(subjects)


def test_every_subject_is_tested_once_and_validation_is_about_15_percent():
    subjects = _subjects(161)
    folds = make_age_stratified_folds(subjects)
    tested = []
    for k in range(N_FOLDS):
        split = assign_fold(folds, k, subjects)
        counts = split["split"].value_counts()
        assert set(split.loc[split["split"] == "test", "participant_id"]) == set(folds.loc[folds["fold"] == k, "participant_id"])
        assert 0.13 < counts["val"] / (counts["val"] + counts["train"]) < 0.17
        tested.extend(split.loc[split["split"] == "test", "participant_id"])
    assert sorted(tested) == sorted(subjects["participant_id"])


def test_validation_draw_does_not_read_test_ages():
    """The test fold's ages may be anything (even unknown): train/val of that fold do not change."""
    subjects = _subjects(80)
    folds = make_age_stratified_folds(subjects)
    test_ids = set(folds.loc[folds["fold"] == 2, "participant_id"])
    blinded = subjects.assign(age=np.where(subjects["participant_id"].isin(test_ids), np.nan, subjects["age"]))
    pd.testing.assert_frame_equal(assign_fold(folds, 2, subjects), assign_fold(folds, 2, blinded))
    with pytest.raises(ValueError, match="not one of"):
        assign_fold(folds, N_FOLDS, subjects)


def test_leaky_fold_file_is_rejected(tmp_path):
    leaky = pd.DataFrame({"participant_id": ["a", "b", "a"], "fold": [0, 1, 2]})
    with pytest.raises(SplitLeakageError, match="more than one fold"):
        check_no_leakage(leaky)
    (tmp_path / "splits").mkdir()
    leaky.to_csv(tmp_path / "splits" / "x.csv", index=False)
    with pytest.raises(SplitLeakageError):
        load_folds("x", tmp_path)
    with pytest.raises(ValueError, match="integers"):
        check_no_leakage(pd.DataFrame({"participant_id": ["a"], "fold": [-1]}))
    pd.DataFrame({"participant_id": ["a"], "split": ["train"]}).to_csv(tmp_path / "splits" / "old.csv", index=False)
    with pytest.raises(ValueError, match="expected participant_id,fold"):
        load_folds("old", tmp_path)


def test_missing_fold_file_names_the_script(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_splits.py"):
        load_folds("nothing", tmp_path)


def test_all_sessions_of_a_subject_share_a_split():
    manifest = pd.DataFrame({"participant_id": ["a", "a", "b"], "session_id": ["1", "2", ""]})
    split = pd.DataFrame({"participant_id": ["a", "b"], "split": ["test", "train"]})
    out = attach_split(manifest, split)
    assert list(out["split"]) == ["test", "test", "train"]


@pytest.mark.parametrize("dataset,n", [("ixi_hh", 161), ("ds000228", 140)])
def test_committed_folds_are_clean(dataset, n):
    folds = load_folds(dataset, "results")
    assert len(folds) == n and sorted(folds["fold"].unique()) == list(range(N_FOLDS))
    assert folds["fold"].value_counts().max() - folds["fold"].value_counts().min() <= 1
