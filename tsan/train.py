"""Train and test TSAN's two stages on a shared subject-level split.

    python -m tsan.train pretrain_sorter --seq_len=8
    python -m tsan.train train_first_stage --dataset=ixi_hh
    python -m tsan.train train_second_stage --first_stage=runs/tsan_stage1/ixi_hh/<run_name>
    python -m tsan.train test_first_stage --run_dir=runs/tsan_stage1/ixi_hh/<run_name>
    python -m tsan.train test_second_stage --run_dir=runs/tsan_stage2/ixi_hh/<run_name>

Source: Liu et al., MICCAI 2020; Cheng et al., IEEE TMI 2021; public code "TSAN-brain-age-estimation"
(``bash_train_first_stage.sh``: batch 32, Adam amsgrad lr 1e-3, weight decay 5e-4, lambda 10, beta 1,
150 epochs, tied-rank sorter of length 32; ``bash_train_second_stage.sh``: batch 32, SGD lr 1e-5,
dis_range 5, non-tied sorter of length 32). Deviations are listed in tsan/README.md.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.brain_age import RegressorSetup, evaluate_brain_age, publish_trained_run, train_brain_age, usable_frame, volume_loader
from common.cli import declare_profiles
from common.cli import run as run_cli
from common.cv import cross_validated
from common.data.augment import acquisition_augmentation, seeded
from common.data.preprocess import VolumeSpec
from common.device import default_profile, select_device
from common.experiment import default_run_name, publication, resolve_profile, run_folder
from common.io import write_csv, write_json
from common.runlog import run_config, setup_logging
from common.training import adam, load_checkpoint, predict
from tsan.model import FirstStage, ScaleDense, SecondStage, SecondStageScaleDense, discretize_age, init_weights
from tsan.ranking import RankingLoss, TSANLoss, load_sorter, pretrain_sorter

log = logging.getLogger("tsan")

SOURCE = 'Liu et al. MICCAI 2020 / Cheng et al. IEEE TMI 2021; public code "TSAN-brain-age-estimation"'
SOURCE_REPORTED = {
    "dataset": "6,586 healthy T1 scans (pooled public datasets)", "mae": 2.428, "pearson_r": 0.985,
    "recipe": "the papers' two-stage model (Cheng et al. TMI 2021, Table), FSL preprocessing (FAST bias field, FLIRT + "
              "FNIRT to MNI 2 mm, brain mask carried back from the template), batch 32, 150 epochs per stage; the "
              "public code ships no result files"}
#: The source's bias correction (bias_correction.py, removed from its repository in 2021): the brain
#: age gap regressed on age, the fit subtracted (common.metrics); here fitted on validation.
CORRECTION = "gap_on_age"
STAGE1, STAGE2 = "tsan_stage1", "tsan_stage2"
#: Stage-2 variants: the faithful default and the non-default fix of the collapse study (README).
VARIANTS = {"faithful": STAGE2, "normalized_d": "tsan_stage2_normd", "out_of_fold": "tsan_stage2_oof"}
#: Run folder of the stage-1 models of the ``out_of_fold`` variant (not published).
STAGE1_FOLD = "tsan_stage1_fold"
#: Split label of the training subjects a fold model does not see.
HELD_OUT = "oof_held_out"

_SOURCE_SORTER = dict(sorter_hidden=512, sorter_steps=562_400, sorter_lr_step=98_420, sorter_batch=256)
#: ``paper``: the public code's settings (SoDeep's sorter recipe: 400 epochs of 1,406 batches, lr
#: halved every 70 epochs) with the shared preprocessing's SyN. ``cpu``: registration affine only, input
#: average-pooled to 4 mm, half the width, batch 8 for both stages (sorters of length 8), few epochs and
#: a smaller sorter, so that
#: both stages fit about 15 minutes per dataset on 2 cores (see README "Deviations").
PROFILES = {
    "paper": dict(registration="mni_brain_syn", use_dataset_mask=False, downsample=1, nb_filter=8, nb_block=5,
                  batch_size=32, stage2_batch_size=32, epochs=150, stage2_epochs=150, lr=1e-3, stage2_lr=1e-5,
                  weight_decay=5e-4, lbd=10.0, beta=1.0, dis_range=5.0, lr_patience=5, lr_factor=0.5,
                  early_stopping=20, grad_clip=None, amp_dtype="fp32", precise_bn=False, oof_folds=5, smooth_fwhm_mm=0.0,
                  acq_augment=0.0, intensity="zscore_nonzero", **_SOURCE_SORTER),
}
#: ``cpu`` smooths the 2 mm brain to 6 mm FWHM (one effective resolution whatever the scan's): chosen on
#: validation, IXI-HH stage 1, seed 42 (retry seeds where a run died): best validation MAE fold 0 7.94 vs
#: 8.84 / 8.29 without (seeds 43 / 44), fold 1 6.76 vs 7.41; and the prediction moves 1.6-2.2 y instead of
#: 5.1-12.3 y when the scan comes at 1, 1.5 or 3 mm (scripts/bench.py --sections=invariance, 10 fold-0
#: test scans; tsan/README.md). Dark-background intensities (``scaled_brain``) and smoothing with them
#: were worse on validation (9.61 and 23.5 on fold 0) and are not used.
#: Stage 2 trains 2 epochs (was 6): in the main job at 65778e3 (``results/validation_curves.md``, 5 folds
#: each) the fold-mean validation MAE of the faithful stage 2 was best after its first epoch on both
#: datasets (IXI-HH 6.82 y, 6.86 after the sixth; ds000228 2.92 y, 3.01 after the sixth); the checkpoint
#: each fold chose came from the first two epochs in 3 of 5 folds on IXI-HH and 4 of 5 on ds000228, and on
#: ds000228 the mean of the folds' best validation MAE is 2.91 y within two epochs vs 2.90 y within six.
PROFILES["cpu"] = dict(PROFILES["paper"], registration="mni_brain", downsample=2, nb_filter=4, batch_size=8, smooth_fwhm_mm=6.0,
                       stage2_batch_size=8, epochs=12, stage2_epochs=2, oof_folds=2, sorter_hidden=128, sorter_steps=600,
                       sorter_lr_step=300,
                       sorter_batch=128)

#: Subjects without a recorded sex cannot be fed to TSAN (sex is an input).
UNKNOWN_SEX = (lambda frame: ~frame["sex"].isin(["M", "F"]), "sex unknown: TSAN takes sex as an input")


def _spec(hp: dict) -> VolumeSpec:
    return VolumeSpec(shape=(91, 109, 91), spacing_mm=(2.0, 2.0, 2.0), pipeline=hp["registration"],
                      apply_mask=bool(hp["use_dataset_mask"]), intensity=hp.get("intensity", "zscore_nonzero"),
                      smooth_fwhm_mm=float(hp.get("smooth_fwhm_mm", 0.0)))


def _augment(hp: dict):
    """Training augmentation factory ``seed -> transform``: none in the source; with ``acq_augment`` > 0
    the shared acquisition augmentation on the 2 mm input (common/data/augment.py)."""
    prob = float(hp.get("acq_augment", 0.0))
    return functools.partial(_seeded_acquisition, prob) if prob > 0 else None


def _seeded_acquisition(prob: float, seed: int):
    return seeded(acquisition_augmentation(prob, 2.0), seed)


#: The source's sorters: stage 1 loads a tied-rank one, stage 2 a non-tied one (bash_train_*_stage.sh).
STAGE_SORTER_TIED = {1: True, 2: False}


def sorter_path(seq_len: int, hp: dict, cache_dir: str, seed: int = 0, tied: bool = False) -> Path:
    """Where the sorter for ``seq_len``, tied or not, and the profile's recipe is cached."""
    return (Path(cache_dir) / "tsan" / f"sorter_len{seq_len}{'_tied' if tied else ''}_h{hp['sorter_hidden']}"
            f"_steps{hp['sorter_steps']}_b{hp['sorter_batch']}_seed{seed}.pt")


