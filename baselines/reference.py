"""Reference rows for the brain-age leaderboard: the mean-age predictor and ROI ridge regression.

    python -m baselines.reference mean_age --dataset=ixi_hh
    python -m baselines.reference roi_ridge --dataset=ixi_hh

* ``mean_age``: always predicts the training split's mean age; the floor every model must beat.
* ``roi_ridge``: ridge regression (scikit-learn ``RidgeCV``, regularisation chosen by efficient
  leave-one-out cross-validation on the training split only) on the DLMUSE regional volumes of
  IXI-HH (``DLMUSE/DLMUSE_Volumes.csv``), standardised with training statistics. Cheap and strong:
  what many users would run instead of a deep network.

Both are evaluated exactly like the deep methods (same folds, bias correction fitted on
validation, test touched once).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.brain_age import publish_brain_age_result, report_brain_age
from common.cli import run as run_cli
from common.cv import cross_validated
from common.experiment import labelled_split_frame, publication, run_folder
from common.io import write_json
from common.paths import find_data_root
from common.runlog import environment_info, git_commit, setup_logging

log = logging.getLogger("baselines.reference")
ALPHAS = np.logspace(-2, 5, 29)


def _finish(method: str, label: str, source: str, frame: pd.DataFrame, pred: np.ndarray, dataset: str,
            results_dir: str, run_dir: Path, params: dict, n_parameters: int | None, t0: float, notes: list[str]) -> str:
    run_dir.mkdir(parents=True, exist_ok=True)
    train_mean = float(frame.loc[frame["split"] == "train", "age"].mean())
    rows = frame["split"].isin(["val", "test"]).to_numpy()
    report, _ = report_brain_age(frame[rows].reset_index(drop=True), pred[rows], run_dir,
                                 f"{method} on {dataset}", train_mean_age=train_mean)
    publication(True, results_dir, {"any": {}}, "any", {})  # refuses a dirty tree for the repository's results/
    path = publish_brain_age_result(results_dir, frame, report, method=method, method_label=label, source=source,
                             dataset=dataset, profile="any", source_reported=None, parameters=params,
                             n_parameters=n_parameters, wall_time_s=time.time() - t0,
                             environment=environment_info(torch.device("cpu")), commit=git_commit(), run_dir=run_dir,
                             notes=notes, readme_folder="baselines")
    log.info("%s on %s, fold %d: test MAE %.2f -> %s", method, dataset, int(frame["fold"].iloc[0]), report["raw"]["mae"],
             path)
    return str(run_dir)


def _root(method: str):
    """The folder of ``method``'s runs on the call's dataset (common.cv.cross_validated)."""
    return lambda a: Path(a["runs_dir"]) / method / a["dataset"]


@cross_validated(_root("mean_age"))
def mean_age(dataset: str = "ixi_hh", data_root: str | None = None, results_dir: str = "results",
             runs_dir: str = "runs", run_name: str = "reference", fold: int | str = "all") -> str:
    """Predict the training split's mean age for everyone; report on the test split.

    Args:
        dataset: dataset folder under the data root.
        data_root: data folder.
        results_dir: fold files in, ``results/mean_age__<dataset>.json`` out.
        runs_dir: where predictions and plots are written.
        run_name: run folder name.
        fold: outer cross-validation fold (0..4), or ``all`` (common/cv.py).

    Returns:
        The run folder.
    """
    setup_logging()
    t0 = time.time()
    frame, _ = labelled_split_frame(dataset, data_root, results_dir, fold=fold)
    pred = np.full(len(frame), float(frame.loc[frame["split"] == "train", "age"].mean()))
    return _finish("mean_age", "mean-age predictor (training mean)", "reference", frame, pred, dataset, results_dir,
                   run_folder(runs_dir, "mean_age", dataset, run_name, fold), {}, 0, t0,
                   ["constant prediction: correlation is undefined and the bias correction is the identity"])


@cross_validated(_root("roi_ridge"))
def roi_ridge(dataset: str = "ixi_hh", data_root: str | None = None, results_dir: str = "results",
              runs_dir: str = "runs", volumes_csv: str = "DLMUSE/DLMUSE_Volumes.csv", run_name: str = "reference",
              fold: int | str = "all") -> str:
    """Ridge regression on regional volumes, regularisation chosen on the training split.

    Args:
        dataset: dataset folder with a regional-volume table (IXI-HH's DLMUSE volumes).
        data_root: data folder.
        results_dir: split files in, ``results/roi_ridge__<dataset>.json`` out.
        runs_dir: where predictions and plots are written.
        volumes_csv: table under the dataset folder with ``MRID`` and one column per region (mm^3).
        run_name: run folder name.
        fold: outer cross-validation fold (0..4), or ``all`` (common/cv.py).

    Returns:
        The run folder.

    Raises:
        FileNotFoundError: no volume table.
        ValueError: scans without a volume row (listed).
    """
    setup_logging()
    t0 = time.time()
    path = find_data_root(data_root) / dataset / volumes_csv
    if not path.is_file():
        raise FileNotFoundError(f"regional volume table {path} not found")
    volumes = pd.read_csv(path, dtype={"MRID": str}).set_index("MRID")
    frame, _ = labelled_split_frame(dataset, data_root, results_dir, fold=fold)
    frame = frame.assign(MRID=frame["image_path"].map(lambda p: Path(p).name.split("_T1")[0]))
    missing = sorted(set(frame["MRID"]) - set(volumes.index))
    if missing:
        raise ValueError(f"{len(missing)} scans have no row in {path.name}: {missing[:5]}")
    x = volumes.loc[frame["MRID"]].to_numpy(float)
    train = (frame["split"] == "train").to_numpy()
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))
    model.fit(x[train], frame.loc[train, "age"].to_numpy(float))
    alpha = float(model[-1].alpha_)
    run_dir = run_folder(runs_dir, "roi_ridge", dataset, run_name, fold)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "model.json", {"alpha": alpha, "alphas_searched": ALPHAS.tolist(), "n_features": x.shape[1],
                                        "regions": list(volumes.columns)})
    log.info("ridge alpha %.3g chosen by leave-one-out CV on %d training subjects", alpha, int(train.sum()))
    return _finish("roi_ridge", f"ridge on {x.shape[1]} DLMUSE regional volumes", "reference (scikit-learn RidgeCV)",
                   frame, model.predict(x), dataset, results_dir, run_dir,
                   {"alpha": alpha, "n_features": int(x.shape[1]), "cv": "efficient leave-one-out on training split"},
                   int(x.shape[1]) + 1, t0, [])


#: The command-line interface (fire).
CLI = {"mean_age": mean_age, "roi_ridge": roi_ridge}

if __name__ == "__main__":
    run_cli(CLI, name="baselines.reference")
