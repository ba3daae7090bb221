"""Validation curves of the cross-validated runs: where does each method's validation score stop
improving? The evidence for an epoch count (the main job's budget, issue "Evaluation protocol v2",
item 8) is read here, from validation data only: no test number is opened.

    python scripts/validation_curves.py                       # every run under runs/ named main-cpu
    python scripts/validation_curves.py --run_name=main-paper --out=results/validation_curves_paper

For every ``runs/<method>/<dataset>/<run_name>/fold<k>/metrics.csv`` it reads the validation score
per epoch (``mae/val`` for regressors, ``acc/val`` for classifiers), averages it over folds, and
reports the best epoch of each fold, the epoch from which the fold-mean curve stays within
``tolerance`` of its best value (the curve's plateau), and the share of an epoch's time spent in
training steps, precise-BatchNorm recalibration and validation. Keeps the entries in ``<out>.json``
(merged across machines) and writes ``<out>.md`` and ``<out>.png`` from them.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.cli import run as run_cli  # noqa: E402
from common.runlog import fold_dirs, run_config, setup_logging  # noqa: E402

log = logging.getLogger("validation_curves")

#: Validation scores in the order they are looked for, and whether higher is better.
SCORES = {"mae/val": False, "mse/val": False, "acc/val": True, "bacc/val": True}


def fold_curves(run_root: Path) -> tuple[str, pd.DataFrame, pd.DataFrame] | None:
    """The validation score per epoch of every finished fold of a cross-validated run.

    Args:
        run_root: ``runs/<method>/<dataset>/<run_name>``.

    Returns:
        ``(score, curves, times)``: ``curves`` has one column per fold (index: epoch), ``times``
        the mean seconds per epoch in each ``time/*`` column per fold; None when no fold has a
        ``metrics.csv`` with a validation score.
    """
    curves, times, score = {}, {}, None
    for path in (f / "metrics.csv" for f in fold_dirs(run_root)):
        if not path.is_file():
            continue
        frame = pd.read_csv(path)
        found = next((s for s in SCORES if s in frame.columns), None)
        if found is None or (score is not None and found != score):
            continue
        score = found
        fold = int(path.parent.name.removeprefix("fold"))
        curves[fold] = frame.set_index("epoch")[score]
        times[fold] = frame[[c for c in frame.columns if c.startswith("time/") and c != "time/elapsed_s"]].mean()
    if not curves:
        return None
    return score, pd.DataFrame(curves).sort_index(), pd.DataFrame(times).T


def plateau_epoch(curve: pd.Series, higher_is_better: bool, tolerance: float) -> int | None:
    """The first epoch from which ``curve`` stays within ``tolerance`` (relative) of its best value.

    Args:
        curve: score per epoch (index: epoch).
        higher_is_better: True for accuracy, False for MAE.
        tolerance: allowed relative distance from the best value, e.g. 0.05.

    Returns:
        The epoch (an index value of ``curve``); the last epoch when only it is that close (a curve
        still improving at its end); None when the last epoch is not that close (the curve got worse).
    """
    values = curve.to_numpy(dtype=float)
    best = np.nanmax(values) if higher_is_better else np.nanmin(values)
    close = values >= best * (1 - tolerance) if higher_is_better else values <= best * (1 + tolerance)
    if not close[-1]:
        return None
    start = len(values) - 1
    while start > 0 and close[start - 1]:
        start -= 1
    return int(curve.index[start])


def _plateau_cell(mean: pd.Series, higher: bool, tolerance: float) -> str:
    epoch = plateau_epoch(mean, higher, tolerance)
    if epoch is None:
        return f"none: the last epoch is more than {tolerance:.0%} from the best"
    return f"{epoch} of {int(mean.index[-1])}" + (" (still improving)" if epoch == int(mean.index[-1]) else "")


def summarize(method: str, dataset: str, score: str, curves: pd.DataFrame, times: pd.DataFrame,
              tolerance: float, commit: str) -> dict:
    """One report entry: the table's cells and the per-fold curves (kept so that a later report,
    made on a machine without these runs, still has them).

    Args:
        method, dataset: the row's names (a TSAN stage-2 variant is part of ``method``).
        score: the validation column (a key of :data:`SCORES`).
        curves, times: :func:`fold_curves`'s tables.
        tolerance: relative distance from the best value that counts as the plateau.
        commit: the code commit of the run's folds (``git_commit`` in their ``config.json``).

    Returns:
        A JSON-ready dict: ``method``, ``dataset``, ``score``, ``commit``, ``cells`` (the table row after
        the first three columns) and ``curves`` (``{fold: {epoch: value}}``).
    """
    higher = SCORES[score]
    mean = curves.mean(axis=1)
    best_epoch = int(mean.idxmax() if higher else mean.idxmin())
    per_fold = curves.idxmax() if higher else curves.idxmin()
    split = ", ".join(f"{times[c].mean():.1f}" if c in times else "–"
                      for c in ("time/steps_s", "time/precise_bn_s", "time/validation_s"))
    cells = [str(curves.shape[1]), str(len(curves)), ", ".join(str(int(e)) for e in per_fold),
             f"{mean[best_epoch]:.3f} ({best_epoch})", f"{mean.iloc[-1]:.3f}", _plateau_cell(mean, higher, tolerance),
             split]
    return {"method": method, "dataset": dataset, "score": score, "commit": commit[:8], "cells": cells,
            "curves": {str(int(f)): {str(int(e)): float(v) for e, v in curves[f].dropna().items()} for f in curves}}


def _run_commit(run_root: Path) -> str:
    configs = [f / "config.json" for f in fold_dirs(run_root) if (f / "config.json").is_file()]
    return run_config(configs[0].parent).get("git_commit", "?") if configs else "?"


def main(runs_dir: str = "runs", run_name: str = "main-cpu", tolerance: float = 0.05,
         out: str = "results/validation_curves") -> Path:
    """Write the validation-curve report of every cross-validated run named ``run_name``.

    The entries live in ``<out>.json``: a run found under ``runs_dir`` replaces its (method,
    dataset) entry there, and the other entries are kept, so the report of a main job that ran on
    several machines (each with only its own ``runs/``) holds every method. ``<out>.md`` and
    ``<out>.png`` are rendered from the merged entries.

    Args:
        runs_dir: root of the run folders.
        run_name: the run name the main job used (``main-<profile>``).
        tolerance: relative distance from the fold-mean curve's best value that counts as its plateau.
        out: output path without suffix (``.json``, ``.md`` and ``.png`` are written).

    Returns:
        Path of the Markdown report.

    Raises:
        FileNotFoundError: no run named ``run_name`` has a fold with validation scores, and ``<out>.json``
            holds no entry either.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io import write_json

    setup_logging()
    store = Path(out).with_suffix(".json")
    entries = {(e["method"], e["dataset"]): e for e in json.loads(store.read_text())} if store.is_file() else {}
    found = 0
    for root in sorted(Path(runs_dir).glob(f"*/*/{run_name}")) + sorted(Path(runs_dir).glob(f"*/*/{run_name}-*")):
        curves = fold_curves(root)
        if curves is not None:
            method = root.parts[-3] + root.name.removeprefix(run_name).replace("-", " ")
            entries[(method, root.parts[-2])] = summarize(method, root.parts[-2], *curves, tolerance, _run_commit(root))
            found += 1
    if not entries:
        raise FileNotFoundError(f"no fold of a run named {run_name!r} under {runs_dir}/ has a metrics.csv with a "
                                "validation score; run the main job first (bash scripts/reproduce.sh)")
    entries = dict(sorted(entries.items(), key=lambda kv: (kv[0][1], kv[0][0])))
    write_json(store, list(entries.values()))
    lines = ["# Validation curves of the cross-validated runs", "",
             f"Generated by `python scripts/validation_curves.py` from `runs/*/*/{run_name}/fold*/metrics.csv` of each "
             f"machine that ran the main job (validation data only; the entries are kept in `{store.name}`). Plateau: "
             f"the first epoch from which the fold-mean validation curve stays within {tolerance:.0%} of its best "
             "value; a plateau at the last epoch means the curve is still improving, so fewer epochs would cost "
             "validation accuracy. Epoch time split: mean seconds per epoch in training steps, precise-BatchNorm "
             "recalibration and validation.", "",
             "| method | dataset | score | folds | epochs | best epoch per fold | fold-mean best (epoch) | "
             "fold-mean at last epoch | plateau from epoch | s/epoch: steps, precise BN, validation | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {e['method']} | {e['dataset']} | {e['score']} | " + " | ".join(e["cells"]) + f" | {e['commit']} |"
              for e in entries.values()]
    plotted = [e for e in entries.values() if e.get("curves")]
    missing = [f"{e['method']} on {e['dataset']}" for e in entries.values() if not e.get("curves")]
    if missing:
        lines += ["", f"Rows without a plot (their per-epoch curves were not kept by the report of then): "
                      f"{', '.join(missing)}."]
    md = Path(out).with_suffix(".md")
    if not plotted:
        md.write_text("\n".join(lines) + "\n")
        log.info("wrote %s and %s (%d entries, none with curves to plot)", md, store, len(entries))
        return md
    ncols = max(1, min(4, len(plotted)))
    nrows = max(1, -(-len(plotted) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[len(plotted):]:
        ax.axis("off")
    for ax, e in zip(axes.flat, plotted):
        curves = pd.DataFrame({int(f): pd.Series({int(k): v for k, v in c.items()}) for f, c in e["curves"].items()})
        curves = curves.sort_index()
        mean = curves.mean(axis=1)
        for fold in curves.columns:
            ax.plot(curves.index, curves[fold], color="0.75", linewidth=0.8)
        ax.plot(mean.index, mean, color="tab:blue", linewidth=1.8, label="fold mean")
        ax.set_title(f"{e['method']}\n{e['dataset']}", fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel(e["score"], fontsize=8)
        if not SCORES[e["score"]] and len(curves) > 2:  # keep TSAN's first epochs (100+ y) from flattening the plot
            ax.set_ylim(float(np.nanmin(curves.to_numpy())) * 0.9, float(np.nanpercentile(curves.iloc[2:].to_numpy(), 95)) * 1.2)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    png = Path(out).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    lines += ["", f"![validation curves]({png.name})", ""]
    md.write_text("\n".join(lines))
    log.info("wrote %s, %s and %s (%d runs found here, %d entries in all)", md, png, store, found, len(entries))
    return md


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="scripts/validation_curves.py")
