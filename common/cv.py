"""The cross-validation protocol in one place (DESIGN.md "Evaluation protocol"): the fold loop that
every method's train command runs, fold reuse for a resumable main job, and the pooling of the K
fold results into one out-of-fold result per (method, dataset).

A method contributes only a function that trains and tests one outer fold (``fold=k``) in the run
folder ``<runs>/<method>/<dataset>/<run_name>/fold<k>`` and writes its fold result there
(:func:`common.results.write_result` with ``fold``). :func:`cross_validated` turns it into a command
whose ``--fold=all`` (the default) runs every fold and then :func:`pool_folds`:

- ``results/<method>__<dataset>.json``: pooled out-of-fold metrics (every labelled subject predicted
  once, by the model that did not see it), per-fold MAE, MAE by age band, and the bias correction's
  leave-one-out effect on the validation predictions;
- ``results/predictions/<method>__<dataset>.csv``: the out-of-fold predictions with a ``fold``
  column, read by the leaderboard's paired comparisons.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import write_csv, write_json
from common.metrics import age_band_mae, bootstrap_ci, classification_metrics, leave_one_out_correction_mae, regression_metrics
from common.results import FOLD_RESULTS, ID_COLUMNS
from common.runlog import git_commit, setup_logging
from common.splits import load_folds, split_sha256

log = logging.getLogger(__name__)

#: Age bands of the pooled report (years, ``[low, high)``): IXI-HH by decade; ds000228's children
#: 3-5 and 7-12 and its adults; other datasets by decade.
DECADES = [(float(a), float(a + 10)) for a in range(0, 100, 10)]
AGE_BANDS = {"ds000228": [(3.0, 6.0), (6.0, 7.0), (7.0, 13.0), (13.0, 18.0), (18.0, float("inf"))]}
#: Where pooled out-of-fold predictions are committed, under the results folder.
PREDICTIONS_DIR = "predictions"


def fold_folder(run_root: str | Path, fold: int) -> Path:
    """``<run_root>/fold<k>`` (:func:`common.experiment.run_folder`)."""
    return Path(run_root) / f"fold{int(fold)}"


def fold_results(run_dir: str | Path) -> list[dict]:
    """The fold result documents a fold run wrote, in its folder or a sub-folder (VGG16+SVR's
    ``early/``, ``late/``); none if it has not finished."""
    return [json.loads(p.read_text()) for p in sorted(Path(run_dir).glob(f"**/{FOLD_RESULTS}/*__*.json"))]


def fold_state(run_dir: str | Path, results_dir: str | Path, dataset: str) -> str:
    """``absent``, ``finished`` (fold results of the current, clean commit and the current fold
    file: reused), ``partial`` (started by the current commit, not finished: resumed) or ``stale``
    (made by other code or another fold file: retrained)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "absent"
    commit, sha = git_commit(), split_sha256(dataset, results_dir)
    docs = fold_results(run_dir)
    if docs:
        same = all(d.get("commit") == commit and d.get("split_sha256") == sha for d in docs)
        return "finished" if same and not commit.endswith("-dirty") else "stale"
    cfg = run_dir / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("git_commit", commit) != commit:
        return "stale"
    return "partial"


