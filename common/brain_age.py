"""End of a brain-age run: predictions, validation-fitted bias correction, test report, plots,
result JSON. Shared by every brain-age regressor so they are evaluated identically."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import write_json
from common.metrics import BiasCorrection, brain_age_report
from common.plots import scatter_predicted_vs_age
from common.results import brain_age_predictions, split_counts, write_predictions, write_result

log = logging.getLogger(__name__)


def report_brain_age(frame: pd.DataFrame, predicted_age: np.ndarray, run_dir: str | Path, title: str,
                     train_mean_age: float) -> tuple[dict, BiasCorrection]:
    """Fit the bias correction on the validation rows, report on the test rows.

    Args:
        frame: manifest rows with ``split`` (val and test rows at least) and ``age``.
        predicted_age: predictions (years) for ``frame``'s rows, same order.
        run_dir: where ``predictions_{val,test}.csv``, ``metrics_test.json`` and
            ``scatter_test.png`` are written.
        title: plot title.
        train_mean_age: mean age of the training split (the trivial predictor's constant).

    Returns:
        ``(report, correction)``: the test report of :func:`common.metrics.brain_age_report`
        and the fitted correction. The test rows are only transformed, never used to fit.

    Raises:
        ValueError: no validation or no test rows.
    """
    run_dir = Path(run_dir)
    pred = np.asarray(predicted_age, float)
    is_val = (frame["split"] == "val").to_numpy()
    is_test = (frame["split"] == "test").to_numpy()
    if not is_val.any() or not is_test.any():
        raise ValueError("need validation and test rows to report brain age")
    correction = BiasCorrection.fit(frame.loc[is_val, "age"].to_numpy(float), pred[is_val], fitted_on="val")
    train_mean = float(train_mean_age)
    for split, mask in (("val", is_val), ("test", is_test)):
        write_predictions(run_dir / f"predictions_{split}.csv",
                          brain_age_predictions(frame[mask], pred[mask], correction))
    test = frame[is_test]
    report = brain_age_report(test["age"].to_numpy(float), pred[is_test], correction, train_mean)
    report["train_mean_age"] = train_mean
    write_json(run_dir / "metrics_test.json", report)
    scatter_predicted_vs_age(test["age"].to_numpy(float), pred[is_test], run_dir / "scatter_test.png",
                             f"{title}\nMAE {report['raw']['mae']:.2f} y, r {report['raw']['pearson_r']:.2f} "
                             f"(corrected MAE {report['corrected']['mae']:.2f})",
                             corrected=correction.apply(pred[is_test]))
    log.info("test MAE %.2f (mean predictor %.2f), r %.3f; corrected MAE %.2f", report["raw"]["mae"],
             report["mean_predictor_mae"], report["raw"]["pearson_r"], report["corrected"]["mae"])
    return report, correction


def publish_brain_age_result(results_dir: str | Path, frame: pd.DataFrame, report: dict, **kwargs) -> Path:
    """Write ``results/<method>__<dataset>.json`` for a brain-age run (see :func:`write_result`)."""
    return write_result(results_dir, task="brain_age", metrics=report, n_subjects=split_counts(frame), **kwargs)