def get_sorter(seq_len: int, hp: dict, cache_dir: str, seed: int = 0, tied: bool = False):
    """The cached sorter for ``seq_len``, pretrained first if missing (SoDeep weights cannot be downloaded)."""
    path = sorter_path(seq_len, hp, cache_dir, seed, tied)
    if not path.exists():
        log.info("no sorter at %s: pretraining one (%d steps)", path, hp["sorter_steps"])
        pretrain_sorter(seq_len, steps=hp["sorter_steps"], batch_size=hp["sorter_batch"], lr_step=hp["sorter_lr_step"],
                        hidden=hp["sorter_hidden"], seed=seed, out_path=path, tied=tied)
    sorter, report = load_sorter(path)
    log.info("sorter %s: validation Spearman %.3f, L1 %.4f", path.name, report["val_spearman"], report["val_l1"])
    return sorter, report


def pretrain(seq_len: int = 8, profile: str | None = None, seed: int = 0, cache_dir: str = ".cache",
             force: bool = False, stage: int = 1) -> dict:
    """Pretrain (or find cached) the SoDeep sorter for sequences of ``seq_len`` (= the training batch size).

    Args:
        seq_len: sequence length (the stage's batch size: ``paper`` 32 for both stages, ``cpu`` 8).
        stage: 1 (a tied-rank sorter, as the source's stage 1) or 2 (a non-tied one).
        profile: ``paper`` (SoDeep's recipe) or ``cpu`` (smaller, shorter).
        seed: random seed of the synthetic sequences and the initialisation.
        cache_dir: the sorter is written to ``<cache_dir>/tsan/``.
        force: retrain even if cached.

    Returns:
        The sorter's report (validation L1 and Spearman correlation, steps, seconds).
    """
    setup_logging()
    hp = resolve_profile(PROFILES, profile or default_profile(), {})
    if stage not in STAGE_SORTER_TIED:
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    path = sorter_path(seq_len, hp, cache_dir, seed, STAGE_SORTER_TIED[stage])
    if force and path.exists():
        path.unlink()
    return get_sorter(seq_len, hp, cache_dir, seed, STAGE_SORTER_TIED[stage])[1]


def _loss(hp: dict, batch: int, cache_dir: str, seed: int, stage: int) -> tuple[TSANLoss, dict]:
    sorter, report = get_sorter(batch, hp, cache_dir, seed, STAGE_SORTER_TIED[stage])
    return TSANLoss(RankingLoss(sorter, hp["beta"]), hp["lbd"]), report


def build_first_stage(args: dict) -> FirstStage:
    """Stage 1 from its ``model_args`` (``nb_filter``, ``nb_block``, ``downsample``), sex input on."""
    return FirstStage(ScaleDense(args["nb_filter"], args["nb_block"], use_sex=True), args["downsample"])


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    """Rebuild the untrained stage-1 (:class:`FirstStage`) or stage-2 (:class:`SecondStage`, its frozen
    stage 1 inside) model of a checkpoint's ``model_args``; ``load_state_dict`` restores the weights."""
    args = ckpt["model_args"]
    if "stage1" not in args:
        return build_first_stage(args)
    net = SecondStageScaleDense(args["nb_filter"], args["nb_block"], True, args["normalize_discrete_age"],
                                args["age_mean"], args["age_std"])
    return SecondStage(build_first_stage(args["stage1"]), net, args["dis_range"])


