"""Train and test the 3D ResNet-18 brain-age regressor on a shared subject-level split.

    python -m resnet3d.train train --dataset=ixi_hh --profile=cpu
    python -m resnet3d.train test --run_dir=runs/resnet3d/ixi_hh/<run_name>

Source: open-source "brain-age-estimation" project, 3D ResNet track (IXI, MONAI preprocessing).
Deviations from it are listed in resnet3d/README.md.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch
from monai.transforms import RandFlip, RandScaleIntensity, RandShiftIntensity

from common.brain_age import RegressorSetup, evaluate_brain_age, publish_trained_run, train_brain_age
from common.cli import declare_profiles
from common.cli import run as run_cli
from common.cv import cross_validated
from common.data.augment import acquisition_augmentation, seeded
from common.data.preprocess import VolumeSpec
from common.device import default_profile
from common.experiment import int_tuple, publication, resolve_profile
from common.runlog import run_config, setup_logging
from common.training import adam, warmup_factor
from resnet3d.model import BrainAgeResNet3D

log = logging.getLogger("resnet3d")

METHOD = "resnet3d"
METHOD_LABEL = "3D ResNet-18 (Huber)"
SOURCE = 'open-source "brain-age-estimation" project, 3D ResNet-18 track (IXI, MONAI)'
SOURCE_REPORTED = {
    "dataset": "IXI (all sites)", "split": "80 validation subjects (also the checkpoint-selection set)", "mae": 9.13,
    "pearson_r": 0.734,
    "recipe": "the source's older recipe (Results_3DResNet of commit af323c9): L1 loss, Adam lr 1e-4, cosine over 60 "
              "epochs without warm-up (curve ends at epoch 35), no bias correction; the source reports no number for the "
              "recipe of the paper profile (Huber, AdamW 1e-5, 5 + 95 epochs)"}
#: The source's bias correction: age regressed on predicted age, fitted on validation (common.metrics).
CORRECTION = "age_on_pred"

#: ``paper``: the source's settings. ``cpu``: what must be cut to fit ~10 min per dataset on
#: 2 CPU cores (see README "Deviations").
PROFILES = {
    "paper": dict(image_size=96, spacing_mm=2.0, epochs=100, batch_size=2, lr=1e-5, weight_decay=1e-4,
                  warmup_epochs=5, min_lr=1e-6, huber_delta=1.0, dropout=0.3, grad_clip=1.0, amp_dtype="fp16",
                  init_bias_to_mean=False, precise_bn=False, flip_axes="0,1,2", pipeline="monai", smooth_fwhm_mm=0.0,
                  acq_augment=0.0, intensity="zscore_nonzero"),
    "cpu": dict(image_size=48, spacing_mm=4.0, epochs=16, batch_size=4, lr=3e-4, weight_decay=1e-4,
                warmup_epochs=1, min_lr=1e-6, huber_delta=1.0, dropout=0.3, grad_clip=1.0, amp_dtype="fp32",
                init_bias_to_mean=True, precise_bn=True, flip_axes="0", pipeline="mni_brain", smooth_fwhm_mm=0.0,
                acq_augment=0.0, intensity="zscore_nonzero"),
}


def _augmentation(seed: int, flip_axes: tuple[int, ...] = (0, 1, 2), acq_augment: float = 0.0, spacing_mm: float = 2.0):
    """Source augmentation: flips along each axis of ``flip_axes`` (p=0.5 each; RAS order, so axis 0
    is left-right), intensity scale and shift 0.1 (p=0.5 each); with ``acq_augment`` > 0 the shared
    acquisition augmentation (blur, noise, small affine; :mod:`common.data.augment`) comes between the
    flips and the intensity changes (it needs the background still at zero)."""
    flips = [RandFlip(prob=0.5, spatial_axis=a) for a in flip_axes]
    return seeded([*flips, *acquisition_augmentation(acq_augment, spacing_mm), RandScaleIntensity(factors=0.1, prob=0.5),
                   RandShiftIntensity(offsets=0.1, prob=0.5)], seed)


def _warmup_cosine(optimizer: torch.optim.Optimizer, epochs: int, warmup: int, min_lr: float):
    """The source's schedule, stepped per epoch: epochs 1..``warmup`` at ``(e + 1) / warmup`` of the
    peak rate (:func:`common.training.warmup_factor`), then cosine decay to ``min_lr`` over
    ``epochs - warmup`` epochs, starting at the peak."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, SequentialLR

    cosine = CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup), eta_min=min_lr)
    if warmup <= 0:
        return cosine
    linear = LambdaLR(optimizer, functools.partial(warmup_factor, warmup_epochs=warmup))
    return SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def model_from_checkpoint(ckpt: dict) -> BrainAgeResNet3D:
    """Rebuild the (untrained) model described by a checkpoint's ``model_args``."""
    return BrainAgeResNet3D(dropout=ckpt["model_args"]["dropout"], widths=tuple(ckpt["model_args"]["widths"]))


