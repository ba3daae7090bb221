"""Train and test the ResNet-18 mid-slice age-group classifier on the shared ds000228 split.

    python -m midslice_classifier.train train --weights=none
    python -m midslice_classifier.train test --run_dir=runs/midslice_resnet18/ds000228/<run_name>

Source: MathWorks, "Brain MRI Age Classification Using Deep Learning" (ds000228; classes Ages3-5,
Ages7-12, Adults). Deviations are listed in midslice_classifier/README.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from common.classification import publish_classification_result, report_classification
from common.cli import declare_profiles
from common.cli import run as run_cli
from common.cv import cross_validated
from common.data.checks import BadImageError
from common.device import configure_numerics, default_profile, select_device
from common.distributed import main_process_first
from common.experiment import default_run_name, labelled_split_frame, publication, resolve_profile, run_folder
from common.plots import training_curves
from common.pretrained import IMAGENET_MEAN, IMAGENET_STD
from common.results import split_counts
from common.runlog import RunLogger, environment_info, git_commit, run_config, setup_logging
from common.training import VAL_ACCURACY, FitConfig, fit_model, load_checkpoint, predict
from midslice_classifier.data import HistogramMatcher, extract_mid_slice, montage, save_png, to_uint8
from midslice_classifier.model import build_resnet18_classifier, parameter_groups

log = logging.getLogger("midslice_classifier")

METHOD = "midslice_resnet18"
METHOD_LABEL = "ResNet-18 on axial mid-slice"
SOURCE = 'MathWorks "Brain MRI Age Classification Using Deep Learning" (ds000228)'
SOURCE_REPORTED = {"accuracy": 0.9130, "dataset": "ds000228, 46 test images of an image-level split (2022 version; "
                   "84.78% in the 2025 version)"}
CLASS_NAMES = ["Ages3-5", "Ages7-12", "Adults"]

#: ``paper``: the source's settings. ``cpu``: 112x112 inputs and 30 epochs. A ResNet-18 training
#: step costs 0.105 s per 224x224 image on 2 cores (15 epochs: about 5.5 minutes), 0.024 s at
#: 112x112; and without ImageNet weights the source's 15 epochs (60 SGD steps) are too few to learn
#: from scratch (measured on the shared split: test accuracy 0.571 after 15 epochs, 0.619 after 30).
PROFILES = {
    "paper": dict(epochs=15, lr=1e-3, momentum=0.9, weight_decay=1e-4, head_lr_factor=10.0, rotation_deg=30.0,
                  image_size=224, batch_divisor=4, precise_bn=False),
}
PROFILES["cpu"] = dict(PROFILES["paper"], image_size=112, epochs=30)


class SliceDataset(Dataset):
    """Equalised uint8 mid-slices -> (3, S, S) float tensors normalised with ImageNet statistics.

    Args:
        images: uint8 (H, W) slices; targets: class indices; rotate180: the source's offline
            augmentation flag per item; train: apply the online random rotation.
    """

    def __init__(self, images: list[np.ndarray], targets: list[int], rotate180: list[bool], train: bool,
                 size: int = 224, rotation_deg: float = 30.0):
        self.images, self.targets, self.rotate180 = images, targets, rotate180
        steps = [v2.RandomRotation(rotation_deg)] if train else []
        self.transform = v2.Compose([*steps, v2.Resize((size, size), antialias=True),
                                     v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        x = torch.from_numpy(self.images[i].astype(np.float32) / 255.0)[None].repeat(3, 1, 1)
        if self.rotate180[i]:
            x = torch.rot90(x, 2, dims=(1, 2))
        return {"image": self.transform(x), "target": torch.tensor(self.targets[i]), "index": torch.tensor(i)}


def prepare_slices(frame: pd.DataFrame, cache_dir: str | Path, exclusions) -> tuple[pd.DataFrame, dict]:
    """Extract every mid-slice, fit the equaliser on the training split only, equalise all,
    save PNGs and a montage under ``cache_dir``.

    Returns:
        ``(frame, images)``: usable rows, and ``{participant_id: uint8 slice}``.
    """
    raw, keep = {}, []
    for row in frame.itertuples():
        try:
            raw[row.participant_id] = to_uint8(extract_mid_slice(row.image_path, row.mask_path))
            keep.append(row.Index)
        except BadImageError as err:
            exclusions.add(row.dataset, row.image_path, err.problem, "midslice")
    frame = frame.loc[keep].reset_index(drop=True)
    train_ids = frame.loc[frame["split"] == "train", "participant_id"]
    matcher = HistogramMatcher().fit([raw[p] for p in train_ids])
    images = {p: matcher.transform(im) for p, im in raw.items()}
    out = Path(cache_dir) / "midslice"
    for p, im in images.items():
        save_png(im, out / f"{p}.png")
    sample = frame.groupby("label").head(4)
    montage([images[p] for p in sample["participant_id"]],
            [f"{p[-3:]} {lab} ({s})" for p, lab, s in zip(sample["participant_id"], sample["label"], sample["split"])],
            out / "montage.png", columns=6)
    return frame, images


def _datasets(frame: pd.DataFrame, images: dict, hp: dict) -> dict[str, SliceDataset]:
    """``train`` (with the offline 180-degree copies and online rotation), ``train_plain`` (the same
    images without random augmentation, for BatchNorm recalibration), ``val`` and ``test``."""
    out = {}
    for split in ("train", "val", "test"):
        part = frame[frame["split"] == split]
        ims = [images[p] for p in part["participant_id"]]
        targets = [CLASS_NAMES.index(c) for c in part["label"]]
        flips = [False] * len(ims)
        if split == "train":  # offline augmentation: a 180-degree rotated copy of every training image
            ims, targets, flips = ims + ims, targets + targets, flips + [True] * len(flips)
        out[split] = SliceDataset(ims, targets, flips, split == "train", hp["image_size"], hp["rotation_deg"])
        if split == "train":
            out["train_plain"] = SliceDataset(ims, targets, flips, False, hp["image_size"], hp["rotation_deg"])
    return out


def _method_name(weights: str) -> str:
    """``midslice_resnet18`` from scratch, ``midslice_resnet18_imagenet1k_v1`` for torchvision weights,
    ``midslice_resnet18_from_<method>`` for a checkpoint of this repository (e.g. ``alz_resnet18``),
    else ``midslice_resnet18_<file stem>``."""
    if weights in ("none", "", None):
        return METHOD
    path = Path(str(weights))
    if path.is_file():
        meta = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(meta, dict) and isinstance(meta.get("method"), str):
            return f"{METHOD}_from_{meta['method']}"
    return f"{METHOD}_{path.stem.lower()}"


@cross_validated(lambda a: Path(a["runs_dir"]) / _method_name(a["weights"]) / a["dataset"])
def train(profile: str | None = None, dataset: str = "ds000228", weights: str = "none", data_root: str | None = None,
          epochs: int | None = None, lr: float | None = None, image_size: int | None = None,
          precise_bn: bool | None = None, seed: int = 42,
          device: str = "auto",
          run_name: str | None = None, runs_dir: str = "runs", results_dir: str = "results",
          cache_dir: str = ".cache", max_per_split: int | None = None, resume: bool = False,
          publish: bool = True, fold: int | str = "all") -> str:
    """Train on the training mid-slices (plus their 180-degree copies), choose the epoch by
    validation accuracy, then test once.

    Args:
        profile: ``paper`` (the source: 224x224, 15 epochs) or ``cpu`` (112x112, 30 epochs).
        dataset: dataset folder (ds000228 layout with ``label`` = age group).
        weights: ``none`` (from scratch), ``IMAGENET1K_V1`` (torchvision weights API; fails with a
            clear message when neither cached nor downloadable), or a path to a ResNet-18 state dict.
        data_root: data folder (default: $DATA_ROOT, ../shared/data, data/).
        epochs: override the profile's epochs (paper 15, cpu 30).
        lr: override the base learning rate 1e-3 (the new head uses 10x).
        image_size: override the input size (paper 224, cpu 112).
        precise_bn: recompute BatchNorm statistics on the un-augmented training images before each
            validation (off in both profiles; see README).
        seed: random seed.
        device: ``auto``, ``cpu``, ``cuda``...
        run_name: run folder name.
        runs_dir: root of run folders.
        results_dir: split files in, result JSON out.
        cache_dir: where the equalised slices (PNG) and the montage are written.
        max_per_split: first N participants per split only (smoke tests).
        resume: continue ``run_name`` from its ``last.pt``.
        publish: write ``results/midslice_resnet18[...]__<dataset>.json``.
        fold: outer cross-validation fold to run (0..4), or ``all``: every fold, then the pooled
            out-of-fold result (common/cv.py).

    Returns:
        The run folder.
    """
    setup_logging()
    t0 = time.time()
    profile = profile or default_profile()
    overrides = {"epochs": epochs, "lr": lr, "image_size": image_size, "precise_bn": precise_bn}
    hp = resolve_profile(PROFILES, profile, overrides)
    publish = publication(publish, results_dir, PROFILES, profile, overrides, max_per_split)
    dev = select_device(device)
    configure_numerics(dev, "fp32")  # no autocast in this method: fp32 on every device
    run_name = run_name or default_run_name(profile)
    method = _method_name(weights)
    run_dir = run_folder(runs_dir, method, dataset, run_name, fold)
    if run_dir.exists() and (run_dir / "last.pt").exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume or another --run_name")
    torch.manual_seed(seed)
    model, provenance = build_resnet18_classifier(len(CLASS_NAMES), weights)
    frame, exclusions = labelled_split_frame(dataset, data_root, results_dir, max_per_split, fold)
    frame = frame[frame["label"].isin(CLASS_NAMES)].reset_index(drop=True)
    with main_process_first():  # under torchrun rank 0 fills the slice cache, the others read it
        frame, images = prepare_slices(frame, cache_dir, exclusions)
    run_dir.mkdir(parents=True, exist_ok=True)
    exclusions.write(run_dir / "exclusions.csv")
    data = _datasets(frame, images, hp)
    batch = max(1, len(data["train"]) // hp["batch_divisor"])  # source: floor(numel(training images) / 4)
    config = {"method": method, "dataset": dataset, "fold": int(fold), "profile": profile, "weights": str(weights),
              "weights_provenance": provenance, **hp, "batch_size": batch, "seed": seed, "run_dir": str(run_dir),
              "data_root": data_root, "results_dir": results_dir, "cache_dir": cache_dir,
              "max_per_split": max_per_split, "class_names": CLASS_NAMES}
    logger = RunLogger(run_dir, config, dev, resume=resume)
    model = model.to(dev)
    optimizer = torch.optim.SGD(parameter_groups(model, hp["lr"], hp["head_lr_factor"], hp["weight_decay"]),
                                lr=hp["lr"], momentum=hp["momentum"])
    gen = torch.Generator().manual_seed(seed)
    meta = {"method": method, "class_names": CLASS_NAMES, "weights": str(weights), "commit": git_commit(),
            "preprocess": {"slice": "axial round(n/2) (MATLAB 1-based)", "mask": True,
                           "equalisation": "training-split mean histogram", "size": hp["image_size"],
                           "normalisation": "ImageNet mean/std"}}
    fit = fit_model(model, optimizer, None, torch.nn.CrossEntropyLoss(),
                    DataLoader(data["train"], batch_size=batch, shuffle=True, generator=gen),
                    DataLoader(data["val"], batch_size=32), dev,
                    FitConfig(epochs=hp["epochs"], seed=seed, precise_bn=hp["precise_bn"]), run_dir, logger, meta,
                    resume=resume, selection=VAL_ACCURACY, bn_loader=DataLoader(data["train_plain"], batch_size=batch))
    logger.close()
    training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png", f"{method} ({profile})",
                    metric="acc/val", loss_label="cross-entropy (nats)", best_epoch=fit["best_epoch"])
    evaluate(str(run_dir), publish=publish, _state=(frame, images, hp, fit, t0 - fit["seconds_before_resume"]))
    return str(run_dir)


def evaluate(run_dir: str, publish: bool = True, device: str = "auto", _state=None) -> dict:
    """Test a finished run with its ``best.pt`` (highest validation accuracy) on the test split.

    Args:
        run_dir: the run folder.
        publish: write the result JSON.
        device: compute device.

    Returns:
        Test metrics (accuracy, balanced accuracy, macro-F1, per-class recall with 95% CIs).
    """
    setup_logging()
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if _state is None:
        from common.data.manifest import Exclusions

        frame, _ = labelled_split_frame(cfg["dataset"], cfg["data_root"], cfg["results_dir"], cfg["max_per_split"],
                                        cfg.get("fold", 0))
        frame, images = prepare_slices(frame[frame["label"].isin(CLASS_NAMES)].reset_index(drop=True),
                                       cfg["cache_dir"], Exclusions())
        hp, fit, t0 = {k: cfg[k] for k in PROFILES["paper"]}, None, time.time()
    else:
        frame, images, hp, fit, t0 = _state
    dev = select_device(device)
    ckpt = load_checkpoint(run_dir / "best.pt", cfg["method"])
    model, _ = build_resnet18_classifier(len(CLASS_NAMES), "none")
    model.load_state_dict(ckpt["model_state"])
    model = model.to(dev)
    test = _datasets(frame, images, hp)["test"]
    idx, targets, logits = predict(model, DataLoader(test, batch_size=32), dev)
    ids = frame.loc[frame["split"] == "test", "participant_id"].to_numpy()[idx]
    metrics = report_classification(ids, targets, logits, CLASS_NAMES, run_dir, f"{cfg['method']} ({cfg['profile']})")
    if publish:
        notes = [f"weights: {cfg['weights_provenance']}"]
        if cfg["weights"] == "none":
            notes.append("ImageNet weights cannot be downloaded here: trained from scratch")
        params = {k: cfg[k] for k in PROFILES["paper"]} | {"batch_size": cfg["batch_size"], "weights": cfg["weights"]}
        if fit:
            params |= {"best_epoch": fit["best_epoch"], "best_val_accuracy": fit["best_val"]}
        path = publish_classification_result(
            cfg["results_dir"], metrics, method=cfg["method"], method_label=f"{METHOD_LABEL} ({cfg['weights_provenance']})",
            source=SOURCE, dataset=cfg["dataset"], profile=cfg["profile"], source_reported=SOURCE_REPORTED,
            n_subjects=split_counts(frame), parameters=params, n_parameters=sum(p.numel() for p in model.parameters()),
            wall_time_s=time.time() - t0, environment=environment_info(dev), commit=git_commit(), run_dir=run_dir,
            notes=notes, readme_folder="midslice_classifier", fold=cfg.get("fold", 0),
            predictions=run_dir / "predictions_test.csv")
        log.info("wrote %s", path)
    return metrics


declare_profiles(train, PROFILES)  # shown by --help


#: The command-line interface (fire).
CLI = {"train": train, "test": evaluate}

if __name__ == "__main__":
    run_cli(CLI, name="midslice_classifier.train")
