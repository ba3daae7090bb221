"""Brain-age runs shared by every 3D regressor, so they are trained and evaluated identically:
the run skeleton (:func:`train_brain_age`, :func:`evaluate_brain_age`) and the end of a run
(predictions, validation-fitted bias correction, test report, plots, result JSON)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.data.datasets import VolumeDataset
from common.data.preprocess import VolumeSpec, input_reference, prepare_volumes
from common.device import autocast_dtype, configure_numerics, precision_of_run, resolve_precision, select_device
from common.experiment import default_run_name, labelled_split_frame, run_folder
from common.io import save_torch, write_csv, write_json
from common.metrics import BiasCorrection, brain_age_report
from common.plots import gap_vs_age, scatter_predicted_vs_age, training_curves
from common.results import brain_age_predictions, split_counts, write_predictions, write_result
from common.runlog import RunLogger, environment_info, git_commit, run_config
from common.training import VAL_MAE, FitConfig, Selection, fit_model, load_checkpoint, predict

log = logging.getLogger(__name__)


#: A leakage check's permuted ages may correlate with the true ones at most this much (Pearson |r|).
MAX_PERMUTED_AGE_R = 0.05


def _pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.corrcoef(a, b)[0, 1]) if np.ptp(a) > 0 and np.ptp(b) > 0 else 0.0


def decorrelated_permutation(age: np.ndarray, rng: np.random.Generator, max_abs_r: float = MAX_PERMUTED_AGE_R,
                             tries: int = 10_000) -> np.ndarray:
    """A permutation of ``age`` (years, shape (N,)) whose Pearson correlation with ``age`` is at most
    ``max_abs_r`` in absolute value: the first of ``rng``'s draws that is, else the least correlated of
    ``tries`` draws (a split too small to get there).

    A plain permutation keeps a chance correlation with the true ages (SD about 1/sqrt(N): +0.17 for one
    IXI-HH fold's 110 training subjects, +0.23 for its 19 validation subjects), which a network fitting
    those ages may carry over. That fold's permuted-age model (65778e3) predicted the test ages with
    r 0.69 and a spread (SD) of 11.3 y, MAE 9.4 y against the mean-age predictor's 14.7 y. Removing
    the correlation closes that path; it does not make the outputs independent of the image's age:
    another fold, whose permutation correlated +0.05, also gave test r 0.76, with a spread of 1.2 y
    (MAE at the mean-age level).
    """
    age = np.asarray(age, float)
    best, best_r = age, np.inf
    for _ in range(tries):
        drawn = rng.permutation(age)
        r = abs(_pearson(age, drawn))
        if r < best_r:
            best, best_r = drawn, r
        if r <= max_abs_r:
            break
    return best


def report_brain_age(frame: pd.DataFrame, predicted_age: np.ndarray, run_dir: str | Path, title: str,
                     train_mean_age: float, correction_formula: str = "cole") -> tuple[dict, BiasCorrection]:
    """Fit the bias correction on the validation rows, report on the test rows.

    Args:
        frame: manifest rows with ``split`` (val and test rows at least) and ``age``.
        predicted_age: predictions (years) for ``frame``'s rows, same order.
        run_dir: where ``predictions_{val,test}.csv``, ``metrics_test.json`` and
            ``scatter_test.png`` are written.
        title: plot title.
        train_mean_age: mean age of the training split (the trivial predictor's constant).
        correction_formula: the method's source formula (:data:`common.metrics.CORRECTION_FORMULAS`).

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
    correction = BiasCorrection.fit(frame.loc[is_val, "age"].to_numpy(float), pred[is_val], fitted_on="val",
                                    formula=correction_formula)
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
                             corrected=correction.apply(pred[is_test], test["age"].to_numpy(float)))
    gap_vs_age(test["age"].to_numpy(float), pred[is_test], run_dir / "gap_vs_age_test.png", title,
               corrected=correction.apply(pred[is_test], test["age"].to_numpy(float)))
    log.info("test MAE %.2f (mean predictor %.2f), r %.3f; corrected MAE %.2f", report["raw"]["mae"],
             report["mean_predictor_mae"], report["raw"]["pearson_r"], report["corrected"]["mae"])
    return report, correction


def publish_brain_age_result(results_dir: str | Path, frame: pd.DataFrame, report: dict, **kwargs) -> Path:
    """Write the fold result of a brain-age run (see :func:`write_result`): ``frame`` (the run's
    rows, with the ``fold`` column of :func:`common.experiment.labelled_split_frame`) gives the fold,
    and the test predictions are the run folder's ``predictions_test.csv`` (:func:`report_brain_age`)."""
    fold = int(frame["fold"].iloc[0])
    return write_result(results_dir, task="brain_age", metrics=report, n_subjects=split_counts(frame), fold=fold,
                        predictions=Path(kwargs["run_dir"]) / "predictions_test.csv", **kwargs)


def publish_trained_run(cfg: dict, frame: pd.DataFrame, report: dict, model: nn.Module, run_dir: str | Path, *,
                        method: str, method_label: str, source: str, source_reported: dict | None, params: dict,
                        notes: list[str], fit: dict | None, wall_start: float, device: str,
                        readme_folder: str | None = None) -> Path:
    """Result JSON of a deep regressor evaluated by :func:`evaluate_brain_age` (``cfg`` is its
    ``config.json``); adds the best and last epochs when the run's ``fit`` summary is given."""
    if fit:
        params = {**params, "best_epoch": fit["best_epoch"], "epochs_run": fit["epochs_run"],
                  "nonfinite_steps": fit.get("nonfinite_steps", 0)}
    path = publish_brain_age_result(
        cfg["results_dir"], frame, report, method=method, method_label=method_label, source=source,
        dataset=cfg["dataset"], profile=cfg["profile"], precision=precision_of_run(cfg),
        source_reported=source_reported, parameters=params,
        n_parameters=sum(p.numel() for p in model.parameters()), wall_time_s=time.time() - wall_start,
        environment=environment_info(select_device(device)), commit=git_commit(), run_dir=run_dir, notes=notes,
        readme_folder=readme_folder)
    log.info("wrote %s", path)
    return path


@dataclass
class RegressorSetup:
    """What a method contributes to :func:`train_brain_age`.

    Attributes:
        model: maps (B, 1, D, H, W) -> (B,) age in years.
        optimizer, scheduler: stepped by :func:`common.training.fit_model` (scheduler per epoch).
        loss_fn: ``loss_fn(predicted_years, age_years)``.
        augment: training augmentation factory ``seed -> transform`` (or None).
        checkpoint_meta: extra checkpoint entries, at least ``model_args`` needed to rebuild the model.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: Callable
    augment: Callable | None
    checkpoint_meta: dict


#: A rule that removes rows before preprocessing: ``(predicate(frame) -> bool Series, reason)``.
RowExclusion = tuple[Callable[[pd.DataFrame], pd.Series], str]


def apply_exclusion(frame: pd.DataFrame, rule: RowExclusion | None, exclusions, stage: str) -> pd.DataFrame:
    """Drop the rows ``rule`` selects, logging each with its reason; returns the kept rows."""
    if rule is None:
        return frame
    predicate, reason = rule
    drop = predicate(frame).to_numpy(bool)
    for row in frame[drop].itertuples():
        exclusions.add(row.dataset, row.image_path, reason, stage)
    return frame[~drop].reset_index(drop=True)


def _loss_label(loss_fn) -> str:
    """Axis label naming a brain-age loss and its unit."""
    name = type(loss_fn).__name__
    return {"HuberLoss": "Huber loss (years)", "MSELoss": "MSE (years²)", "L1Loss": "L1 loss (years)",
            "ZScoredMSE": "MSE of z-scored age", "TSANLoss": "MSE + λ·ranking (years², mixed)"}.get(name, name)


def usable_frame(dataset: str, data_root: str | None, results_dir: str | Path, max_per_split: int | None,
                 exclude: RowExclusion | None, stage: str, spec: VolumeSpec | None = None,
                 cache_dir: str | Path | None = None, fold: int = 0):
    """The labelled rows of ``dataset`` that a method can use, split as outer fold ``fold``:
    ``exclude`` applied (logged under ``stage``) and, with ``spec``, preprocessed into the cache
    (``cache_path`` column).

    Returns:
        ``(frame, exclusions)``.
    """
    frame, exclusions = labelled_split_frame(dataset, data_root, results_dir, max_per_split, fold)
    frame = apply_exclusion(frame, exclude, exclusions, stage)
    if spec is not None:
        frame = prepare_volumes(frame, spec, cache_dir, exclusions)
    return frame, exclusions


def volume_loader(frame: pd.DataFrame, batch_size: int, train: bool, seed: int, augment: Callable | None = None,
                  columns: tuple[str, ...] = ()) -> DataLoader:
    """DataLoader over cached volumes: shuffled with a seeded generator and ``drop_last`` for training;
    ``columns``: further frame columns in each batch (:class:`common.data.datasets.VolumeDataset`)."""
    ds = VolumeDataset(frame, augment=augment(seed) if (train and augment is not None) else None, columns=columns)
    return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train and len(ds) > batch_size,
                      num_workers=0, generator=torch.Generator().manual_seed(seed))


def train_brain_age(*, method: str, dataset: str, profile: str, hp: dict, spec: VolumeSpec,
                    build: Callable[[pd.DataFrame], RegressorSetup], seed: int, device: str, run_name: str | None,
                    runs_dir: str, results_dir: str, cache_dir: str, data_root: str | None,
                    max_per_split: int | None, resume: bool, fold: int = 0, selection: Selection = VAL_MAE,
                    early_stopping_patience: int | None = None, stop_if_constant: int | None = None,
                    exclude: RowExclusion | None = None,
                    annotate: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                    permute_train_ages: bool = False) -> tuple[Path, pd.DataFrame, dict, float]:
    """Shared training run of a 3D brain-age regressor on outer fold ``fold`` of ``dataset``'s shared
    folds, in :func:`common.experiment.run_folder`.

    ``hp`` must hold ``epochs``, ``batch_size``, ``grad_clip``, ``amp_dtype`` (requested precision,
    :func:`common.device.resolve_precision`) and ``precise_bn``; every entry is recorded in
    ``config.json``, with the precision in force as ``precision``. ``exclude`` removes rows the method cannot use (logged).
    ``annotate(frame)`` may add columns or move rows out of the ``train`` split after preprocessing
    (TSAN's out-of-fold stage 2); batches carry every column named in the model's ``extra_inputs``.
    ``stop_if_constant``: :attr:`common.training.FitConfig.stop_if_constant`.
    ``permute_train_ages`` (the leakage check): the training rows' ages are shuffled among them, and
    the validation rows' among them, with ``seed`` before training (:func:`decorrelated_permutation`),
    so neither the fit nor the epoch choice nor the bias correction sees a true age (test keeps its
    true ages); the run folder's
    ``training_ages.csv`` lists the split, true and used age of each of those rows.
    ``build(train_frame)`` returns the method's model,
    optimizer, scheduler, loss and augmentation (it may use training-split statistics only).

    Returns:
        ``(run_dir, frame, fit, t_start)`` with ``frame`` the usable rows of all splits and ``t_start``
        the ``time.time()`` of the start, moved back by the training seconds a resumed run had kept.

    Raises:
        FileExistsError: the run folder holds a run and ``resume`` is False.
        ValueError: fewer than 2 usable training or 3 usable validation subjects (checked before
            training).
    """
    t_start = time.time()
    dev = select_device(device)
    precision = resolve_precision(dev, hp["amp_dtype"])
    numerics = configure_numerics(dev, precision)
    if resume and not run_name:
        raise ValueError("--resume needs --run_name of the run to continue")
    run_name = run_name or default_run_name(profile)
    run_dir = run_folder(runs_dir, method, dataset, run_name, fold)
    if run_dir.exists() and not resume and (run_dir / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume or another --run_name")
    frame, exclusions = usable_frame(dataset, data_root, results_dir, max_per_split, exclude, method, spec, cache_dir,
                                     fold)
    if annotate is not None:
        frame = annotate(frame)
    run_dir.mkdir(parents=True, exist_ok=True)
    exclusions.write(run_dir / "exclusions.csv")
    if permute_train_ages:
        rng, used = np.random.default_rng(seed), []
        for split in ("train", "val"):
            rows = (frame["split"] == split).to_numpy()
            true_age = frame.loc[rows, "age"].to_numpy(float)
            frame.loc[rows, "age"] = decorrelated_permutation(true_age, rng)
            used.append(pd.DataFrame({"split": split, "participant_id": frame.loc[rows, "participant_id"].to_numpy(),
                                      "age_true": true_age, "age_used": frame.loc[rows, "age"].to_numpy(float)}))
        write_csv(run_dir / "training_ages.csv", pd.concat(used, ignore_index=True))
        log.info("leakage check: the training and validation ages are permuted within each split (seed %d; "
                 "correlation with the true ages: %s)", seed,
                 ", ".join(f"{u['split'].iloc[0]} {_pearson(u['age_true'], u['age_used']):+.3f}" for u in used))
    train_frame, val_frame = frame[frame["split"] == "train"], frame[frame["split"] == "val"]
    if len(train_frame) < 2 or val_frame["participant_id"].nunique() < 3:
        raise ValueError(f"fold {fold}: too few usable subjects ({len(train_frame)} train, {len(val_frame)} val after "
                         "exclusions; training needs 2, the validation split's bias correction 3)")
    config = {"method": method, "dataset": dataset, "fold": int(fold), "profile": profile, **hp, "seed": seed,
              "permute_train_ages": bool(permute_train_ages),
              "precision": precision,
              "numerics": numerics,
              "run_dir": str(run_dir), "data_root": data_root, "results_dir": results_dir, "cache_dir": cache_dir,
              "max_per_split": max_per_split, "preprocess": spec.to_dict(),
              "n_images": {s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")}}
    logger = RunLogger(run_dir, config, dev, resume=resume)
    log.info("run %s: %s on %s, profile %s, precision %s on %s; %d train / %d val subjects", run_dir, method, dataset,
             profile, precision, numerics["cpu_model"] if dev.type == "cpu" else dev, len(train_frame), len(val_frame))
    torch.manual_seed(seed)
    setup = build(train_frame)
    setup.model.to(dev)
    train_mean = float(train_frame["age"].mean())
    meta = {"method": method, "preprocess": spec.to_dict(), "train_mean_age": train_mean, "dataset": dataset,
            "fold": int(fold), "train_age_range": [float(train_frame["age"].min()), float(train_frame["age"].max())],
            "input_reference": input_reference(train_frame["image_path"], spec, cache_dir),
            "commit": git_commit(), **setup.checkpoint_meta}
    columns = tuple(k for k in getattr(setup.model, "extra_inputs", ())
                    if k in frame.columns and k not in VolumeDataset.ITEM_KEYS)
    fit = fit_model(
        setup.model, setup.optimizer, setup.scheduler, setup.loss_fn,
        volume_loader(train_frame, hp["batch_size"], True, seed, setup.augment, columns),
        volume_loader(val_frame, 8, False, seed, columns=columns),
        dev, FitConfig(epochs=hp["epochs"], grad_clip=hp["grad_clip"], amp_dtype=autocast_dtype(precision), seed=seed,
                       precise_bn=hp["precise_bn"], early_stopping_patience=early_stopping_patience,
                       stop_if_constant=stop_if_constant),
        run_dir, logger, meta, resume=resume, bn_loader=volume_loader(train_frame, 8, False, seed, columns=columns),
        selection=selection)
    logger.close()
    training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png", f"{method} on {dataset} ({profile})",
                    metric=selection.name, loss_label=_loss_label(setup.loss_fn), best_epoch=fit["best_epoch"])
    log.info("training done: best %s %.3f at epoch %d (%.0f s)", selection.name, fit["best_val"], fit["best_epoch"],
             fit["train_seconds"])
    return run_dir, frame, fit, t_start - fit["seconds_before_resume"]


def evaluate_brain_age(run_dir: str | Path, method: str, model_from_checkpoint: Callable[[dict], nn.Module],
                       device: str = "auto", frame: pd.DataFrame | None = None, exclude: RowExclusion | None = None,
                       correction_formula: str = "cole") -> tuple[dict, pd.DataFrame, dict, nn.Module]:
    """Test a finished run: predict val and test with ``best.pt``, fit the bias correction
    (``correction_formula``, the method's source formula) on validation, report on test, and store
    the correction in ``best.pt``.

    Returns:
        ``(report, frame, config, model)``.
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    dev = select_device(device)
    ckpt = load_checkpoint(run_dir / "best.pt", method)
    if frame is None:
        frame, _ = usable_frame(cfg["dataset"], cfg["data_root"], cfg["results_dir"], cfg["max_per_split"], exclude,
                                method, VolumeSpec.from_dict(ckpt["preprocess"]), cfg["cache_dir"], cfg.get("fold", 0))
    frame = frame[frame["split"].isin(["train", "val", "test"])].reset_index(drop=True)
    model = model_from_checkpoint(ckpt).to(dev)
    model.load_state_dict(ckpt["model_state"])
    eval_frame = frame[frame["split"].isin(["val", "test"])].reset_index(drop=True)
    idx, _, pred = predict(model, volume_loader(eval_frame, 8, False, 0), dev, autocast_dtype(precision_of_run(cfg)))
    predicted = np.empty(len(eval_frame))
    predicted[idx] = pred
    report, correction = report_brain_age(eval_frame, predicted, run_dir, f"{method} on {cfg['dataset']} ({cfg['profile']})",
                                          train_mean_age=ckpt["train_mean_age"], correction_formula=correction_formula)
    save_torch(run_dir / "best.pt", {**ckpt, "bias_correction": correction.to_dict()})
    return report, frame, cfg, model