def _stage1_build(hp: dict, cache_dir: str) -> Callable[[pd.DataFrame], RegressorSetup]:
    """Stage 1's model, Adam (amsgrad), ReduceLROnPlateau and loss for :func:`train_brain_age`."""
    loss, sorter_report = _loss(hp, hp["batch_size"], cache_dir, 0, stage=1)

    def build(train_frame: pd.DataFrame) -> RegressorSetup:
        args = {"nb_filter": hp["nb_filter"], "nb_block": hp["nb_block"], "downsample": hp["downsample"]}
        model = build_first_stage(args)
        model.apply(init_weights)
        optimizer = adam(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"], amsgrad=True)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=hp["lr_factor"], patience=hp["lr_patience"])
        return RegressorSetup(model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss, augment=_augment(hp),
                              checkpoint_meta={"model_args": args, "sorter": sorter_report})

    return build


@cross_validated(lambda a: Path(a["runs_dir"]) / STAGE1 / a["dataset"])
def train_first_stage(dataset: str = "ixi_hh", profile: str | None = None, data_root: str | None = None,
                      epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                      lbd: float | None = None, nb_filter: int | None = None, nb_block: int | None = None,
                      downsample: int | None = None,
                      registration: str | None = None, use_dataset_mask: bool | None = None,
                      smooth_fwhm_mm: float | None = None, acq_augment: float | None = None,
                      intensity: str | None = None, amp_dtype: str | None = None, seed: int = 42,
                      device: str = "auto", run_name: str | None = None, runs_dir: str = "runs",
                      results_dir: str = "results", cache_dir: str = ".cache", max_per_split: int | None = None,
                      resume: bool = False, publish: bool = True, fold: int | str = "all") -> str:
    """Stage 1: ScaleDense trained with MSE + lambda * (ranking + beta * age difference), Adam (amsgrad),
    ReduceLROnPlateau on validation MAE, early stopping; best checkpoint by validation MAE; then test.

    Args:
        dataset: dataset folder (``ixi_hh``, ``ds000228``, a BIDS folder).
        profile: ``paper`` or ``cpu`` (default: ``paper`` with a GPU, else ``cpu``).
        data_root: data folder (default: $DATA_ROOT, ../shared/data, data/).
        epochs, batch_size, lr, lbd, nb_filter, downsample: override the profile.
        nb_block: number of ScaleDense blocks (paper 5; fewer only for inputs coarser than 4 mm, e.g. tests).
        registration: the shared preprocessing (deepbet brain extraction, N4, registration of the brain
            to the MNI152 brain; common/data/standardize.py) with ``mni_brain_syn`` (affine + SyN, paper)
            or ``mni_brain`` (affine, cpu); the earlier ``ants_syn_mni`` / ``ants_affine_mni`` (the
            dataset's masks, no bias-field correction); or ``monai`` (no registration: resample to 2 mm
            and pad/crop to 91x109x91, for data already in MNI space and for tests).
        use_dataset_mask: with ``ants_*`` or ``monai``: skull-strip with the dataset's brain mask
            (IXI-HH DLMUSE labels, ds000228 analysis masks) before registration; False: the template
            brain mask after registration. The ``mni_brain*`` pipelines extract the brain themselves.
        smooth_fwhm_mm: ``mni_brain*`` only: Gaussian smoothing inside the brain (FWHM, mm), one
            effective resolution for scans acquired at 1-3 mm; 0 = none (the source).
        acq_augment: probability of each acquisition augmentation (blur, noise, small affine;
            common/data/augment.py) in training; 0 = off (the source has none).
        intensity: ``zscore_nonzero`` (z-score inside the brain, the source's) or, ``mni_brain*`` only,
            ``scaled_brain`` (scaled so the brain's 99th percentile is 5, background 0). Stage 2 takes
            smoothing, augmentation and intensity from its first stage.
        amp_dtype: training precision: ``fp32`` (both profiles; the source trains in fp32), ``bf16``
            (autocast; fast only on CPUs with native bf16 or on GPUs) or ``fp16`` (CUDA only).
        seed: random seed.
        device: ``auto``, ``cpu``, ``cuda``...
        run_name: run folder name.
        runs_dir, results_dir, cache_dir: run folders, split files and result JSON, caches.
        max_per_split: first N participants per split (smoke runs).
        resume: continue ``run_name`` from ``last.pt``.
        publish: write ``results/tsan_stage1__<dataset>.json``.
        fold: outer cross-validation fold to run (0..4), or ``all``: every fold, then the pooled
            out-of-fold result (common/cv.py).

    Returns:
        The run folder.
    """
    setup_logging()
    profile = profile or default_profile()
    overrides = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, lbd=lbd, nb_filter=nb_filter, nb_block=nb_block, downsample=downsample,
        registration=registration, use_dataset_mask=use_dataset_mask, smooth_fwhm_mm=smooth_fwhm_mm,
        acq_augment=acq_augment, intensity=intensity, amp_dtype=amp_dtype)
    hp = resolve_profile(PROFILES, profile, overrides)
    publish = publication(publish, results_dir, PROFILES, profile, overrides, max_per_split)
    if resume and not run_name:
        raise ValueError("--resume needs --run_name of the run to continue")
    run_dir, frame, fit, t0 = train_stage1_alive(
        method=STAGE1, dataset=dataset, profile=profile, hp=hp, seed=seed, device=device,
        run_name=run_name or default_run_name(profile), runs_dir=runs_dir, results_dir=results_dir,
        cache_dir=cache_dir, data_root=data_root, max_per_split=max_per_split, resume=resume, fold=fold)
    if hp["registration"].startswith(("ants", "mni_brain")):
        write_registration_qc(frame, run_dir)
    _evaluate(str(run_dir), STAGE1, publish, device, frame, t0, fit)
    return str(run_dir)


