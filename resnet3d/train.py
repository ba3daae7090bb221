"""Train and test the 3D ResNet-18 brain-age regressor on a shared subject-level split.

    python -m resnet3d.train train --dataset=ixi_hh --profile=cpu
    python -m resnet3d.train test --run_dir=runs/resnet3d/ixi_hh/<run_name>

Source: open-source "brain-age-estimation" project, 3D ResNet track (IXI, MONAI preprocessing).
Deviations from it are listed in resnet3d/README.md.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import fire
import numpy as np
import torch
from monai.transforms import Compose, RandFlip, RandScaleIntensity, RandShiftIntensity
from torch.utils.data import DataLoader

from common.brain_age import publish_brain_age_result, report_brain_age
from common.data.datasets import VolumeDataset
from common.data.preprocess import VolumeSpec, prepare_volumes
from common.device import autocast_dtype, configure_cpu_threads, default_profile, select_device
from common.experiment import default_run_name, int_tuple, labelled_split_frame, resolve_profile
from common.io import save_torch
from common.plots import training_curves
from common.runlog import RunLogger, environment_info, git_commit
from common.training import FitConfig, fit_model, load_checkpoint, predict
from resnet3d.model import BrainAgeResNet3D

log = logging.getLogger("resnet3d")

METHOD = "resnet3d"
METHOD_LABEL = "3D ResNet-18 (Huber)"
SOURCE = 'open-source "brain-age-estimation" project, 3D ResNet-18 track (IXI, MONAI)'
SOURCE_REPORTED = {"dataset": "IXI (all sites)", "split": "80 validation subjects", "mae": 9.13, "pearson_r": 0.734}

#: ``paper``: the source's settings. ``cpu``: what must be cut to fit ~10 min per dataset on
#: 2 CPU cores (see README "Deviations").
PROFILES = {
    "paper": dict(image_size=96, spacing_mm=2.0, epochs=100, batch_size=2, lr=1e-5, weight_decay=1e-4,
                  warmup_epochs=5, min_lr=1e-6, huber_delta=1.0, dropout=0.3, grad_clip=1.0, amp=True,
                  init_bias_to_mean=False, precise_bn=False, flip_axes="0,1,2"),
    "cpu": dict(image_size=48, spacing_mm=4.0, epochs=16, batch_size=4, lr=3e-4, weight_decay=1e-4,
                warmup_epochs=1, min_lr=1e-6, huber_delta=1.0, dropout=0.3, grad_clip=1.0, amp=True,
                init_bias_to_mean=True, precise_bn=True, flip_axes="0"),
}


def _augmentation(seed: int, flip_axes: tuple[int, ...] = (0, 1, 2)) -> Compose:
    """Source augmentation: flips along each axis of ``flip_axes`` (p=0.5 each; RAS order, so axis 0
    is left-right), intensity scale and shift 0.1 (p=0.5 each)."""
    flips = [RandFlip(prob=0.5, spatial_axis=a) for a in flip_axes]
    aug = Compose([*flips, RandScaleIntensity(factors=0.1, prob=0.5), RandShiftIntensity(offsets=0.1, prob=0.5)])
    aug.set_random_state(seed=seed)
    return aug


def _warmup_cosine(optimizer: torch.optim.Optimizer, epochs: int, warmup: int, min_lr: float):
    """Linear warm-up over ``warmup`` epochs, then cosine decay to ``min_lr`` (stepped per epoch)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    cosine = CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup), eta_min=min_lr)
    if warmup <= 0:
        return cosine
    linear = LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def _loader(frame, batch_size: int, train: bool, seed: int, flip_axes: tuple[int, ...] = (0, 1, 2)) -> DataLoader:
    ds = VolumeDataset(frame, augment=_augmentation(seed, flip_axes) if train else None)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train and len(ds) > batch_size,
                      num_workers=0, generator=gen)


