"""The shared subject-level cross-validation folds (DESIGN.md "Evaluation protocol").

``results/splits/<dataset>.csv`` holds ``participant_id,fold`` with fold in 0..K-1 (K = 5). It is
built once by ``scripts/make_splits.py`` and read by every method through :func:`load_folds`, which
refuses a file in which a participant appears twice. For outer fold ``k`` (:func:`load_split`):

- ``test``: the participants of fold ``k``;
- ``val``: an age-stratified 15% of the other folds (:data:`VAL_RULE`), the only data that early
  stopping, checkpoint choice, LR schedules and bias-correction fits see;
- ``train``: the rest.

Every labelled participant is thus in exactly one test fold, and every method sees the same
train / validation / test participants for the same ``k``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
#: Number of outer folds.
N_FOLDS = 5
FOLD_METHOD = (f"subject-level, age-stratified: participants sorted by (age, participant_id), cut into blocks of "
               f"{N_FOLDS}, each block a seeded random permutation of the fold labels 0..{N_FOLDS - 1}")
#: Inner validation: the fraction of the participants outside the test fold that validates
#: (at least 3: the bias correction's minimum).
VAL_FRACTION = 0.15
VAL_RULE = (f"validation = n_val = max(3, round({VAL_FRACTION} x n)) of the n participants outside the test fold, "
            "one drawn at random (numpy default_rng(1000 + fold)) from each of n_val consecutive age-sorted strata")


class SplitLeakageError(ValueError):
    """A participant occurs in more than one fold or split (or twice in a split file)."""


def _block_labels(n: int, template: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels of ``n`` age-sorted rows: consecutive blocks of ``len(template)``, each a permutation
    of ``template`` (a last partial block takes the first labels of its permutation)."""
    labels = []
    for start in range(0, n, len(template)):
        labels.extend(rng.permutation(template)[:min(len(template), n - start)])
    return np.asarray(labels)


def _age_sorted(subjects: pd.DataFrame) -> pd.DataFrame:
    if subjects["participant_id"].duplicated().any():
        raise ValueError("folds need one row per participant")
    if subjects["age"].isna().any():
        raise ValueError("participants without age cannot be assigned to folds; drop them first")
    return subjects.sort_values(["age", "participant_id"]).reset_index(drop=True)


def make_age_stratified_folds(subjects: pd.DataFrame, seed: int = 42, n_folds: int = N_FOLDS) -> pd.DataFrame:
    """Assign each participant to one of ``n_folds`` folds, stratified by age (:data:`FOLD_METHOD`).

    Args:
        subjects: one row per participant with ``participant_id`` and float ``age`` (years).
        seed: random seed.
        n_folds: number of folds (K).

    Returns:
        DataFrame ``participant_id, fold`` (int) sorted by participant_id.

    Raises:
        ValueError: duplicated participant IDs or missing ages.
    """
    ordered = _age_sorted(subjects)
    ordered["fold"] = _block_labels(len(ordered), np.arange(n_folds), np.random.default_rng(seed))
    return ordered[["participant_id", "fold"]].sort_values("participant_id").reset_index(drop=True)


def check_no_leakage(folds: pd.DataFrame) -> None:
    """Raise :class:`SplitLeakageError` if a participant_id is listed more than once.

    Raises:
        SplitLeakageError: a participant in two folds, or listed twice.
        ValueError: fold labels that are not integers 0..K-1.
    """
    if not pd.api.types.is_integer_dtype(folds["fold"]) or (folds["fold"] < 0).any():
        raise ValueError(f"fold labels must be integers 0..{N_FOLDS - 1}, got {sorted(set(folds['fold']))[:10]}")
    counts = folds.groupby("participant_id")["fold"].nunique()
    leaked = sorted(counts[counts > 1].index)
    if leaked:
        raise SplitLeakageError(f"{len(leaked)} participants are in more than one fold: {leaked[:10]}")
    dup = folds["participant_id"].duplicated()
    if dup.any():
        raise SplitLeakageError(f"participants listed twice: {sorted(folds.loc[dup, 'participant_id'])[:10]}")