def cross_validated(root: Callable[[dict], Path], dataset_of: Callable[[dict], str] = lambda a: a["dataset"],
                    per_fold: Callable[[dict, int], dict] | None = None):
    """Decorator: the method's one-fold ``train(..., fold=k)`` becomes the K-fold command.

    The wrapped function must take ``fold``, ``run_name`` and ``results_dir`` (and may take
    ``resume``, ``profile`` and ``publish``), train in :func:`common.experiment.run_folder` and
    return that folder. With ``fold="all"`` (give it as the default) the wrapper resolves one run
    name, runs folds k = 0..K-1 under it (``<run_name>/fold<k>``), and pools them
    (:func:`pool_folds`). With ``resume=True`` a finished fold of the same commit and fold file is
    reused, a partial one resumed, and a stale one (other code) moved aside to
    ``fold<k>.stale-<time>`` and retrained, so a killed main job goes on where it stopped.

    Args:
        root: ``args -> <runs>/<method>/<dataset>``, the folder that holds the run folders.
        dataset_of: ``args -> dataset`` (default: the ``dataset`` argument).
        per_fold: ``(args, k) -> args`` for fold ``k`` (e.g. TSAN stage 2's stage-1 fold).
    """
    def decorate(train_fold: Callable) -> Callable:
        signature = inspect.signature(train_fold)

        @functools.wraps(train_fold)
        def run(*args, **kwargs):
            from common.device import default_profile
            from common.experiment import default_run_name

            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            a = dict(bound.arguments)
            if a["fold"] != "all":
                return train_fold(**{**a, "fold": int(a["fold"])})
            setup_logging()  # before the first fold line, which the main job shows on its console
            name = a["run_name"] or default_run_name(a.get("profile") or default_profile())
            resume = bool(a.get("resume", False))
            run_root = Path(root(a)) / name
            dataset = dataset_of(a)
            n_folds = int(load_folds(dataset, a["results_dir"])["fold"].max()) + 1
            dirs, trained, t_train = [], 0, 0.0  # the ETA counts trained folds only, not reused ones
            for k in range(n_folds):
                fold_dir = fold_folder(run_root, k)
                state = fold_state(fold_dir, a["results_dir"], dataset)
                if state == "finished" and resume:
                    log.info("fold %d/%d: reusing the finished run %s", k + 1, n_folds, fold_dir)
                    dirs.append(fold_dir)
                    continue
                if state == "stale" and resume:
                    aside = fold_dir.with_name(f"{fold_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
                    fold_dir.rename(aside)
                    log.warning("fold %d: %s was made by other code or folds; moved to %s and retrained", k, fold_dir, aside)
                    state = "absent"
                eta = f", about {t_train / trained * (n_folds - k) / 60:.0f} min left" if trained else ""
                log.info("fold %d/%d of %s on %s (run %s%s)", k + 1, n_folds, run_root.parent.parent.name, dataset, run_root, eta)
                fold_args = {**a, "fold": k, "run_name": name}
                if "resume" in a:
                    fold_args["resume"] = resume and state == "partial"
                if per_fold is not None:
                    fold_args = per_fold(fold_args, k)
                t0 = time.time()
                dirs.append(Path(train_fold(**fold_args)))
                trained, t_train = trained + 1, t_train + time.time() - t0
            pool_folds(dirs, run_root, a["results_dir"], publish=a.get("publish", True))
            return str(run_root)

        return run

    return decorate


def _pooled_brain_age(docs: list[dict], oof: pd.DataFrame, dataset: str) -> dict:
    """Pooled out-of-fold brain-age report of the fold documents ``docs`` and their predictions."""
    age, pred = oof["age"].to_numpy(float), oof["predicted_age"].to_numpy(float)
    corrected = oof["predicted_age_corrected"].to_numpy(float)
    train_mean = oof["fold"].map({d["fold"]: d["metrics"]["train_mean_age"] for d in docs}).to_numpy(float)
    raw, cor = regression_metrics(age, pred), regression_metrics(age, corrected)
    raw["mae_ci95"] = list(bootstrap_ci(np.abs(pred - age)))
    cor["mae_ci95"] = list(bootstrap_ci(np.abs(corrected - age)))
    bands = AGE_BANDS.get(dataset, DECADES)
    raw["mae_by_age"], cor["mae_by_age"] = age_band_mae(age, pred, bands), age_band_mae(age, corrected, bands)
    fold_mae = [float(np.mean(np.abs(g["predicted_age"] - g["age"]))) for _, g in oof.groupby("fold")]
    mean_mae = float(np.mean(np.abs(age - train_mean)))
    corrections = [d["metrics"]["bias_correction"] for d in docs]
    val = np.array([_validation_correction(d) for d in docs])
    finite = np.isfinite(val).all(axis=1)
    return {
        "raw": raw, "corrected": cor, "mean_predictor_mae": mean_mae,
        "mae_ratio_to_mean_predictor": raw["mae"] / mean_mae if mean_mae > 0 else float("nan"),
        "fold_mae": fold_mae, "fold_mae_mean": float(np.mean(fold_mae)),
        "fold_mae_sd": float(np.std(fold_mae, ddof=1)) if len(fold_mae) > 1 else float("nan"),
        "bias_correction": {"formula": corrections[0].get("formula"), "method": corrections[0].get("method"),
                            "per_fold": corrections, "fitted_on": "val of each fold"},
        "correction_on_validation": {
            "raw_mae": float(val[finite, 0].mean()) if finite.any() else float("nan"),
            "corrected_mae_leave_one_out": float(val[finite, 1].mean()) if finite.any() else float("nan"),
            "n_folds": int(finite.sum()),
            "note": "mean over folds of the validation MAE, raw and corrected by a fit on the other validation subjects"},
    }


def _validation_correction(doc: dict) -> tuple[float, float]:
    """(raw, leave-one-out corrected) validation MAE of one fold, from its ``predictions_val.csv``."""
    path = Path(doc["predictions"]).with_name("predictions_val.csv")
    if not path.is_file():
        return float("nan"), float("nan")
    val = pd.read_csv(path)
    formula = doc["metrics"]["bias_correction"].get("formula", "cole")
    age, pred = val["age"].to_numpy(float), val["predicted_age"].to_numpy(float)
    loo = float(np.mean(np.abs(pred - age))) if formula == "identity" else leave_one_out_correction_mae(age, pred, formula)
    return float(np.mean(np.abs(pred - age))), loo


def _pooled_classification(docs: list[dict], oof: pd.DataFrame) -> dict:
    """Pooled out-of-fold classification metrics (class names from the fold documents)."""
    names = docs[0]["metrics"]["class_names"]
    index = {c: i for i, c in enumerate(names)}
    metrics = classification_metrics(oof["label"].map(index).to_numpy(int), oof["pred"].map(index).to_numpy(int), names)
    metrics["fold_accuracy"] = [float((g["label"] == g["pred"]).mean()) for _, g in oof.groupby("fold")]
    return metrics


def pool_folds(fold_dirs: list[str | Path], run_root: str | Path, results_dir: str | Path, publish: bool = True) -> list[Path]:
    """Pool the fold results of ``fold_dirs`` (one run folder per outer fold) per result name.

    Writes ``<run_root>/predictions_oof__<method>.csv`` and ``<run_root>/cv__<method>.json`` and,
    with ``publish``, ``<results_dir>/<method>__<dataset>.json`` and
    ``<results_dir>/predictions/<method>__<dataset>.csv``.

    Returns:
        The pooled result files written.

    Raises:
        ValueError: the folds come from different commits or fold files, or a participant is
            predicted by two folds.
    """
    by_name: dict[str, list[dict]] = {}
    for d in fold_dirs:
        for doc in fold_results(d):
            by_name.setdefault(f"{doc['method']}__{doc['dataset']}", []).append(doc)
    if not by_name:
        log.warning("no fold results in %s (smoke run or --publish=False): nothing pooled", run_root)
        return []
    written = []
    for name, docs in sorted(by_name.items()):
        docs = sorted(docs, key=lambda d: d["fold"])
        if len(docs) != len(fold_dirs):
            log.warning("%s: %d of %d folds have a result; not pooled", name, len(docs), len(fold_dirs))
            continue
        for key in ("commit", "split_sha256", "profile"):
            values = {d.get(key) for d in docs}
            if len(values) > 1:
                raise ValueError(f"{name}: the folds differ in {key} ({sorted(map(str, values))}); rerun them with one code")
        parts = []
        for d in docs:
            table = pd.read_csv(d["predictions"], dtype={"participant_id": str, "session_id": str}, keep_default_na=False,
                                na_values=[""])
            parts.append(table.assign(fold=d["fold"]))
        oof = pd.concat(parts, ignore_index=True)
        id_cols = [c for c in ID_COLUMNS if c in oof.columns]
        dup = oof.duplicated(id_cols)
        if dup.any():
            example = oof.loc[dup, id_cols].head(3).values.tolist()
            raise ValueError(f"{name}: {int(dup.sum())} rows are predicted by two folds, e.g. {example}")
        task = docs[0]["task"]
        metrics = _pooled_brain_age(docs, oof, docs[0]["dataset"]) if task == "brain_age" else _pooled_classification(docs, oof)
        pooled = {**docs[0], "metrics": metrics, "protocol": f"{len(docs)}-fold cross-validation, out-of-fold predictions",
                  "fold": None, "n_folds": len(docs),
                  "n_subjects": {"out_of_fold": int(oof["participant_id"].nunique()),
                                 "per_fold": [d["n_subjects"] for d in docs]},
                  "folds": [{"fold": d["fold"], "run_dir": d["run_dir"], "wall_time_s": d["wall_time_s"],
                             **{k: d["parameters"][k] for k in ("best_epoch", "epochs_run") if k in d.get("parameters", {})}}
                            for d in docs],
                  "wall_time_s": round(float(sum(d["wall_time_s"] for d in docs)), 1), "run_dir": str(run_root),
                  "predictions": f"{PREDICTIONS_DIR}/{name}.csv",
                  "finished_utc": max(d["finished_utc"] for d in docs)}
        oof = oof.round(4)
        write_csv(Path(run_root) / f"predictions_oof__{docs[0]['method']}.csv", oof)
        write_json(Path(run_root) / f"cv__{docs[0]['method']}.json", pooled)
        if publish:
            write_csv(Path(results_dir) / PREDICTIONS_DIR / f"{name}.csv", oof)
            written.append(write_json(Path(results_dir) / f"{name}.json", pooled))
        if task == "brain_age":
            headline = f"MAE {metrics['raw']['mae']:.2f} (folds {metrics['fold_mae_mean']:.2f} ± {metrics['fold_mae_sd']:.2f})"
        else:
            headline = f"accuracy {metrics['accuracy']:.3f}, balanced {metrics['balanced_accuracy']:.3f}"
        log.info("%s: %d-fold out-of-fold %s over %d subjects%s", name, len(docs), headline,
                 pooled["n_subjects"]["out_of_fold"], f" -> {written[-1]}" if publish else "")
    return written
