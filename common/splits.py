"""The shared subject-level splits (DESIGN.md "Splits").

``results/splits/<dataset>.csv`` holds ``participant_id,split`` with split in train/val/test. It is
built once by ``scripts/make_splits.py`` and loaded by every method through :func:`load_split`,
which refuses a split in which a participant appears twice.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
#: Subjects are sorted by age and assigned within consecutive blocks of this size ...
BLOCK_SIZE = 20
#: ... 14 train, 3 val, 3 test per block (70/15/15).
BLOCK_COUNTS = {"train": 14, "val": 3, "test": 3}
SPLIT_METHOD = "age-sorted blocks of 20, seeded random 14/3/3 train/val/test assignment within each block"


class SplitLeakageError(ValueError):
    """A participant occurs in more than one split (or twice in a split file)."""


def make_age_stratified_split(subjects: pd.DataFrame, seed: int = 42) -> pd.DataFrame:
    """Assign each participant to train/val/test, stratified by age.

    Participants are sorted by (age, participant_id) and cut into blocks of :data:`BLOCK_SIZE`;
    each block receives a seeded random permutation of 14 train / 3 val / 3 test labels (a last
    partial block takes the first labels of its permutation), which gives about 70/15/15 with the
    same age distribution in every split.

    Args:
        subjects: one row per participant with ``participant_id`` and float ``age`` (years).
        seed: random seed.

    Returns:
        DataFrame ``participant_id, split`` sorted by participant_id.

    Raises:
        ValueError: duplicated participant IDs or missing ages.
    """
    if subjects["participant_id"].duplicated().any():
        raise ValueError("make_age_stratified_split needs one row per participant")
    if subjects["age"].isna().any():
        raise ValueError("participants without age cannot be split; drop them first")
    ordered = subjects.sort_values(["age", "participant_id"]).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    template = np.array([s for s, n in BLOCK_COUNTS.items() for _ in range(n)])
    labels = []
    for start in range(0, len(ordered), BLOCK_SIZE):
        n = min(BLOCK_SIZE, len(ordered) - start)
        labels.extend(rng.permutation(template)[:n])
    ordered["split"] = labels
    return ordered[["participant_id", "split"]].sort_values("participant_id").reset_index(drop=True)


def check_no_leakage(split: pd.DataFrame) -> None:
    """Raise :class:`SplitLeakageError` if any participant_id is listed more than once.

    Also rejects unknown split names.
    """
    bad = set(split["split"]) - set(SPLITS)
    if bad:
        raise ValueError(f"unknown split names {sorted(bad)}; expected {SPLITS}")
    counts = split.groupby("participant_id")["split"].nunique()
    leaked = sorted(counts[counts > 1].index)
    if leaked:
        raise SplitLeakageError(f"{len(leaked)} participants are in more than one split: {leaked[:10]}")
    dup = split["participant_id"].duplicated()
    if dup.any():
        raise SplitLeakageError(f"participants listed twice: {sorted(split.loc[dup, 'participant_id'])[:10]}")


def split_path(dataset: str, results_dir: str | Path = "results") -> Path:
    return Path(results_dir) / "splits" / f"{dataset}.csv"


def load_split(dataset: str, results_dir: str | Path = "results") -> pd.DataFrame:
    """Load and check the committed split of ``dataset``.

    Raises:
        FileNotFoundError: no split file (run ``python scripts/make_splits.py``).
        SplitLeakageError: a participant is in two splits.
    """
    path = split_path(dataset, results_dir)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found; run `python scripts/make_splits.py --datasets={dataset}`")
    split = pd.read_csv(path, dtype=str, comment="#")
    check_no_leakage(split)
    return split


def split_sha256(dataset: str, results_dir: str | Path = "results") -> str:
    """sha256 of the split file, recorded in every result so results are comparable."""
    return hashlib.sha256(split_path(dataset, results_dir).read_bytes()).hexdigest()


def attach_split(manifest: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """Add a ``split`` column to manifest rows by exact participant_id join.

    Rows whose participant is not in the split file get ``split=""`` (e.g. scans without age).
    """
    mapping = dict(zip(split["participant_id"], split["split"]))
    return manifest.assign(split=manifest["participant_id"].map(mapping).fillna(""))
