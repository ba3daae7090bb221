"""Answer the mid-slice classifier's 3-class question with a 3D brain-age regressor.

Reads the out-of-fold predictions of a finished cross-validated brain-age run
(``results/predictions/<method>__ds000228.csv``, named by ``results/<method>__ds000228.json``), maps
each predicted age to an age group with fixed cut-points between the groups' age ranges (3-5 y |
7-12 y | adults): 6.5 y and 15 y, and scores it exactly like the classifier, on the same subjects.
The bias-corrected prediction (correction fitted on each fold's validation split) is used.

    python -m midslice_classifier.from_brain_age --source_method=resnet3d
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common.classification import publish_classification_result
from common.cli import run as run_cli
from common.cv import PREDICTIONS_DIR
from common.data.sources import load_dataset
from common.io import write_csv, write_json
from common.metrics import classification_metrics
from common.paths import find_data_root
from common.plots import confusion_matrix_plot
from common.runlog import setup_logging
from midslice_classifier.train import CLASS_NAMES, SOURCE_REPORTED

log = logging.getLogger("midslice_classifier.from_brain_age")

#: Upper age bound (years) of Ages3-5 and of Ages7-12 when mapping a predicted age to a group.
CUTPOINTS = (6.5, 15.0)


def age_to_group(age: np.ndarray, cutpoints: tuple[float, float] = CUTPOINTS) -> np.ndarray:
    """Predicted age (years) -> class index into :data:`CLASS_NAMES` (0: <6.5, 1: <15, 2: adults)."""
    return np.digitize(np.asarray(age, float), cutpoints)


def main(source_method: str = "resnet3d", dataset: str = "ds000228", results_dir: str = "results",
         data_root: str | None = None, column: str = "predicted_age_corrected") -> str:
    """Score a brain-age run's out-of-fold predictions as a 3-class age-group classifier.

    Args:
        source_method: the brain-age method whose ``results/<method>__<dataset>.json`` is read.
        dataset: dataset with age-group labels (ds000228).
        results_dir: results folder.
        data_root: data folder for the true labels.
        column: prediction column to map (``predicted_age_corrected`` or ``predicted_age``).

    Returns:
        Path of the written result JSON (its out-of-fold predictions go to
        ``results/predictions/<method>_agegroups__<dataset>.csv``).

    Raises:
        FileNotFoundError: the brain-age result or its predictions are missing (run it first).
    """
    setup_logging()
    t0 = time.time()
    source = json.loads((Path(results_dir) / f"{source_method}__{dataset}.json").read_text())
    run_dir = Path(source["run_dir"])
    predictions = Path(results_dir) / str(source.get("predictions"))
    if not source.get("n_folds") or not predictions.is_file():
        raise FileNotFoundError(f"no out-of-fold predictions {predictions}; run `bash {source_method}/train.sh` "
                                f"with DATASET={dataset}")
    test = pd.read_csv(predictions, dtype={"participant_id": str, "session_id": str}, keep_default_na=False,
                       na_values=[""])
    manifest, _ = load_dataset(dataset, find_data_root(data_root))
    labels = dict(zip(manifest["participant_id"], manifest["label"]))
    test["label"] = test["participant_id"].map(labels)
    unlabeled = test.loc[~test["label"].isin(CLASS_NAMES), "participant_id"].tolist()
    if unlabeled:
        raise ValueError(f"test subjects without an age-group label: {unlabeled}")
    y_true = np.array([CLASS_NAMES.index(c) for c in test["label"]])
    y_pred = age_to_group(test[column].to_numpy(float))
    metrics = classification_metrics(y_true, y_pred, CLASS_NAMES)
    metrics["cutpoints_years"] = list(CUTPOINTS)
    metrics["fold_accuracy"] = [float(np.mean(y_true[g] == y_pred[g])) for g in test.groupby("fold").indices.values()]
    run_dir.mkdir(parents=True, exist_ok=True)  # absent on a machine that has only the committed predictions
    confusion_matrix_plot(metrics["confusion_matrix"], CLASS_NAMES, run_dir / "confusion_agegroups_oof.png",
                          f"{source_method} brain age -> age group (out-of-fold)")
    method = f"{source_method}_agegroups"
    table = pd.DataFrame({"participant_id": test["participant_id"], "session_id": test["session_id"],
                          "label": test["label"], "pred": [CLASS_NAMES[i] for i in y_pred], "fold": test["fold"]})
    write_csv(Path(results_dir) / PREDICTIONS_DIR / f"{method}__{dataset}.csv", table)
    path = publish_classification_result(
        results_dir, metrics, method=method, method_label=f"{source['method_label']} → age group (cut-points 6.5/15 y)",
        source=f"{source['source']}; groups as {SOURCE_REPORTED['dataset'].split(',')[0]} mid-slice example",
        dataset=dataset, profile=source["profile"], source_reported=None, n_subjects=source["n_subjects"],
        parameters={"source_result": f"{source_method}__{dataset}.json", "column": column, "cutpoints": list(CUTPOINTS)},
        n_parameters=source.get("n_parameters"), wall_time_s=source["wall_time_s"] + time.time() - t0,
        environment=source["environment"], commit=source["commit"], run_dir=run_dir,
        notes=[f"derived from the {source_method} brain-age out-of-fold predictions, no extra training"],
        readme_folder="midslice_classifier", predictions=f"{PREDICTIONS_DIR}/{method}__{dataset}.csv")
    doc = json.loads(path.read_text())
    write_json(path, {**doc, "protocol": source["protocol"], "n_folds": source["n_folds"]})
    log.info("accuracy %.3f (majority rate %.3f) -> %s", metrics["accuracy"], metrics["majority_class_rate"], path)
    return str(path)


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="midslice_classifier.from_brain_age")
