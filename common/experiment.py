"""Glue shared by every method's train script: profiles, labelled split frames, run folders."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from common.data.manifest import Exclusions, subjects_table
from common.data.sources import load_dataset
from common.distributed import broadcast_object
from common.paths import find_data_root
from common.splits import SPLITS, attach_split, load_split

log = logging.getLogger(__name__)


def resolve_profile(profiles: dict[str, dict], profile: str, overrides: dict) -> dict:
    """Profile defaults updated with every explicitly given (non-None) override.

    Raises:
        ValueError: unknown profile name, or an override key the profile does not define.
    """
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(profiles)}")
    resolved = dict(profiles[profile])
    for key, value in overrides.items():
        if key not in resolved:
            raise ValueError(f"{key!r} is not a profile setting ({sorted(resolved)})")
        if value is not None:
            resolved[key] = value
    return resolved


def labelled_split_frame(dataset: str, data_root: str | None, results_dir: str | Path,
                         max_per_split: int | None = None, fold: int = 0) -> tuple[pd.DataFrame, Exclusions]:
    """Manifest rows of ``dataset`` that belong to its shared folds, with the ``split`` column
    (train / val / test) of outer fold ``fold`` (:func:`common.splits.load_split`) and a ``fold``
    column (the outer fold of the run, the same on every row).

    Rows outside the fold file (e.g. scans without age) are logged as exclusions.

    Args:
        max_per_split: keep only the first N participants (by ID) of each split; for smoke runs.
        fold: outer fold, 0..K-1 (its participants are the test split).

    Raises:
        FileNotFoundError: missing data or fold file.
        common.splits.SplitLeakageError: the fold file leaks participants.
    """
    manifest, exclusions = load_dataset(dataset, find_data_root(data_root))
    ages = subjects_table(manifest.dropna(subset=["age"]))
    frame = attach_split(manifest, load_split(dataset, ages, int(fold), results_dir)).assign(fold=int(fold))
    for row in frame[(frame["split"] == "") & frame["age"].notna()].itertuples():
        exclusions.add(dataset, row.image_path, "participant not in the fold file (added after the folds were made)", "split")
    frame = frame[frame["split"].isin(SPLITS) & frame["age"].notna()].reset_index(drop=True)
    if max_per_split:
        keep = []
        for s in SPLITS:
            ids = sorted(frame.loc[frame["split"] == s, "participant_id"].unique())[:max_per_split]
            keep.extend(ids)
        frame = frame[frame["participant_id"].isin(keep)].reset_index(drop=True)
    return frame, exclusions


def run_folder(runs_dir: str | Path, method: str, dataset: str, run_name: str, fold: int) -> Path:
    """``<runs_dir>/<method>/<dataset>/<run_name>/fold<k>``: the run folder of outer fold ``fold``."""
    return Path(runs_dir) / method / dataset / run_name / f"fold{int(fold)}"


def default_run_name(profile: str) -> str:
    """``<profile>-YYYYmmdd-HHMMSS`` (UTC); under torchrun, rank 0's name on every process."""
    return broadcast_object(f"{profile}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")


def int_tuple(value: object) -> tuple[int, ...]:
    """Parse ``"64,128"``, ``(64, 128)`` (what fire makes of ``--x=64,128``), ``64`` or ``""`` into ints.

    Raises:
        ValueError: an element is not an integer.
    """
    if value is None or value == "":
        return ()
    if isinstance(value, (int, float)):
        return (int(value),)
    items = value if isinstance(value, (list, tuple)) else str(value).strip("()[] ").split(",")
    try:
        return tuple(int(str(v).strip()) for v in items if str(v).strip() != "")
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {value!r}") from None


def publication(publish: bool, results_dir: str | Path, profiles: dict[str, dict], profile: str, overrides: dict,
                max_per_split: int | None = None) -> bool:
    """Whether a run may write its result file, decided before any work.

    Only the repository's own ``results/`` is guarded (another ``--results_dir`` takes anything):

    - a smoke run (``--max_per_split``, or fewer epochs than its profile) is not published there:
      returns False, with a log line;
    - a run whose settings differ from its profile, or a run of a tree with uncommitted changes,
      is refused: its row would stand in the leaderboard as the profile's result.

    Raises:
        ValueError: a refused publication (the message says what to do instead).
    """
    from common.paths import REPO_ROOT
    from common.runlog import git_commit

    if not publish or Path(results_dir).resolve() != (REPO_ROOT / "results").resolve():
        return publish
    base = profiles[profile]
    fewer_epochs = [k for k in ("epochs", "stage2_epochs") if overrides.get(k) is not None and k in base
                    and overrides[k] < base[k]]
    if max_per_split or fewer_epochs:
        why = f"--max_per_split={max_per_split}" if max_per_split else f"fewer epochs than the {profile} profile"
        log.warning("smoke run (%s): results/ is not written (pass --results_dir=DIR to keep its result)", why)
        return False
    changed = {k: v for k, v in overrides.items() if v is not None and k in base and v != base[k]}
    if changed:
        listed = ", ".join(f"--{k}={v} (profile: {base[k]})" for k, v in changed.items())
        raise ValueError(f"{listed} differ from the {profile} profile, so this run is a variant and does not replace "
                         "the profile's row in results/; pass --results_dir=DIR (or --publish=False)")
    if git_commit().endswith("-dirty"):
        raise ValueError("the working tree has uncommitted changes; results/ only takes results of committed code. "
                         "Commit first, or pass --results_dir=DIR (or --publish=False)")
    return publish
