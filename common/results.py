"""Prediction tables and the per-(method, dataset) result JSON read by the leaderboard."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import write_csv, write_json
from common.metrics import BiasCorrection
from common.splits import split_sha256

PREDICTION_COLUMNS = ["participant_id", "session_id", "split", "age", "sex", "predicted_age", "brain_age_gap",
                      "predicted_age_corrected", "brain_age_gap_corrected"]


def brain_age_predictions(frame: pd.DataFrame, predicted_age: np.ndarray,
                          correction: BiasCorrection | None) -> pd.DataFrame:
    """Predictions table (DESIGN.md columns) for manifest rows ``frame`` in the same order.

    The brain age gap is ``predicted_age - age`` (years; NaN where age is unknown).
    """
    pred = np.asarray(predicted_age, float)
    age = frame["age"].to_numpy(float)
    corrected = correction.apply(pred, age) if correction is not None else np.full_like(pred, np.nan)
    out = pd.DataFrame({
        "participant_id": frame["participant_id"].to_numpy(),
        "session_id": frame["session_id"].to_numpy() if "session_id" in frame else "",
        "split": frame["split"].to_numpy() if "split" in frame else "",
        "age": age,
        "sex": frame["sex"].to_numpy() if "sex" in frame else "",
        "predicted_age": pred,
        "brain_age_gap": pred - age,
        "predicted_age_corrected": corrected,
        "brain_age_gap_corrected": corrected - age,
    })
    return out[PREDICTION_COLUMNS]


#: Columns that name what a predictions table predicts: a subject's session, or an image where a
#: dataset has no subject IDs (alzheimer4).
ID_COLUMNS = ("participant_id", "session_id", "image")


def prediction_key(table: pd.DataFrame) -> pd.Series:
    """One string per row of a predictions table naming what it predicts, for pairing two tables:
    ``participant_id|session_id`` (an absent session is empty), or ``image`` where the table has no
    ``participant_id``.

    Raises:
        KeyError: the table has neither ``participant_id`` nor ``image``.
    """
    if "participant_id" not in table:
        return table["image"].astype(str)
    return table["participant_id"] + "|" + (table["session_id"].fillna("") if "session_id" in table else "")


def write_predictions(path: str | Path, table: pd.DataFrame) -> Path:
    """Atomically write a predictions table with 4-decimal floats."""
    return write_csv(path, table.round(4))


def split_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Number of distinct participants per split in ``frame``."""
    return {s: int(frame.loc[frame["split"] == s, "participant_id"].nunique()) for s in ("train", "val", "test")}


def write_result(results_dir: str | Path, *, method: str, method_label: str, source: str, dataset: str,
                 task: str, profile: str, metrics: dict, precision: str = "fp32", source_reported: dict | None, n_subjects: dict,
                 parameters: dict, n_parameters: int | None, wall_time_s: float, environment: dict,
                 commit: str, run_dir: str | Path, notes: list[str] | None = None,
                 subject_split: bool = True, readme_folder: str | None = None, fold: int | None = None,
                 predictions: str | Path | None = None) -> Path:
    """Write the result document of one evaluation (DESIGN.md "Runs and results").

    A run of one outer fold (``fold`` given) writes it into its run folder,
    ``<run_dir>/fold_results/<method>__<dataset>.json`` (:func:`fold_result_path`), where
    :func:`common.cv.pool_folds` collects the K folds into ``results/<method>__<dataset>.json``. A
    run on a published test folder (``fold=None``, ``subject_split=False``) writes
    ``results/<method>__<dataset>.json`` itself.

    Args:
        metrics: the test-split report (e.g. :func:`common.metrics.brain_age_report`).
        precision: the training precision in force (``fp32``, ``bf16``, ``fp16``;
            :func:`common.device.resolve_precision`); the leaderboard shows it when not fp32.
        source_reported: the number(s) the method's source reports, with their setting.
        notes: deviations or caveats that must travel with the number (e.g. random-init weights).
        subject_split: False for datasets kept in their published image-level folders.
        readme_folder: method folder whose README gets this row (default: ``method``).
        fold: the outer cross-validation fold of the run (None: no folds).
        predictions: the test-split predictions CSV of this evaluation (pooled across folds).
    """
    doc = {
        "method": method,
        "method_label": method_label,
        "source": source,
        "dataset": dataset,
        "task": task,
        "profile": profile,
        "precision": precision,
        "subject_split": subject_split,
        "split_file": f"results/splits/{dataset}.csv",
        "split_sha256": split_sha256(dataset, results_dir) if subject_split else None,
        "n_subjects": n_subjects,
        "metrics": metrics,
        "source_reported": source_reported,
        "parameters": parameters,
        "n_parameters": n_parameters,
        "wall_time_s": round(float(wall_time_s), 1),
        "device": environment.get("device_name", environment.get("device")),
        "environment": environment,
        "commit": commit,
        "run_dir": str(run_dir),
        "notes": notes or [],
        "readme_folder": readme_folder or method,
        "fold": fold,
        "predictions": str(predictions) if predictions is not None else None,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = fold_result_path(run_dir, method, dataset) if fold is not None else Path(results_dir) / f"{method}__{dataset}.json"
    return write_json(path, doc)


#: Folder of a fold run that holds its result documents.
FOLD_RESULTS = "fold_results"


def fold_result_path(run_dir: str | Path, method: str, dataset: str) -> Path:
    """Where the run of one outer fold keeps the result document of ``method`` on ``dataset``."""
    return Path(run_dir) / FOLD_RESULTS / f"{method}__{dataset}.json"
