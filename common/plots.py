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
    """Predicted vs chronological age with the y = x line; corrected predictions in a second colour.
    The title gets the number of scans."""
    title = f"{title} (n = {len(age)})" if "\n" not in title else title.replace("\n", f" (n = {len(age)})\n", 1)
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


def gap_vs_age(age: np.ndarray, predicted: np.ndarray, path: str | Path, title: str,
               corrected: np.ndarray | None = None) -> Path:
    """Brain age gap (predicted - chronological, years) against chronological age, raw and corrected,
    each with its least-squares line: the standard check for regression to the mean (a negative
    slope means young brains are predicted too old and old brains too young)."""
    age = np.asarray(age, float)
    panels = [("raw", np.asarray(predicted, float) - age)]
    if corrected is not None:
        panels.append(("bias-corrected", np.asarray(corrected, float) - age))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False, sharey=True)
    for ax, (label, gap) in zip(axes[0], panels):
        ax.scatter(age, gap, s=16, alpha=0.8)
        ax.axhline(0, color="k", lw=1, ls="--")
        ok = np.isfinite(gap) & np.isfinite(age)
        if ok.sum() >= 2 and np.ptp(age[ok]) > 0:
            slope, intercept = np.polyfit(age[ok], gap[ok], 1)
            xs = np.array([age[ok].min(), age[ok].max()])
            ax.plot(xs, slope * xs + intercept, color="C3", lw=1.5, label=f"slope {slope:+.2f} y/y")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel("chronological age (years)")
        ax.set_title(label, fontsize=9)
    axes[0][0].set_ylabel("brain age gap (years)")
    fig.suptitle(f"{title} (n = {len(age)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


METRIC_LABELS = {"mae/val": "validation MAE (years)", "mse/val": "validation MSE (years²)",
                 "acc/val": "validation accuracy", "bacc/val": "validation balanced accuracy"}


def training_curves(metrics_csv: str | Path, path: str | Path, title: str, metric: str = "mae/val",
                    loss_label: str = "loss", best_epoch: int | None = None) -> Path:
    """Train/val loss and the validation selection metric per epoch from a run's ``metrics.csv``.

    Args:
        loss_label: the loss's name and unit for the axis, e.g. ``"Huber loss (years)"``.
        best_epoch: the epoch whose checkpoint was kept (marked on both panels).
    """
    from matplotlib.ticker import MaxNLocator

    m = pd.read_csv(metrics_csv)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(m["epoch"], m["loss/train"], marker=".", label="train")
    axes[0].plot(m["epoch"], m["loss/val"], marker=".", label="validation")
    axes[0].set_ylabel(loss_label)
    axes[1].plot(m["epoch"], m[metric], marker=".")
    axes[1].set_ylabel(METRIC_LABELS.get(metric, metric))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch is not None and best_epoch >= 0:
            ax.axvline(best_epoch, color="C2", ls=":", lw=1.5, label=f"kept: epoch {best_epoch}")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def confusion_matrix_plot(matrix: list[list[int]], class_names: list[str], path: str | Path, title: str) -> Path:
    """Confusion matrix (rows: true class, columns: predicted) with counts, row percentages (recall
    on the diagonal) and row-normalised colour."""
    m = np.asarray(matrix, float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}\n{100 * norm[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title} (n = {int(m.sum())})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
