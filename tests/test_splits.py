"""Shared splits: subject-level, age-stratified, seeded, and leakage is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.splits import SplitLeakageError, attach_split, check_no_leakage, load_split, make_age_stratified_split


def _subjects(n: int = 100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(n)], "age": rng.uniform(20, 80, n)})


def test_split_proportions_and_age_balance():
    subjects = _subjects(200)
    split = make_age_stratified_split(subjects, seed=1)
    counts = split["split"].value_counts()
    assert counts["train"] == 140 and counts["val"] == 30 and counts["test"] == 30
    ages = subjects.merge(split).groupby("split")["age"].mean()
    assert ages.max() - ages.min() < 3, "age-stratified splits have similar mean ages"


def test_split_is_seeded_and_deterministic():
    subjects = _subjects(60)
    a = make_age_stratified_split(subjects, seed=3)
    b = make_age_stratified_split(subjects.sample(frac=1, random_state=0), seed=3)
    c = make_age_stratified_split(subjects, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_split_refuses_duplicates_and_missing_age():
    subjects = _subjects(10)
    with pytest.raises(ValueError, match="one row per participant"):
        make_age_stratified_split(pd.concat([subjects, subjects.iloc[:1]]))
    subjects.loc[0, "age"] = np.nan
    with pytest.raises(ValueError, match="without age"):
        make_age_stratified_split(subjects)


def test_leaky_split_is_rejected(tmp_path):
    leaky = pd.DataFrame({"participant_id": ["a", "b", "a"], "split": ["train", "val", "test"]})
    with pytest.raises(SplitLeakageError, match="more than one split"):
        check_no_leakage(leaky)
    (tmp_path / "splits").mkdir()
    leaky.to_csv(tmp_path / "splits" / "x.csv", index=False)
    with pytest.raises(SplitLeakageError):
        load_split("x", tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        check_no_leakage(pd.DataFrame({"participant_id": ["a"], "split": ["holdout"]}))


def test_missing_split_file_names_the_script(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_splits.py"):
        load_split("nothing", tmp_path)


def test_all_sessions_of_a_subject_share_a_split():
    manifest = pd.DataFrame({"participant_id": ["a", "a", "b"], "session_id": ["1", "2", ""]})
    split = pd.DataFrame({"participant_id": ["a", "b"], "split": ["test", "train"]})
    out = attach_split(manifest, split)
    assert list(out["split"]) == ["test", "test", "train"]


@pytest.mark.parametrize("dataset", ["ixi_hh", "ds000228"])
def test_committed_splits_are_clean(dataset):
    split = load_split(dataset, "results")
    frac = split["split"].value_counts(normalize=True)
    assert 0.65 < frac["train"] < 0.75 and 0.12 < frac["val"] < 0.18 and 0.12 < frac["test"] < 0.18