#: Seeds tried by :func:`train_stage1_alive` before giving up.
STAGE1_ATTEMPTS = 3
#: A retry's seed is ``seed + attempt * RETRY_SEED_STRIDE``: far from the neighbouring seeds a seed study
#: (scripts/noise_floor.py) trains, so a retried seed 42 is never the same model as seed 43.
RETRY_SEED_STRIDE = 1000
#: Stage 1 stops after this many epochs of one constant validation prediction (a dead output, which no
#: later epoch revived in any run here: the dead runs stayed at one value for all their 12 epochs), and
#: is retried at once instead of training on.
DEAD_EPOCHS = 3


def load_best(run_dir: str | Path, device: str) -> tuple[torch.nn.Module, dict, torch.device]:
    """``(model, checkpoint, device)``: a TSAN run's ``best.pt`` rebuilt on ``device``, in eval mode."""
    ckpt = load_checkpoint(Path(run_dir) / "best.pt")
    dev = select_device(device)
    model = model_from_checkpoint(ckpt).to(dev)
    model.load_state_dict(ckpt["model_state"])
    return model.eval(), ckpt, dev


def predict_ages(run_dir: str | Path, frame: pd.DataFrame, device: str) -> np.ndarray:
    """Ages (years, (N,)) the run's ``best.pt`` predicts for the N rows of ``frame``, in row order."""
    model, _, dev = load_best(run_dir, device)
    idx, _, pred = predict(model, volume_loader(frame.reset_index(drop=True), 8, False, 0), dev)
    ages = np.empty(len(frame))
    ages[idx] = pred
    return ages


def constant_output(run_dir: Path, frame: pd.DataFrame, device: str) -> bool:
    """True if the run's ``best.pt`` gives the same age for every row of ``frame`` (validation rows):
    ScaleDense ends in a ReLU, and when its input goes negative for every subject early in training
    the output is 0 for all of them and no gradient ever flows again (a dead output unit)."""
    return bool(np.ptp(predict_ages(run_dir, frame, device)) < 1e-6)


def train_stage1_alive(*, method: str, dataset: str, profile: str, hp: dict, seed: int, device: str, run_name: str,
                       runs_dir: str, results_dir: str, cache_dir: str, data_root: str | None,
                       max_per_split: int | None, resume: bool, fold: int = 0,
                       annotate=None) -> tuple[Path, pd.DataFrame, dict, float]:
    """:func:`train_brain_age` for stage 1, retried with another seed (``seed + attempt *``
    :data:`RETRY_SEED_STRIDE`, at most :data:`STAGE1_ATTEMPTS` seeds) when the trained network's output
    is dead (:func:`constant_output` on the validation rows), with a warning; the dead run is kept
    beside, as ``<run folder>.dead-seed<s>``, and the wall time counts every attempt.

    Raises:
        RuntimeError: the output died with every seed.
    """
    t_first = None
    seeds = [seed + attempt * RETRY_SEED_STRIDE for attempt in range(STAGE1_ATTEMPTS)]
    for attempt, attempt_seed in enumerate(seeds):
        run_dir, frame, fit, t0 = train_brain_age(
            method=method, dataset=dataset, profile=profile, hp=hp, spec=_spec(hp), build=_stage1_build(hp, cache_dir),
            seed=attempt_seed, device=device, run_name=run_name, runs_dir=runs_dir, results_dir=results_dir,
            cache_dir=cache_dir, data_root=data_root, max_per_split=max_per_split, resume=resume and attempt == 0,
            fold=fold, early_stopping_patience=hp["early_stopping"], stop_if_constant=DEAD_EPOCHS, exclude=UNKNOWN_SEX,
            annotate=annotate)
        t_first = t0 if t_first is None else t_first
        if not constant_output(run_dir, frame[frame["split"] == "val"], device):
            return run_dir, frame, fit, t_first
        dead = run_dir.with_name(f"{run_dir.name}.dead-seed{attempt_seed}")
        run_dir.rename(dead)
        log.warning("stage 1 predicts one constant age for every validation subject (dead ReLU output; kept in %s); "
                    "retraining with seed %d", dead, attempt_seed + RETRY_SEED_STRIDE)
    raise RuntimeError(f"stage 1 output died with seeds {', '.join(map(str, seeds))}; see {run_dir}")