def train(dataset: str = "ixi_hh", profile: str | None = None, data_root: str | None = None,
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          weight_decay: float | None = None, warmup_epochs: int | None = None, min_lr: float | None = None,
          huber_delta: float | None = None, dropout: float | None = None, grad_clip: float | None = None,
          image_size: int | None = None, spacing_mm: float | None = None, amp: bool | None = None,
          init_bias_to_mean: bool | None = None, precise_bn: bool | None = None, flip_axes: str | None = None,
          widths: str = "64,128,256,512", seed: int = 42,
          device: str = "auto", run_name: str | None = None, runs_dir: str = "runs",
          results_dir: str = "results", cache_dir: str = ".cache", max_per_split: int | None = None,
          resume: bool = False, publish: bool = True) -> str:
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
        amp: mixed precision (fp16 on CUDA; bf16 on CPUs with native bf16, otherwise fp32).
        init_bias_to_mean: start the output bias at the training-set mean age.
        precise_bn: recompute BatchNorm statistics on un-augmented training data before each
            validation (and so in the saved checkpoints).
        flip_axes: comma-separated axes (RAS: 0 left-right, 1 anterior-posterior, 2 inferior-superior)
            randomly flipped in training (source: all three).
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

    Returns:
        The run folder.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_start = time.time()
    profile = profile or default_profile()
    hp = resolve_profile(PROFILES, profile, dict(
        image_size=image_size, spacing_mm=spacing_mm, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_epochs=warmup_epochs, min_lr=min_lr, huber_delta=huber_delta,
        dropout=dropout, grad_clip=grad_clip, amp=amp, init_bias_to_mean=init_bias_to_mean,
        precise_bn=precise_bn, flip_axes=flip_axes))
    dev = select_device(device)
    if dev.type == "cpu":
        configure_cpu_threads()
    if resume and not run_name:
        raise ValueError("--resume needs --run_name of the run to continue")
    run_name = run_name or default_run_name(profile)
    run_dir = Path(runs_dir) / METHOD / dataset / run_name
    if run_dir.exists() and not resume and (run_dir / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume or another --run_name")

    frame, exclusions = labelled_split_frame(dataset, data_root, results_dir, max_per_split)
    spec = VolumeSpec(shape=(hp["image_size"],) * 3, spacing_mm=(float(hp["spacing_mm"]),) * 3)
    frame = prepare_volumes(frame, spec, cache_dir, exclusions)
    run_dir.mkdir(parents=True, exist_ok=True)
    exclusions.write(run_dir / "exclusions.csv")
    train_frame = frame[frame["split"] == "train"]
    val_frame = frame[frame["split"] == "val"]
    if len(train_frame) < 2 or len(val_frame) < 2:
        raise ValueError(f"too few usable subjects: {len(train_frame)} train, {len(val_frame)} val")

    amp_dtype = autocast_dtype(dev, hp["amp"])
    width_tuple = int_tuple(widths)
    hp["flip_axes"] = ",".join(str(a) for a in int_tuple(hp["flip_axes"]))
    config = {"method": METHOD, "dataset": dataset, "profile": profile, **hp, "widths": width_tuple, "seed": seed,
              "amp_dtype": str(amp_dtype), "run_dir": str(run_dir), "data_root": data_root,
              "results_dir": results_dir, "cache_dir": cache_dir, "max_per_split": max_per_split,
              "preprocess": spec.to_dict(), "n_images": {s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")}}
    logger = RunLogger(run_dir, config, dev, resume=resume)

    torch.manual_seed(seed)
    train_mean = float(train_frame["age"].mean())
    model = BrainAgeResNet3D(dropout=hp["dropout"], widths=width_tuple,
                             init_age_bias=train_mean if hp["init_bias_to_mean"] else 0.0).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    scheduler = _warmup_cosine(optimizer, hp["epochs"], hp["warmup_epochs"], hp["min_lr"])
    loss_fn = torch.nn.HuberLoss(delta=hp["huber_delta"])
    meta = {"method": METHOD, "preprocess": spec.to_dict(), "model_args": {"dropout": hp["dropout"], "widths": list(width_tuple)},
            "train_mean_age": train_mean, "dataset": dataset, "commit": git_commit()}
    fit = fit_model(
        model, optimizer, scheduler, loss_fn, _loader(train_frame, hp["batch_size"], True, seed, int_tuple(hp["flip_axes"])),
        _loader(val_frame, 8, False, seed), dev,
        FitConfig(epochs=hp["epochs"], grad_clip=hp["grad_clip"], amp_dtype=amp_dtype, seed=seed,
                  precise_bn=hp["precise_bn"]),
        run_dir, logger, meta, resume=resume, bn_loader=_loader(train_frame, 8, False, seed))
    logger.close()
    training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png", f"{METHOD} on {dataset} ({profile})")
    log.info("training done: best val MAE %.3f at epoch %d (%.0f s)", fit["best_val"], fit["best_epoch"],
             fit["train_seconds"])
    evaluate(str(run_dir), publish=publish, _frame=frame, _wall_start=t_start, _fit=fit)
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = _wall_start or time.time()
    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    dev = select_device(device)
    ckpt = load_checkpoint(run_dir / "best.pt", METHOD)
    spec = VolumeSpec.from_dict(ckpt["preprocess"])
    if _frame is None:
        frame, exclusions = labelled_split_frame(cfg["dataset"], cfg["data_root"], cfg["results_dir"], cfg["max_per_split"])
        frame = prepare_volumes(frame, spec, cfg["cache_dir"], exclusions)
    else:
        frame = _frame
    frame = frame[frame["split"].isin(["train", "val", "test"])].reset_index(drop=True)
    model = BrainAgeResNet3D(dropout=ckpt["model_args"]["dropout"], widths=tuple(ckpt["model_args"]["widths"])).to(dev)
    model.load_state_dict(ckpt["model_state"])
    amp_dtype = autocast_dtype(dev, cfg["amp"])
    eval_frame = frame[frame["split"].isin(["val", "test"])].reset_index(drop=True)
    idx, _, pred = predict(model, _loader(eval_frame, 8, False, 0), dev, amp_dtype)
    predicted = np.empty(len(eval_frame))
    predicted[idx] = pred
    report, correction = report_brain_age(eval_frame, predicted, run_dir, f"{METHOD} on {cfg['dataset']} ({cfg['profile']})",
                                          train_mean_age=ckpt["train_mean_age"])
    save_torch(run_dir / "best.pt", {**ckpt, "bias_correction": correction.to_dict()})
    if publish:
        params = {k: cfg[k] for k in PROFILES["paper"]} | {"widths": cfg["widths"], "seed": cfg["seed"]}
        notes = [] if cfg["profile"] == "paper" else [
            f"cpu profile: {cfg['image_size']}^3 at {cfg['spacing_mm']} mm, {cfg['epochs']} epochs, batch "
            f"{cfg['batch_size']}, lr {cfg['lr']}, output bias initialised to the training mean age, "
            f"precise BatchNorm statistics, flips along axes {cfg['flip_axes']} only"]
        if _fit:
            params["best_epoch"], params["epochs_run"] = _fit["best_epoch"], _fit["epochs_run"]
        path = publish_brain_age_result(
            cfg["results_dir"], frame, report, method=METHOD, method_label=METHOD_LABEL, source=SOURCE,
            dataset=cfg["dataset"], profile=cfg["profile"], source_reported=SOURCE_REPORTED, parameters=params,
            n_parameters=sum(p.numel() for p in model.parameters()), wall_time_s=time.time() - t0,
            environment=environment_info(dev), commit=git_commit(), run_dir=run_dir, notes=notes)
        log.info("wrote %s", path)
    return report


if __name__ == "__main__":
    fire.Fire({"train": train, "test": evaluate})