def split_path(dataset: str, results_dir: str | Path = "results") -> Path:
    return Path(results_dir) / "splits" / f"{dataset}.csv"


def load_folds(dataset: str, results_dir: str | Path = "results") -> pd.DataFrame:
    """Load and check the committed fold file of ``dataset``: ``participant_id`` (str), ``fold`` (int).

    Raises:
        FileNotFoundError: no fold file (run ``python scripts/make_splits.py``).
        SplitLeakageError: a participant is in two folds.
        ValueError: the file is not a ``participant_id,fold`` table (e.g. a split file of the
            single-split protocol).
    """
    path = split_path(dataset, results_dir)
    if not path.is_file():
        raise FileNotFoundError(f"fold file {path} not found; run `python scripts/make_splits.py --datasets={dataset}`")
    folds = pd.read_csv(path, dtype={"participant_id": str}, comment="#")
    if list(folds.columns) != ["participant_id", "fold"]:
        raise ValueError(f"{path} has columns {list(folds.columns)}, expected participant_id,fold; rebuild it with "
                         f"`python scripts/make_splits.py --datasets={dataset} --force`")
    check_no_leakage(folds)
    return folds


def assign_fold(folds: pd.DataFrame, fold: int, ages: pd.DataFrame) -> pd.DataFrame:
    """Train / val / test of outer fold ``fold`` (:data:`VAL_RULE`).

    Args:
        folds: ``participant_id, fold`` (:func:`load_folds`).
        fold: the outer fold, 0..K-1: its participants are the test split.
        ages: ``participant_id, age`` of (at least) every participant outside the test fold; only
            these ages are read, so the test participants' ages cannot inform anything.

    Returns:
        DataFrame ``participant_id, split`` sorted by participant_id.

    Raises:
        ValueError: ``fold`` not in the file, or a non-test participant without age.
    """
    n_folds = int(folds["fold"].max()) + 1
    if not 0 <= int(fold) < n_folds:
        raise ValueError(f"fold {fold} is not one of 0..{n_folds - 1}")
    test = folds["fold"] == int(fold)
    rest = folds.loc[~test, ["participant_id"]].merge(ages[["participant_id", "age"]].drop_duplicates("participant_id"),
                                                       how="left")
    ordered = _age_sorted(rest)
    n_val = max(3, round(VAL_FRACTION * len(ordered)))
    if len(ordered) < n_val + 2:
        raise ValueError(f"fold {fold} leaves {len(ordered)} participants outside its test fold: too few to train and validate")
    rng = np.random.default_rng(1000 + int(fold))
    chosen = [int(rng.choice(stratum)) for stratum in np.array_split(np.arange(len(ordered)), n_val)]
    ordered["split"] = "train"
    ordered.loc[chosen, "split"] = "val"
    out = pd.concat([ordered[["participant_id", "split"]],
                     pd.DataFrame({"participant_id": folds.loc[test, "participant_id"], "split": "test"})])
    return out.sort_values("participant_id").reset_index(drop=True)


def load_split(dataset: str, ages: pd.DataFrame, fold: int = 0, results_dir: str | Path = "results") -> pd.DataFrame:
    """``participant_id, split`` of outer fold ``fold`` of ``dataset`` (:func:`assign_fold`).

    Args:
        ages: ``participant_id, age`` (e.g. the manifest); the validation draw is stratified by age.

    Raises:
        FileNotFoundError, SplitLeakageError, ValueError: see :func:`load_folds`, :func:`assign_fold`.
    """
    return assign_fold(load_folds(dataset, results_dir), fold, ages)


def split_sha256(dataset: str, results_dir: str | Path = "results") -> str:
    """sha256 of the fold file, recorded in every result so results are comparable."""
    return hashlib.sha256(split_path(dataset, results_dir).read_bytes()).hexdigest()


def attach_split(manifest: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """Add a ``split`` column to manifest rows by exact participant_id join.

    Rows whose participant is not in the split get ``split=""`` (e.g. scans without age).
    """
    mapping = dict(zip(split["participant_id"], split["split"]))
    return manifest.assign(split=manifest["participant_id"].map(mapping).fillna(""))