#: The leakage check's row: the same model trained and validated on permuted ages (issue: evaluation protocol v2).
PERMUTED_METHOD, PERMUTED_LABEL = "resnet3d_permuted_ages", "3D ResNet-18, permuted ages (leakage check)"


def _method(permuted_ages: bool) -> str:
    return PERMUTED_METHOD if permuted_ages else METHOD


@cross_validated(lambda a: Path(a["runs_dir"]) / _method(a["permuted_ages"]) / a["dataset"])
def train(dataset: str = "ixi_hh", profile: str | None = None, data_root: str | None = None,
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          weight_decay: float | None = None, warmup_epochs: int | None = None, min_lr: float | None = None,
          huber_delta: float | None = None, dropout: float | None = None, grad_clip: float | None = None,
          image_size: int | None = None, spacing_mm: float | None = None, amp_dtype: str | None = None,
          init_bias_to_mean: bool | None = None, precise_bn: bool | None = None, flip_axes: str | None = None,
          pipeline: str | None = None, smooth_fwhm_mm: float | None = None, acq_augment: float | None = None,
          intensity: str | None = None, widths: str = "64,128,256,512", seed: int = 42,
          device: str = "auto", run_name: str | None = None, runs_dir: str = "runs",
          results_dir: str = "results", cache_dir: str = ".cache", max_per_split: int | None = None,
          resume: bool = False, publish: bool = True, fold: int | str = "all", permuted_ages: bool = False) -> str:
    """Train the 3D ResNet-18 on the train split, select by validation MAE, then test.

    Settings left unset come from the profile (``paper``: the source's; ``cpu``: reduced).

    Args:
        dataset: dataset folder under the data root (``ixi_hh``, ``ds000228``, a BIDS folder).
        profile: ``paper`` or ``cpu`` (default: ``paper`` with a GPU, else ``cpu``).
        data_root: data folder (default: $DATA_ROOT, then ../shared/data, then data/).
        epochs: maximum epochs.
        batch_size: training mini-batch size.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up epochs before the cosine decay.
        min_lr: final learning rate of the cosine decay.
        huber_delta: Huber loss delta, years.
        dropout: dropout before the output layer.
        grad_clip: max gradient norm.
        image_size: cubic input grid, voxels.
        spacing_mm: isotropic voxel spacing of the input, mm.
        amp_dtype: training precision: ``fp32``, ``bf16`` (autocast; fast only on CPUs with native
            bf16 or on GPUs) or ``fp16`` (CUDA mixed precision as the source; fp32 elsewhere).
            Profiles: paper fp16, cpu fp32.
        init_bias_to_mean: start the output bias at the training-set mean age.
        precise_bn: recompute BatchNorm statistics on un-augmented training data before each
            validation (and so in the saved checkpoints).
        flip_axes: comma-separated axes (RAS: 0 left-right, 1 anterior-posterior, 2 inferior-superior)
            randomly flipped in training (source: all three).
        pipeline: preprocessing: ``monai`` (the source's: skull on, reorient, resample, centred crop)
            or ``mni_brain`` (the shared one: brain extraction, N4, affine to the MNI152 brain;
            common/data/standardize.py).
        smooth_fwhm_mm: ``mni_brain`` only: Gaussian smoothing inside the brain (FWHM, mm) on the 2 mm
            MNI grid, one effective resolution for scans acquired at 1-3 mm; 0 = none.
        acq_augment: probability of each acquisition augmentation (blur, noise, small affine;
            common/data/augment.py) in training; 0 = off (the source has none).
        intensity: ``zscore_nonzero`` (z-score inside the brain, background 0; the source's
            ``NormalizeIntensity(nonzero=True)``) or, ``mni_brain`` only, ``scaled_brain`` (scaled so
            the brain's 99th percentile is 5, background 0; common/data/standardize.py).
        widths: channels of the four ResNet stages, comma-separated.
        seed: random seed.
        device: ``auto`` (cuda > mps > cpu), ``cpu``, ``cuda``...
        run_name: run folder name (default: profile and UTC time).
        runs_dir: root of run folders.
        results_dir: where the split files are read and the result JSON is written.
        cache_dir: preprocessing cache folder.
        max_per_split: use only the first N participants of each split (smoke tests).
        resume: continue from ``last.pt`` of ``run_name``.
        publish: write ``results/resnet3d__<dataset>.json``.
        fold: outer cross-validation fold to run (0..4), or ``all``: every fold, then the pooled
            out-of-fold result (common/cv.py).
        permuted_ages: the leakage check: train on the training ages shuffled among the training
            subjects and choose the epoch and the bias correction on the validation ages shuffled among
            the validation subjects (seeded; test keeps true ages), as method ``resnet3d_permuted_ages``.
            Such a model has nothing to learn, so it must score like the mean-age predictor.

    Returns:
        The run folder.
    """
    setup_logging()
    profile = profile or default_profile()
    overrides = dict(
        image_size=image_size, spacing_mm=spacing_mm, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_epochs=warmup_epochs, min_lr=min_lr, huber_delta=huber_delta,
        dropout=dropout, grad_clip=grad_clip, amp_dtype=amp_dtype, init_bias_to_mean=init_bias_to_mean,
        precise_bn=precise_bn, flip_axes=flip_axes, pipeline=pipeline, smooth_fwhm_mm=smooth_fwhm_mm,
        acq_augment=acq_augment, intensity=intensity)
    hp = resolve_profile(PROFILES, profile, overrides)
    publish = publication(publish, results_dir, PROFILES, profile, overrides, max_per_split)
    hp["flip_axes"] = ",".join(str(a) for a in int_tuple(hp["flip_axes"]))
    hp["widths"] = list(int_tuple(widths))
    spec = VolumeSpec(shape=(hp["image_size"],) * 3, spacing_mm=(float(hp["spacing_mm"]),) * 3, pipeline=hp["pipeline"],
                      smooth_fwhm_mm=float(hp["smooth_fwhm_mm"]), intensity=hp["intensity"])

    def build(train_frame) -> RegressorSetup:
        train_mean = float(train_frame["age"].mean())
        model = BrainAgeResNet3D(dropout=hp["dropout"], widths=tuple(hp["widths"]),
                                 init_age_bias=train_mean if hp["init_bias_to_mean"] else 0.0)
        optimizer = adam(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"], decoupled=True)
        return RegressorSetup(
            model=model, optimizer=optimizer,
            scheduler=_warmup_cosine(optimizer, hp["epochs"], hp["warmup_epochs"], hp["min_lr"]),
            loss_fn=torch.nn.HuberLoss(delta=hp["huber_delta"]),
            augment=functools.partial(_augmentation, flip_axes=int_tuple(hp["flip_axes"]), acq_augment=hp["acq_augment"],
                                      spacing_mm=float(hp["spacing_mm"])),
            checkpoint_meta={"model_args": {"dropout": hp["dropout"], "widths": hp["widths"]}})

    run_dir, frame, fit, t0 = train_brain_age(
        method=_method(permuted_ages), dataset=dataset, profile=profile, hp=hp, spec=spec, build=build, seed=seed,
        device=device, run_name=run_name, runs_dir=runs_dir, results_dir=results_dir, cache_dir=cache_dir,
        data_root=data_root, max_per_split=max_per_split, resume=resume, fold=fold, permute_train_ages=permuted_ages)
    evaluate(str(run_dir), publish=publish, device=device, _frame=frame, _wall_start=t0, _fit=fit)
    return str(run_dir)


def evaluate(run_dir: str, publish: bool = True, device: str = "auto", _frame=None, _wall_start: float | None = None,
             _fit: dict | None = None) -> dict:
    """Test a finished run: predict val and test with ``best.pt``, fit the bias correction on
    validation, report on test, store the correction in ``best.pt`` and write the result JSON.

    Args:
        run_dir: the run folder (holds ``config.json`` and ``best.pt``).
        publish: write ``results/resnet3d__<dataset>.json``.
        device: compute device.

    Returns:
        The test report (raw and bias-corrected metrics).
    """
    setup_logging()
    t0 = _wall_start or time.time()
    method = run_config(run_dir).get("method", METHOD)
    report, frame, cfg, model = evaluate_brain_age(run_dir, method, model_from_checkpoint, device, _frame,
                                                      correction_formula=CORRECTION)
    if publish:
        params = {k: cfg.get(k) for k in PROFILES["paper"]} | {"widths": cfg["widths"], "seed": cfg["seed"]}
        notes = [] if cfg["profile"] == "paper" else [
            f"cpu profile: {cfg['image_size']}^3 at {cfg['spacing_mm']} mm, {cfg['epochs']} epochs, batch "
            f"{cfg['batch_size']}, lr {cfg['lr']}, output bias initialised to the training mean age, "
            f"precise BatchNorm statistics, flips along axes {cfg['flip_axes']} only, preprocessing "
            f"{cfg.get('pipeline', 'monai')}"
            + (f", smoothed to {cfg['smooth_fwhm_mm']:g} mm FWHM" if cfg.get("smooth_fwhm_mm") else "")
            + (f", acquisition augmentation p={cfg['acq_augment']:g}" if cfg.get("acq_augment") else "")]
        if method == PERMUTED_METHOD:
            notes.append("leakage check: training and validation ages permuted within each split (seed "
                         f"{cfg['seed']}); test ages are true; it should score like the mean-age predictor")
        publish_trained_run(cfg, frame, report, model, run_dir, method=method,
                            method_label=PERMUTED_LABEL if method == PERMUTED_METHOD else METHOD_LABEL,
                            source=SOURCE, source_reported=None if method == PERMUTED_METHOD else SOURCE_REPORTED, params=params,
                            notes=notes, fit=_fit,
                            wall_start=t0, device=device)
    return report


declare_profiles(train, PROFILES)  # shown by --help


#: The command-line interface (fire).
CLI = {"train": train, "test": evaluate}

if __name__ == "__main__":
    run_cli(CLI, name="resnet3d.train")