def write_registration_qc(frame: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """``registration_qc.csv`` (similarity to the template, flagged outliers) and
    ``registration_montage.png`` (the 5 least similar volumes and 5 others) in the run folder."""
    from common.data.registration import qc_montage, registration_qc

    qc = registration_qc(frame)
    write_csv(Path(run_dir) / "registration_qc.csv", qc)
    order = qc["similarity"].sort_values().index
    shown = list(order[:5]) + list(order[5:][:: max(1, len(order[5:]) // 5)][:5])
    qc_montage(frame.loc[shown, "cache_path"].tolist(),
               [f"{qc.at[i, 'participant_id']} r={qc.at[i, 'similarity']:.2f}" for i in shown],
               Path(run_dir) / "registration_montage.png")
    if qc["flagged"].any():
        log.warning("registration QC flagged %d volumes: %s", int(qc["flagged"].sum()),
                    qc.loc[qc["flagged"], "participant_id"].tolist())
    return qc


def _first_stage_config(first_stage: str | Path) -> dict:
    """``config.json`` of a stage-1 run: of its fold 0 when ``first_stage`` is a cross-validated run
    (fold folders inside), else of ``first_stage`` itself.

    Raises:
        FileNotFoundError: neither holds a ``config.json``.
    """
    for cfg in (Path(first_stage) / "fold0" / "config.json", Path(first_stage) / "config.json"):
        if cfg.is_file():
            return json.loads(cfg.read_text())
    raise FileNotFoundError(f"{first_stage} is not a stage-1 run (no config.json, no fold0/config.json)")


def _variant_method(variant: str) -> str:
    """The result name of a stage-2 variant (:data:`VARIANTS`).

    Raises:
        ValueError: unknown variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    return VARIANTS[variant]


@cross_validated(lambda a: Path(a["runs_dir"]) / _variant_method(a["variant"]) / _first_stage_config(a["first_stage"])["dataset"],
                 dataset_of=lambda a: _first_stage_config(a["first_stage"])["dataset"],
                 per_fold=lambda a, k: {**a, "first_stage": str(Path(a["first_stage"]) / f"fold{k}")})
def train_second_stage(first_stage: str, variant: str = "faithful", profile: str | None = None,
                       data_root: str | None = None, epochs: int | None = None, batch_size: int | None = None,
                       lr: float | None = None, lbd: float | None = None, dis_range: float | None = None,
                       amp_dtype: str | None = None, seed: int = 42, device: str = "auto",
                       run_name: str | None = None, runs_dir: str = "runs",
                       results_dir: str = "results", cache_dir: str = ".cache", max_per_split: int | None = None,
                       resume: bool = False, publish: bool = True, fold: int | str = "all") -> str:
    """Stage 2: the residual network on top of the frozen stage 1 (discretised age ``d`` as input),
    MSE(r, y - d) + lambda * ranking terms on ``d + r``, SGD; then test.

    Args:
        first_stage: a finished stage-1 run: the cross-validated run (fold folders inside) with
            ``fold=all``, or one fold's run folder (its ``best.pt``, dataset and preprocessing) with
            ``fold=k``; stage 2 of fold k builds on stage 1 of fold k.
        variant: ``faithful`` (the public code), ``normalized_d`` (the ``d`` branch gets the
            discretised age standardised with the training split's age mean and SD) or ``out_of_fold``
            (stage 2 trains on stage-1 ages of models that did not see the subject,
            :func:`out_of_fold_stage1_ages`); see README, "The stage-2 question".
        profile: ``paper`` or ``cpu``; must match the stage-1 run's preprocessing.
        data_root: data folder.
        epochs, batch_size, lr, lbd, dis_range: override the profile's stage-2 settings.
        amp_dtype: training precision (``fp32``, ``bf16`` or ``fp16``; as stage 1).
        seed, device, run_name, runs_dir, results_dir, cache_dir, max_per_split, resume: as stage 1.
        publish: write ``results/tsan_stage2[_normd|_oof]__<dataset>.json``.
        fold: outer fold (0..4; the stage-1 run folder's fold), or ``all`` (common/cv.py).

    Returns:
        The run folder.

    Raises:
        ValueError: unknown variant, or a stage-1 run of another fold.
    """
    setup_logging()
    _variant_method(variant)
    first_dir = Path(first_stage)
    first_cfg = run_config(first_dir)
    if int(first_cfg.get("fold", 0)) != int(fold):
        raise ValueError(f"{first_dir} is stage 1 of fold {first_cfg.get('fold', 0)}, not of fold {fold}")
    first_ckpt = load_checkpoint(first_dir / "best.pt", STAGE1)
    profile = profile or first_cfg["profile"]
    hp = resolve_profile(PROFILES, profile, {})
    hp.update({k: first_cfg[k] for k in ("registration", "use_dataset_mask", "downsample", "nb_filter", "nb_block")})
    hp.update({k: first_cfg.get(k, 0.0) for k in ("smooth_fwhm_mm", "acq_augment")})
    hp["intensity"] = first_cfg.get("intensity", "zscore_nonzero")
    overrides = {"stage2_epochs": epochs, "stage2_batch_size": batch_size, "stage2_lr": lr, "lbd": lbd,
                 "dis_range": dis_range, "amp_dtype": amp_dtype}
    publish = publication(publish, results_dir, PROFILES, profile, overrides, max_per_split)
    hp.update({k: v for k, v in overrides.items() if v is not None})
    loss, sorter_report = _loss(hp, hp["stage2_batch_size"], cache_dir, 0, stage=2)
    method = VARIANTS[variant]

    def build(train_frame: pd.DataFrame) -> RegressorSetup:
        first = build_first_stage(first_ckpt["model_args"])
        first.load_state_dict(first_ckpt["model_state"])
        ages = train_frame["age"].to_numpy(float)
        args = {"nb_filter": hp["nb_filter"], "nb_block": hp["nb_block"], "dis_range": hp["dis_range"],
                "normalize_discrete_age": variant == "normalized_d", "age_mean": float(ages.mean()),
                "age_std": float(ages.std()), "stage1": first_ckpt["model_args"]}
        net = SecondStageScaleDense(hp["nb_filter"], hp["nb_block"], True, args["normalize_discrete_age"],
                                    args["age_mean"], args["age_std"])
        net.apply(init_weights)
        model = SecondStage(first, net, hp["dis_range"], given_stage1_age=variant == "out_of_fold")
        optimizer = torch.optim.SGD(net.parameters(), lr=hp["stage2_lr"], weight_decay=hp["weight_decay"])
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=hp["lr_factor"], patience=hp["lr_patience"])
        return RegressorSetup(model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss, augment=_augment(hp),
                              checkpoint_meta={"model_args": args, "sorter": sorter_report,
                                               "first_stage_run": str(first_dir), "variant": variant})

    stage2_hp = {**hp, "epochs": hp["stage2_epochs"], "batch_size": hp["stage2_batch_size"], "first_stage": str(first_dir),
                 "variant": variant}
    annotate = None
    if variant == "out_of_fold":
        t_oof = time.time()
        run_name = run_name or default_run_name(profile)
        oof_csv = run_folder(runs_dir, method, first_cfg["dataset"], run_name, fold) / "out_of_fold_stage1.csv"
        oof = out_of_fold_stage1_ages(first_cfg, hp["oof_folds"], device, runs_dir, results_dir, cache_dir,
                                      data_root, max_per_split, oof_csv)
        annotate = functools.partial(attach_stage1_age, oof)
        stage2_hp["out_of_fold_seconds"] = round(time.time() - t_oof, 1)
    run_dir, frame, fit, t0 = train_brain_age(
        method=method, dataset=first_cfg["dataset"], profile=profile, hp=stage2_hp, spec=_spec(hp), build=build,
        seed=seed, device=device, run_name=run_name, runs_dir=runs_dir, results_dir=results_dir, cache_dir=cache_dir,
        data_root=data_root, max_per_split=max_per_split, resume=resume, fold=fold,
        early_stopping_patience=hp["early_stopping"], exclude=UNKNOWN_SEX, annotate=annotate)
    if annotate is not None:
        t0 -= stage2_hp["out_of_fold_seconds"]  # the fold models are part of this variant's wall time
    _evaluate(str(run_dir), method, publish, device, frame, t0, fit)
    return str(run_dir)


def out_of_fold_stage1_ages(first_cfg: dict, folds: int, device: str, runs_dir: str, results_dir: str, cache_dir: str,
                            data_root: str | None, max_per_split: int | None, out_csv: Path) -> pd.DataFrame:
    """Stage-1 ages of the training subjects predicted by models that did not train on them.

    The ``out_of_fold`` variant's fix of the stage-2 collapse (README, "The stage-2 question"): the
    training subjects are split into ``folds`` subject-level folds; for each fold a stage-1 model with
    the settings of the first-stage run (``first_cfg``) is trained on the other folds (same validation
    split for checkpoint selection; run folder ``runs/tsan_stage1_fold/<dataset>/<run>-inner<k>/fold<outer>``) and
    predicts the held-out fold. Stage 2 then learns residuals of the size it meets at test time
    instead of the in-sample residuals of a stage 1 that has fitted its own training subjects.
    Cached in ``out_csv`` (a rerun with the same run name reuses it).

    Returns:
        ``participant_id, session_id, stage1_age, fold``, one row per training scan.

    Raises:
        ValueError: fewer than 2 folds, or fewer training subjects than folds.
    """
    from sklearn.model_selection import KFold

    if out_csv.exists():
        log.info("out-of-fold stage-1 ages from %s", out_csv)
        return pd.read_csv(out_csv, dtype={"session_id": str, "participant_id": str}).fillna({"session_id": ""})
    if folds < 2:
        raise ValueError(f"out_of_fold needs at least 2 folds, got {folds}")
    # the stage-1 run's settings (a run recorded before a setting existed gets the profile's value)
    hp = {**PROFILES[first_cfg["profile"]], **{k: first_cfg[k] for k in PROFILES["paper"] if k in first_cfg}}
    dataset, root = first_cfg["dataset"], data_root or first_cfg["data_root"]
    outer = int(first_cfg.get("fold", 0))
    frame, _ = usable_frame(dataset, root, results_dir, max_per_split, UNKNOWN_SEX, STAGE1_FOLD, fold=outer)
    ids = np.array(sorted(frame.loc[frame["split"] == "train", "participant_id"].unique()))
    if len(ids) < folds:
        raise ValueError(f"{len(ids)} training subjects cannot make {folds} folds")
    parts = []
    for k, (_, held) in enumerate(KFold(folds, shuffle=True, random_state=first_cfg["seed"]).split(ids)):
        held_ids = set(ids[held])

        def annotate(f: pd.DataFrame, held_ids=held_ids) -> pd.DataFrame:
            f = f.copy()
            f.loc[(f["split"] == "train") & f["participant_id"].isin(held_ids), "split"] = HELD_OUT
            return f

        fold_name = f"{out_csv.parent.parent.name}-inner{k}"
        fold_dir = run_folder(runs_dir, STAGE1_FOLD, dataset, fold_name, outer)
        log.info("out-of-fold stage 1, fold %d of %d: %d training subjects held out", k + 1, folds, len(held_ids))
        fold_dir, fold_frame, _, _ = train_stage1_alive(
            method=STAGE1_FOLD, dataset=dataset, profile=first_cfg["profile"], hp=hp, seed=first_cfg["seed"],
            device=device, run_name=fold_name, runs_dir=runs_dir, results_dir=results_dir, cache_dir=cache_dir,
            data_root=root, max_per_split=max_per_split, resume=(fold_dir / "last.pt").exists(), fold=outer,
            annotate=annotate)
        held_frame = fold_frame[fold_frame["split"] == HELD_OUT].reset_index(drop=True)
        ages = predict_ages(fold_dir, held_frame, device)
        parts.append(pd.DataFrame({"participant_id": held_frame["participant_id"], "session_id": held_frame["session_id"],
                                   "stage1_age": ages, "fold": k, "fold_run": fold_name}))
    table = pd.concat(parts, ignore_index=True)
    write_csv(out_csv, table)
    return table


def attach_stage1_age(oof: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``stage1_age`` column: the out-of-fold stage-1 age for training rows, NaN for
    the others (stage 2 then computes ``d`` with the full stage 1, as at test time).

    Raises:
        ValueError: a training row has no out-of-fold age (the table belongs to another split).
    """
    keys = ["participant_id", "session_id"]
    out = frame.merge(oof[keys + ["stage1_age"]], on=keys, how="left", validate="m:1")
    out.loc[out["split"] != "train", "stage1_age"] = np.nan
    missing = out[(out["split"] == "train") & out["stage1_age"].isna()]
    if len(missing):
        raise ValueError(f"{len(missing)} training scans have no out-of-fold stage-1 age, e.g. "
                         f"{missing['participant_id'].iloc[0]}")
    return out


def source_metrics(predictions: pd.DataFrame) -> dict:
    """The metrics the TSAN code reports, on a predictions table: MAE, Pearson r, Spearman(pred, age),
    Spearman(gap, age), mean gap and SD of the error (years); the shared ones come from
    :func:`common.metrics.regression_metrics`."""
    from scipy.stats import spearmanr

    from common.metrics import regression_metrics

    age, pred = predictions["age"].to_numpy(float), predictions["predicted_age"].to_numpy(float)
    shared = regression_metrics(age, pred)
    constant = np.ptp(pred) == 0
    return {**{k: shared[k] for k in ("mae", "pearson_r", "spearman_gap_age", "mean_gap")},
            "spearman_pred_age": float("nan") if constant else float(spearmanr(pred, age).statistic),
            "sd_error": float((pred - age).std(ddof=1))}


def stage2_analysis(run_dir: Path, first_stage_run: str, dis_range: float) -> dict:
    """Does stage 2 collapse onto the discretised age? Joins the stage-2 and stage-1 test predictions,
    writes ``residuals_test.csv`` and ``residuals_test.png`` (residual r = prediction - d against age,
    one colour per bin of d) and returns per-bin statistics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["participant_id", "session_id"]
    s2 = pd.read_csv(run_dir / "predictions_test.csv", dtype={"session_id": str}).fillna({"session_id": ""})
    s1 = pd.read_csv(Path(first_stage_run) / "predictions_test.csv", dtype={"session_id": str}).fillna({"session_id": ""})
    table = s2[keys + ["age", "predicted_age"]].merge(
        s1[keys + ["predicted_age"]].rename(columns={"predicted_age": "stage1_age"}), on=keys, how="inner", validate="1:1")
    table["d"] = discretize_age(torch.tensor(table["stage1_age"].to_numpy(), dtype=torch.float64), dis_range).numpy()
    table["residual"] = table["predicted_age"] - table["d"]
    write_csv(run_dir / "residuals_test.csv", table.round(4))
    bins = table.groupby("d")["residual"].agg(["count", "std", "min", "max"]).reset_index()
    shared = bins[bins["count"] > 1]
    fig, ax = plt.subplots(figsize=(6, 4))
    for d, part in table.groupby("d"):
        ax.scatter(part["age"], part["residual"], s=14, label=f"d = {d:g}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("age (years)")
    ax.set_ylabel("stage-2 residual r = prediction - d (years)")
    ax.set_title(f"{run_dir.parent.parent.name} on {run_dir.parent.name}: test residuals by bin of d", fontsize=9)
    if table["d"].nunique() <= 12:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(run_dir / "residuals_test.png", dpi=110)
    plt.close(fig)
    return {"n": len(table), "n_bins": int(table["d"].nunique()),
            "residual_sd_overall": float(table["residual"].std(ddof=1)),
            "mean_within_bin_residual_sd": float(shared["std"].mean()) if len(shared) else float("nan"),
            "residual_range": [float(table["residual"].min()), float(table["residual"].max())],
            "stage1_mae": float((table["stage1_age"] - table["age"]).abs().mean()),
            "discretised_mae": float((table["d"] - table["age"]).abs().mean()),
            "stage2_mae": float((table["predicted_age"] - table["age"]).abs().mean())}


def residual_sources(run_dir: str, device: str = "auto") -> dict:
    """Where a stage-2 model's residual comes from, per split (train, val, test): the SD of the
    residual it should predict (age - d), of the residual it predicts (r), within bins of d, their
    correlation, and the SD of the part of r contributed by each input branch of the head (trunk,
    sex, d; the head is two linear layers, so r splits exactly into these parts plus a constant).
    For an ``out_of_fold`` run the training rows use the out-of-fold ``d`` it was trained with.
    Written to ``<run_dir>/residual_sources.json``; ``bash tsan/analyse_second_stage.sh RUN_DIR``.

    Args:
        run_dir: a finished stage-2 run folder.
        device: compute device.

    Returns:
        ``{split: {"n", "target_sd", "r_sd", "r_within_bin_sd", "corr_r_target", "branch_sd": {...}}}``.
    """

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    model, ckpt, dev = load_best(run_dir, device)
    if "stage1" not in ckpt["model_args"]:
        raise ValueError(f"{run_dir} is not a stage-2 run")
    frame, _ = usable_frame(cfg["dataset"], cfg["data_root"], cfg["results_dir"], cfg["max_per_split"], UNKNOWN_SEX,
                            cfg["method"], VolumeSpec.from_dict(ckpt["preprocess"]), cfg["cache_dir"], cfg.get("fold", 0))
    oof_csv = run_dir / "out_of_fold_stage1.csv"
    if oof_csv.exists():  # out_of_fold: the training rows' d is the one stage 2 trained with
        oof = pd.read_csv(oof_csv, dtype={"session_id": str, "participant_id": str}).fillna({"session_id": ""})
        frame = attach_stage1_age(oof, frame)
    head = model.net.head_with_sex
    weight = (head[1].weight @ head[0].weight).reshape(-1).detach()  # r = inputs @ weight + constant
    branches = {"trunk": slice(0, 32), "sex": slice(32, 40), "d": slice(40, 56)}
    inputs: list[torch.Tensor] = []
    hook = head[0].register_forward_hook(lambda module, args, out: inputs.append(args[0].detach()))
    d, r = [], []
    columns = ("stage1_age",) if "stage1_age" in frame.columns else ()
    with torch.no_grad():
        for batch in volume_loader(frame, 8, False, 0, columns=columns):
            given = batch["stage1_age"].to(dev) if columns else None
            dd, rr = model.components(batch["image"].to(dev), batch["sex"].to(dev), given)
            d.append(dd.cpu())
            r.append(rr.cpu())
    hook.remove()
    x = torch.cat(inputs).cpu()
    table = frame[["split", "age"]].copy()
    table["d"], table["r"] = torch.cat(d).numpy(), torch.cat(r).numpy()
    table["target"] = table["age"] - table["d"]
    for name, part in branches.items():
        table[f"r_{name}"] = (x[:, part] @ weight[part].cpu()).numpy()
    out = {}
    for split in ("train", "val", "test"):
        g = table[table["split"] == split]
        if len(g) < 2:
            continue
        out[split] = {"n": len(g), "target_sd": float(g["target"].std()), "r_sd": float(g["r"].std()),
                      "r_within_bin_sd": float(g.groupby("d")["r"].std().mean()),
                      "corr_r_target": float(np.corrcoef(g["r"], g["target"])[0, 1]),
                      "branch_sd": {name: float(g[f"r_{name}"].std()) for name in branches}}
    write_json(run_dir / "residual_sources.json", out)
    return out


def _evaluate(run_dir: str, method: str, publish: bool, device: str, frame: pd.DataFrame | None = None,
              wall_start: float | None = None, fit: dict | None = None) -> dict:
    t0 = wall_start or time.time()
    report, frame, cfg, model = evaluate_brain_age(run_dir, method, model_from_checkpoint, device, frame, UNKNOWN_SEX,
                                                   correction_formula=CORRECTION)
    test = pd.read_csv(Path(run_dir) / "predictions_test.csv")
    report["source_metrics"] = source_metrics(test)
    notes = []
    if method != STAGE1:
        ckpt = load_checkpoint(Path(run_dir) / "best.pt", method)
        report["stage2_analysis"] = stage2_analysis(Path(run_dir), ckpt["first_stage_run"], cfg["dis_range"])
        report["stage2_analysis"]["residual_sources"] = residual_sources(run_dir, device)
        if cfg["variant"] == "normalized_d":
            notes.append("non-default variant normalized_d: the d branch takes the standardised discretised age")
        elif cfg["variant"] == "out_of_fold":
            notes.append(f"non-default variant out_of_fold: stage 2 trained on out-of-fold stage-1 ages "
                         f"({cfg['oof_folds']} subject-level folds of the training split); test uses the full stage 1")
    if cfg["profile"] != "paper":
        notes.append(f"cpu profile: {cfg['registration']}, input pooled to {2 * cfg['downsample']} mm, nb_filter "
                     f"{cfg['nb_filter']}, batch {cfg['batch_size']}, at most {cfg['epochs']} epochs, sorter "
                     f"{cfg['sorter_hidden']} units x {cfg['sorter_steps']} steps"
                     + (f", smoothed to {cfg['smooth_fwhm_mm']:g} mm FWHM" if cfg.get("smooth_fwhm_mm") else "")
                     + (f", acquisition augmentation p={cfg['acq_augment']:g}" if cfg.get("acq_augment") else ""))
    if publish:
        label = {STAGE1: "TSAN stage 1 (ScaleDense, MSE + ranking)", STAGE2: "TSAN stage 2 (residual on discretised age)",
                 VARIANTS["normalized_d"]: "TSAN stage 2, normalized-d variant (not the paper's)",
                 VARIANTS["out_of_fold"]: "TSAN stage 2, out-of-fold variant (not the paper's)"}[method]
        params = {k: cfg[k] for k in PROFILES["paper"] if k in cfg} | {"seed": cfg["seed"]}
        publish_trained_run(cfg, frame, report, model, run_dir, method=method, method_label=label, source=SOURCE,
                            source_reported=SOURCE_REPORTED, params=params, notes=notes, fit=fit, wall_start=t0,
                            device=device, readme_folder="tsan")
    return report


def test_first_stage(run_dir: str, publish: bool = True, device: str = "auto") -> dict:
    """Test a finished stage-1 run (validation-fitted bias correction, test report, result JSON).

    Args:
        run_dir: the stage-1 run folder.
        publish: write ``results/tsan_stage1__<dataset>.json``.
        device: compute device.
    """
    setup_logging()
    return _evaluate(run_dir, STAGE1, publish, device)


def test_second_stage(run_dir: str, publish: bool = True, device: str = "auto") -> dict:
    """Test a finished stage-2 run, with the residual analysis (``residuals_test.csv``/``.png``).

    Args:
        run_dir: the stage-2 run folder.
        publish: write the result JSON.
        device: compute device.
    """
    setup_logging()
    method = run_config(run_dir)["method"]
    return _evaluate(run_dir, method, publish, device)


declare_profiles(train_first_stage, PROFILES)  # shown by --help
#: Stage-2 flags and the profile settings they override.
_STAGE2_FLAGS = {"epochs": "stage2_epochs", "batch_size": "stage2_batch_size", "lr": "stage2_lr", "lbd": "lbd",
                 "dis_range": "dis_range", "amp_dtype": "amp_dtype"}
declare_profiles(train_second_stage, {name: {flag: p[key] for flag, key in _STAGE2_FLAGS.items()}
                                      for name, p in PROFILES.items()})


#: The command-line interface (fire).
CLI = {"pretrain_sorter": pretrain, "train_first_stage": train_first_stage, "train_second_stage": train_second_stage,
       "test_first_stage": test_first_stage, "test_second_stage": test_second_stage,
       "analyse_second_stage": residual_sources}

if __name__ == "__main__":
    run_cli(CLI, name="tsan.train")
