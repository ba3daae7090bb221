"""Plots written into run folders (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def scatter_predicted_vs_age(age: np.ndarray, predicted: np.ndarray, path: str | Path, title: str,
                             corrected: np.ndarray | None = None) -> Path:
    """Predicted vs chronological age with the y = x line; corrected predictions in a second colour."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(age, predicted, s=18, alpha=0.8, label="predicted")
    if corrected is not None:
        ax.scatter(age, corrected, s=18, alpha=0.6, marker="x", label="bias-corrected")
    values = np.concatenate([age, predicted] + ([corrected] if corrected is not None else []))
    lo, hi = float(np.nanmin(values)) - 2, float(np.nanmax(values)) + 2
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("chronological age (years)")
    ax.set_ylabel("predicted brain age (years)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


METRIC_LABELS = {"mae/val": "validation MAE (years)", "mse/val": "validation MSE (years²)",
                 "acc/val": "validation accuracy"}


def training_curves(metrics_csv: str | Path, path: str | Path, title: str, metric: str = "mae/val") -> Path:
    """Train/val loss and the validation selection metric per epoch from a run's ``metrics.csv``."""
    m = pd.read_csv(metrics_csv)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(m["epoch"], m["loss/train"], label="train")
    axes[0].plot(m["epoch"], m["loss/val"], label="val")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot(m["epoch"], m[metric])
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(METRIC_LABELS.get(metric, metric))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def confusion_matrix_plot(matrix: list[list[int]], class_names: list[str], path: str | Path, title: str) -> Path:
    """Confusion matrix (rows: true class, columns: predicted) with counts and row-normalised colour."""
    m = np.asarray(matrix, float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
