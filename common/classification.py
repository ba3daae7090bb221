"""End of a classification run: test metrics with bootstrap CIs, confusion matrix, predictions CSV,
result JSON. Shared by the classifiers so they are evaluated identically."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax

from common.io import write_csv, write_json
from common.metrics import classification_metrics
from common.plots import confusion_matrix_plot
from common.results import write_result

log = logging.getLogger(__name__)


def predictions_table(ids: pd.Series, labels: np.ndarray, logits: np.ndarray, class_names: list[str],
                      id_column: str = "participant_id") -> pd.DataFrame:
    """``<id>, label, pred, prob_<class>...`` with class names (not indices) in label/pred."""
    probs = softmax(np.asarray(logits, float), axis=1)
    table = pd.DataFrame({id_column: np.asarray(ids), "label": [class_names[i] for i in labels],
                          "pred": [class_names[i] for i in probs.argmax(1)]})
    for j, c in enumerate(class_names):
        table[f"prob_{c}"] = probs[:, j].round(4)
    return table


def report_classification(ids: pd.Series, labels: np.ndarray, logits: np.ndarray, class_names: list[str],
                          run_dir: str | Path, title: str, split: str = "test",
                          id_column: str = "participant_id") -> dict:
    """Write ``predictions_<split>.csv``, ``metrics_<split>.json`` and ``confusion_<split>.png``.

    Args:
        labels: true class indices (N,); logits: (N, K).

    Returns:
        The metrics of :func:`common.metrics.classification_metrics`.
    """
    run_dir = Path(run_dir)
    labels = np.asarray(labels, int)
    pred = np.asarray(logits).argmax(1)
    metrics = classification_metrics(labels, pred, class_names)
    write_csv(run_dir / f"predictions_{split}.csv", predictions_table(ids, labels, logits, class_names, id_column))
    write_json(run_dir / f"metrics_{split}.json", metrics)
    confusion_matrix_plot(metrics["confusion_matrix"], class_names, run_dir / f"confusion_{split}.png",
                          f"{title}\naccuracy {metrics['accuracy']:.3f}, balanced {metrics['balanced_accuracy']:.3f}")
    log.info("%s accuracy %.3f (majority rate %.3f), balanced %.3f, macro-F1 %.3f", split, metrics["accuracy"],
             metrics["majority_class_rate"], metrics["balanced_accuracy"], metrics["macro_f1"])
    return metrics


def publish_classification_result(results_dir: str | Path, metrics: dict, **kwargs) -> Path:
    """Write ``results/<method>__<dataset>.json`` for a classification run (see :func:`write_result`)."""
    return write_result(results_dir, task="classification", metrics=metrics, **kwargs)
