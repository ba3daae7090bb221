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


def training_curves(metrics_csv: str | Path, path: str | Path, title: str) -> Path:
    """Train/val loss and validation MAE per epoch from a run's ``metrics.csv``."""
    m = pd.read_csv(metrics_csv)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(m["epoch"], m["loss/train"], label="train")
    axes[0].plot(m["epoch"], m["loss/val"], label="val")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot(m["epoch"], m["mae/val"])
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation MAE (years)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
