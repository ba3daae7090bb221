"""Train and test AltzCNN and the transfer-learning models on the 4-class Alzheimer slices.

    python -m alz_cnn.train train --model=altzcnn
    python -m alz_cnn.train train --model=resnet50_dora
    python -m alz_cnn.train compare                 # every model, one process each, then the table
    python -m alz_cnn.train test --run_dir=runs/alz_altzcnn/alzheimer4/<run_name>

Source: "DL-Project-Brain-MRI-Classification" (AltzCNN notebook). The published ``train/`` and
``test/`` folders have no subject IDs, so every result here is "not subject-split"; a near-duplicate
search between the two folders shows how much of the test folder the training folder already
contains. Deviations are listed in alz_cnn/README.md.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from alz_cnn.data import AlzheimerSlices, cached_images, load_alzheimer4, source_augmentation
from alz_cnn.leaky import SOURCE_AUGMENTED_IMAGES, augmented_pool, image_level_split
from alz_cnn.model import AltzCNN, build_transfer_model, count_parameters, model_size_mb
from alz_cnn.near_duplicates import DEFAULT_THRESHOLD, DEFAULT_THUMBNAIL, find_near_duplicates, near_duplicate_figure
from common.classification import publish_classification_result, report_classification
from common.cli import declare_profiles
from common.cli import run as run_cli
from common.cv import PREDICTIONS_DIR
from common.device import configure_numerics, default_profile, select_device
from common.distributed import main_process_first
from common.experiment import default_run_name, publication, resolve_profile
from common.io import write_csv, write_json
from common.metrics import classification_metrics
from common.paths import find_data_root
from common.plots import training_curves
from common.runlog import RunLogger, environment_info, git_commit, run_config, setup_logging
from common.training import VAL_ACCURACY, VAL_BALANCED_ACCURACY, FitConfig, adam, fit_model, load_checkpoint, predict

log = logging.getLogger("alz_cnn")

DATASET = "alzheimer4"
#: The near-duplicate search always works from the 64x64 cache, whatever the model's input size.
LEAKAGE_IMAGE_SIZE = 64
SOURCE = '"DL-Project-Brain-MRI-Classification" (AltzCNN notebook; 44,000-image augmented dataset, image-level split)'


@dataclass(frozen=True)
class ModelSpec:
    """One model of the comparison.

    Attributes:
        label: name shown in tables.
        arch: torchvision architecture (None: AltzCNN).
        dora: DoRA head (rank 4, alpha 8).
        source_accuracy: test accuracy the source reports (fraction), or None.
        source_size_mb, source_train_s: model size and training time the source reports.
        source_weights: the ImageNet weights the source fine-tunes (``--weights=source``), or None.
    """

    label: str
    arch: str | None
    dora: bool = False
    source_accuracy: float | None = None
    source_size_mb: float | None = None
    source_train_s: float | None = None
    source_weights: str | None = None


MODELS = {
    "altzcnn": ModelSpec("AltzCNN", None, False, 0.9586, 22.93, 6553),
    "resnet18": ModelSpec("ResNet-18", "resnet18", source_weights="IMAGENET1K_V1"),
    "resnet50": ModelSpec("ResNet-50", "resnet50", False, 0.9903, 89.91, 1136, "IMAGENET1K_V2"),
    "resnet50_dora": ModelSpec("ResNet-50 + DoRA head", "resnet50", True, 0.9913, 89.95, 1117, "IMAGENET1K_V2"),
    "efficientnet_b0": ModelSpec("EfficientNet-B0", "efficientnet_b0", False, 0.9904, 15.47, 1578, "IMAGENET1K_V1"),
    "efficientnet_b0_dora": ModelSpec("EfficientNet-B0 + DoRA head", "efficientnet_b0", True, 0.9892, 15.49, 1132,
                                      "IMAGENET1K_V1"),
    "vit_b_16": ModelSpec("ViT-B/16", "vit_b_16", False, 0.9891, 327.31, 10136, "IMAGENET1K_V1"),
}

#: The source notebook's settings (cell numbers 0-based over all cells of
#: Brain_MRI_Altz_classification.ipynb): 64x64 RGB, ``ToTensor`` only (no normalisation) and batch
#: 128 for AltzCNN and the transfer CNNs (cells 11, 13); Adam, cross-entropy; ``epochs`` here is the
#: number of epochs *run*, the source's ``epochs`` + 1 (its loop is ``range(epochs+1)``, cell 21); the
#: model after the last epoch is tested (``checkpoint="last"``: validation is only monitored).
#: AltzCNN: lr 3e-4, 20 (+1) epochs, no augmentation (cell 25). EfficientNet-B0: lr 1e-3, 15 (+1)
#: (cell 31); + DoRA: 2e-4, 10 (+1) (cell 33); ResNet-50: 1e-4, 10 (+1) (cell 35); + DoRA: 2e-4,
#: 10 (+1) (cell 37); ViT-B/16: 1e-4, 10 (+1), 224x224 with ImageNet normalisation, batch 64 (cells
#: 38-39). The transfer models train with the kornia augmentation of cell 21. ResNet-18 is not in the
#: source (the in-domain transfer checkpoint for midslice_classifier); it takes ResNet-50's settings.
_ALTZ_PAPER = dict(epochs=21, batch_size=128, lr=3e-4, image_size=64, augment=False, normalize=False,
                   checkpoint="last", selection="accuracy", max_train_images=0)
_TRANSFER_PAPER = dict(_ALTZ_PAPER, augment=True)
_PAPER = {"altzcnn": _ALTZ_PAPER,
          "resnet18": dict(_TRANSFER_PAPER, lr=1e-4, epochs=11),
          "resnet50": dict(_TRANSFER_PAPER, lr=1e-4, epochs=11),
          "resnet50_dora": dict(_TRANSFER_PAPER, lr=2e-4, epochs=11),
          "efficientnet_b0": dict(_TRANSFER_PAPER, lr=1e-3, epochs=16),
          "efficientnet_b0_dora": dict(_TRANSFER_PAPER, lr=2e-4, epochs=11),
          "vit_b_16": dict(_TRANSFER_PAPER, lr=1e-4, epochs=11, image_size=224, batch_size=64, normalize=True)}
#: ``cpu``: what fits the 20-minute budget of the whole comparison on 2 cores (measured costs per
#: training image: AltzCNN 0.017 s at 64x64, ResNet-18 0.011 s, ResNet-50 0.022 s, EfficientNet-B0
#: 0.009 s at 64x64, ViT-B/16 about 0.2 s at 64x64 and 10x that at 224x224); the checkpoint with the
#: best validation balanced accuracy (the headline: the majority class is half of the images); ImageNet
#: normalisation for the transfer models.
#: ``max_train_images`` > 0 trains on a class-stratified subset of that many training images.
_CPU_TRANSFER = dict(epochs=1, batch_size=128, lr=3e-4, image_size=64, augment=True, normalize=True,
                     checkpoint="best", selection="balanced_accuracy", max_train_images=0)
HYPERPARAMETERS = {name: {"paper": dict(_PAPER[name])} for name in MODELS}
HYPERPARAMETERS["altzcnn"]["cpu"] = dict(_ALTZ_PAPER, epochs=7, checkpoint="best", selection="balanced_accuracy")
for _name in ("resnet18", "resnet50", "resnet50_dora", "efficientnet_b0", "efficientnet_b0_dora"):
    HYPERPARAMETERS[_name]["cpu"] = dict(_CPU_TRANSFER)
HYPERPARAMETERS["vit_b_16"]["cpu"] = dict(_CPU_TRANSFER, max_train_images=512)
#: ResNet-18 is the in-domain starting point of ``midslice_classifier --weights`` (the
#: ``midslice_from_alz`` row), so it must learn something: 8 epochs (the checkpoint still chosen by
#: validation balanced accuracy). One epoch left it predicting NonDemented for every image (validation
#: balanced accuracy 0.34 after its first epoch in an 8-epoch run, 2026-12-04).
HYPERPARAMETERS["resnet18"]["cpu"] = dict(_CPU_TRANSFER, epochs=8)


def method_name(model: str, class_weighted: bool = False) -> str:
    """Result/run name of a model: ``alz_<model>``, ``alz_<model>_class_weighted`` for the class-weighted
    variant."""
    return f"alz_{model}" + ("_class_weighted" if class_weighted else "")


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights ``n / (K * n_c)`` of the training labels (scikit-learn's
    ``compute_class_weight("balanced")``), for the class-weighted cross-entropy variant.

    Args:
        labels: (N,) class indices of the training images; num_classes: K.

    Returns:
        float32 (K,) weights; a class with mean weight 1 over the training images.

    Raises:
        ValueError: a class has no training image.
    """
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    if len(present) < num_classes:
        raise ValueError(f"class-weighted loss: classes {sorted(set(range(num_classes)) - set(present.tolist()))} "
                         "have no training image")
    return torch.tensor(compute_class_weight("balanced", classes=np.arange(num_classes), y=labels), dtype=torch.float32)


def build_model(model: str, num_classes: int, weights: str = "none", image_size: int = 64) -> tuple[torch.nn.Module, str]:
    """The network of ``model`` (a key of :data:`MODELS`) and its weights provenance.

    ``weights``: ``none``, ``source`` (the ImageNet weights the source fine-tunes:
    :attr:`ModelSpec.source_weights`), a torchvision weights name or a state-dict path.

    Raises:
        KeyError: unknown model.
        ValueError: weights requested for AltzCNN (it has none).
    """
    if model not in MODELS:
        raise KeyError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
    spec = MODELS[model]
    if weights == "source":  # the ImageNet weights the source fine-tunes (AltzCNN: none)
        weights = spec.source_weights or "none"
    if spec.arch is None:
        if weights not in ("none", "", None):
            raise ValueError("AltzCNN is trained from scratch; it has no pretrained weights")
        return AltzCNN(num_classes), "random initialisation (no pretrained weights)"
    return build_transfer_model(spec.arch, num_classes, weights, dora=spec.dora, image_size=image_size)


def _subset(rows: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A class-stratified seeded subset of ``n`` of ``rows`` (all of them when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(rows):
        return rows
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(rows, train_size=n, random_state=seed, stratify=labels[rows])
    return np.sort(keep)


def _load(data_root: str | None, cache_dir: str, image_size: int, val_fraction: float, seed: int):
    frame, class_names, exclusions = load_alzheimer4(find_data_root(data_root) / DATASET, val_fraction, seed)
    images = cached_images(frame, image_size, cache_dir)
    return frame, class_names, exclusions, images


def leakage_table(frame: pd.DataFrame, images: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Nearest image of the published ``train/`` folder (train + val splits) for each test image."""
    test = np.flatnonzero(frame["split"] == "test")
    train = np.flatnonzero(frame["split"] != "test")
    return find_near_duplicates(frame.iloc[test], images[test], frame.iloc[train], images[train], threshold)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MB: CUDA allocator peak on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(model: str = "altzcnn", profile: str | None = None, dataset: str = DATASET, weights: str = "none",
          data_root: str | None = None, epochs: int | None = None, lr: float | None = None,
          batch_size: int | None = None, image_size: int | None = None, max_train_images: int | None = None,
          val_fraction: float = 0.15, seed: int = 42, device: str = "auto", run_name: str | None = None,
          runs_dir: str = "runs", results_dir: str = "results", cache_dir: str = ".cache",
          resume: bool = False, publish: bool = True, class_weighted: bool = False) -> str:
    """Train one model on ``train/`` minus the validation images, keep the profile's checkpoint
    (``paper``: the last epoch, as the source; ``cpu``: the best validation balanced accuracy), then
    test it once on the published ``test/`` folder.

    Args:
        model: altzcnn, resnet18, resnet50, resnet50_dora, efficientnet_b0, efficientnet_b0_dora or vit_b_16.
        profile: ``paper`` or ``cpu`` (default: paper with a GPU, else cpu); see ``HYPERPARAMETERS``.
        dataset: must be ``alzheimer4`` (class-per-folder layout with train/ and test/).
        weights: transfer models only: ``none`` (from scratch), ``source`` (the source's ImageNet
            weights: ResNet-50 IMAGENET1K_V2, the others IMAGENET1K_V1), a torchvision weights name
            (fails with a clear message when unavailable) or a state-dict path.
        data_root: data folder (default: $DATA_ROOT, ../shared/data, data/).
        epochs, lr, batch_size, image_size, max_train_images: override the profile.
        val_fraction: share of ``train/`` held out for validation (class-stratified, seeded).
        seed: random seed (validation split, initialisation, data order, augmentation).
        device: ``auto``, ``cpu``, ``cuda``...
        run_name: run folder name (default: ``<profile>-<UTC time>``).
        runs_dir: root of run folders.
        results_dir: where ``alz_<model>__alzheimer4.json`` is written.
        cache_dir: where the decoded, resized images are cached.
        resume: continue ``run_name`` from its ``last.pt``.
        publish: write the result JSON.
        class_weighted: the declared variant (not in the source): cross-entropy weighted by inverse
            class frequency on the training images (:func:`class_weights`), published as
            ``alz_<model>_class_weighted``.

    Returns:
        The run folder.
    """
    setup_logging()
    t0 = time.time()
    if dataset != DATASET:
        raise ValueError(f"alz_cnn trains on the {DATASET} folder layout, not {dataset!r}")
    if model not in MODELS:
        raise KeyError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
    profile = profile or default_profile()
    overrides = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "image_size": image_size,
                 "max_train_images": max_train_images}
    hp = resolve_profile(HYPERPARAMETERS[model], profile, overrides)
    publish = publication(publish, results_dir, HYPERPARAMETERS[model], profile, overrides)
    dev = select_device(device)
    configure_numerics(dev, "fp32")  # no autocast in this method: fp32 on every device
    method = method_name(model, class_weighted)
    run_dir = Path(runs_dir) / method / dataset / (run_name or default_run_name(profile))
    if (run_dir / "last.pt").exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume or another --run_name")
    with main_process_first():  # under torchrun rank 0 fills the image cache, the others read it
        frame, class_names, exclusions, images = _load(data_root, cache_dir, hp["image_size"], val_fraction, seed)
    torch.manual_seed(seed)
    net, provenance = build_model(model, len(class_names), weights, hp["image_size"])
    run_dir.mkdir(parents=True, exist_ok=True)
    exclusions.write(run_dir / "exclusions.csv")
    labels = frame["label_index"].to_numpy()
    train_rows = _subset(np.flatnonzero(frame["split"] == "train"), labels, hp["max_train_images"], seed)
    val_rows = np.flatnonzero(frame["split"] == "val")
    normalize = hp["normalize"]
    train_set = AlzheimerSlices(images, labels, train_rows, source_augmentation() if hp["augment"] else None, normalize)
    val_set = AlzheimerSlices(images, labels, val_rows, None, normalize)
    config = {"method": method, "model": model, "dataset": dataset, "profile": profile, "weights": str(weights),
              "weights_provenance": provenance, **hp, "class_weighted": bool(class_weighted), "val_fraction": val_fraction,
              "seed": seed,
              "n_train_images": len(train_rows), "n_val_images": len(val_rows), "run_dir": str(run_dir),
              "data_root": data_root, "results_dir": results_dir, "cache_dir": cache_dir, "class_names": class_names}
    logger = RunLogger(run_dir, config, dev, resume=resume)
    net = net.to(dev)
    optimizer = adam(net.parameters(), lr=hp["lr"])
    gen = torch.Generator().manual_seed(seed)
    meta = {"method": method, "model": model, "class_names": class_names, "weights": str(weights),
            "image_size": hp["image_size"], "commit": git_commit()}
    weight = class_weights(labels[train_rows], len(class_names)).to(dev) if class_weighted else None
    selection = VAL_BALANCED_ACCURACY if hp["selection"] == "balanced_accuracy" else VAL_ACCURACY
    fit = fit_model(net, optimizer, None, torch.nn.CrossEntropyLoss(weight=weight),
                    DataLoader(train_set, batch_size=hp["batch_size"], shuffle=True, generator=gen),
                    DataLoader(val_set, batch_size=256), dev, FitConfig(epochs=hp["epochs"], seed=seed),
                    run_dir, logger, meta, resume=resume, selection=selection)
    logger.close()
    training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png", f"{MODELS[model].label} ({profile})",
                    metric=selection.name, loss_label="cross-entropy (nats)", best_epoch=fit["best_epoch"])
    usage = {"train_seconds": fit["train_seconds"], "peak_memory_mb": peak_memory_mb(dev),
             "best_epoch": fit["best_epoch"], f"best_{selection.name.replace('/', '_')}": fit["best_val"],
             "checkpoint_tested": hp["checkpoint"]}
    write_json(run_dir / "usage.json", usage)
    evaluate(str(run_dir), publish=publish, device=device,
             _state=(frame, class_names, images, t0 - fit["seconds_before_resume"]))
    return str(run_dir)


def evaluate(run_dir: str, publish: bool = True, device: str = "auto", _state=None) -> dict:
    """Test a finished run's checkpoint (``best.pt``, or ``last.pt`` where its profile keeps the last
    epoch, as the source does) on the published ``test/`` folder, overall and on the test images that
    have no near-duplicate in ``train/``.

    Args:
        run_dir: the run folder.
        publish: write ``results/alz_<model>__alzheimer4.json`` and its per-image test predictions,
            ``results/predictions/alz_<model>__alzheimer4.csv`` (``image, label, pred, prob_<class>``),
            which the leaderboard pairs between models (McNemar). Its ``wall_time_s`` is the whole
            run's: when called on a finished run (``_state`` None), the training time in the run's
            ``usage.json`` plus this evaluation's.
        device: compute device.

    Returns:
        Test metrics (accuracy, balanced accuracy, macro-F1, per-class recall with 95% CIs, and
        ``no_near_duplicate``: the same on the near-duplicate-free test images).
    """
    setup_logging()
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    usage_path = run_dir / "usage.json"
    usage = json.loads(usage_path.read_text()) if usage_path.exists() else {}
    if _state is None:
        frame, class_names, _, images = _load(cfg["data_root"], cfg["cache_dir"], cfg["image_size"],
                                              cfg["val_fraction"], cfg["seed"])
        t0 = time.time() - usage.get("train_seconds", 0.0)
    else:
        frame, class_names, images, t0 = _state
    dev = select_device(device)
    ckpt = load_checkpoint(run_dir / f"{cfg.get('checkpoint', 'best')}.pt", cfg["method"])
    net, _ = build_model(cfg["model"], len(class_names), "none", cfg["image_size"])
    net.load_state_dict(ckpt["model_state"])
    net = net.to(dev)
    labels = frame["label_index"].to_numpy()
    test_rows = np.flatnonzero(frame["split"] == "test")
    test_set = AlzheimerSlices(images, labels, test_rows, None, cfg.get("normalize", MODELS[cfg["model"]].arch is not None))
    idx, targets, logits = predict(net, DataLoader(test_set, batch_size=256), dev)
    ids = frame["image"].to_numpy()[test_rows][idx]
    label = f"{MODELS[cfg['model']].label} ({cfg['profile']})"
    metrics = report_classification(ids, targets, logits, class_names, run_dir, label, id_column="image")
    small = images if cfg["image_size"] == LEAKAGE_IMAGE_SIZE else cached_images(frame, LEAKAGE_IMAGE_SIZE, cfg["cache_dir"])
    leak = leakage_table(frame, small)
    write_csv(run_dir / "near_duplicates_test.csv", leak)
    near_duplicate_figure(leak, small[test_rows], small, {img: i for i, img in enumerate(frame["image"])},
                          run_dir / "near_duplicates.png")
    clean = ~leak["near_duplicate"].to_numpy()[idx]
    if clean.any():
        sub = classification_metrics(targets[clean], logits[clean].argmax(1), class_names)
        sub = {k: sub[k] for k in ("accuracy", "accuracy_ci95", "balanced_accuracy", "macro_f1", "per_class_recall", "n")}
    else:
        sub = {"accuracy": float("nan"), "n": 0}
    metrics["no_near_duplicate"] = {**sub, "threshold": DEFAULT_THRESHOLD}
    write_json(run_dir / "metrics_test.json", metrics)
    log.info("test accuracy %.4f; on the %d test images without a near-duplicate in train/: %.4f",
             metrics["accuracy"], sub["n"], sub["accuracy"])
    if publish:
        spec = MODELS[cfg["model"]]
        notes = [f"weights: {cfg['weights_provenance']}", "published train/test folders: image-level, not subject-split"]
        if spec.arch is not None and cfg["weights"] == "none":
            notes.append("ImageNet weights cannot be downloaded here: trained from scratch")
        if cfg["max_train_images"]:
            notes.append(f"trained on a stratified subset of {cfg['n_train_images']} training images")
        params = {k: cfg.get(k) for k in _ALTZ_PAPER} | {"weights": cfg["weights"],
                                                     "class_weighted": cfg.get("class_weighted", False),
                                                     "n_train_images": cfg["n_train_images"],
                                                     "n_val_images": cfg["n_val_images"],
                                                     "size_mb": round(model_size_mb(net), 2)} | usage
        reported = None
        if spec.source_accuracy is not None:
            reported = {"accuracy": spec.source_accuracy, "size_mb": spec.source_size_mb,
                        "train_time_s": spec.source_train_s,
                        "dataset": "44,000-image augmented version, 70/15/15 image-level random split"}
        counts = frame["split"].value_counts()
        variant = ", class-weighted loss" if cfg.get("class_weighted") else ""
        predictions = f"{PREDICTIONS_DIR}/{cfg['method']}__{cfg['dataset']}.csv"
        write_csv(Path(cfg["results_dir"]) / predictions, pd.read_csv(run_dir / "predictions_test.csv"))
        path = publish_classification_result(
            cfg["results_dir"], metrics, method=cfg["method"],
            method_label=f"{spec.label}{variant} ({cfg['weights_provenance']})",
            source=SOURCE, dataset=cfg["dataset"], profile=cfg["profile"], source_reported=reported,
            n_subjects={s: int(counts.get(s, 0)) for s in ("train", "val", "test")} | {"unit": "images"},
            parameters=params, n_parameters=count_parameters(net), wall_time_s=time.time() - t0,
            environment=environment_info(dev), commit=git_commit(), run_dir=run_dir, notes=notes,
            subject_split=False, readme_folder="alz_cnn", predictions=predictions)
        log.info("wrote %s", path)
    return metrics


def compare(models: str = ",".join(MODELS), profile: str | None = None, dataset: str = DATASET,
            data_root: str | None = None, seed: int = 42, run_name: str | None = None, results_dir: str = "results",
            cache_dir: str = ".cache", figures_dir: str = "alz_cnn/figures", class_weighted: str = "",
            leaky_emulation: bool = True) -> str:
    """Train and test every model, each in its own process (so peak memory is per model), then the
    leaky-protocol emulation (:func:`leaky`), then write the comparison table and figures (:func:`summarize`).

    Args:
        models: comma-separated keys of ``MODELS`` (default: all, AltzCNN first).
        profile: ``paper`` or ``cpu``.
        dataset: must be ``alzheimer4``.
        data_root, seed, results_dir, cache_dir: passed to :func:`train`.
        run_name: run folder name shared by the models (default: ``<profile>-<UTC time>``).
        figures_dir: where the confusion matrices and the near-duplicate figure are copied.
        class_weighted: comma-separated models also trained with the class-weighted loss (variant rows).
        leaky_emulation: also run the source's protocol, emulated (``alz_altzcnn_leaky_emulation``).

    Returns:
        The path of the README table.

    Raises:
        RuntimeError: a model's training failed (the others still run; the table shows what finished).
    """
    if dataset != DATASET:
        raise ValueError(f"alz_cnn compares models on the {DATASET} folder layout, not {dataset!r}")
    profile = profile or default_profile()
    run_name = run_name or default_run_name(profile)
    def _list(value) -> list[str]:
        return [m.strip() for m in (value.split(",") if isinstance(value, str) else value) if m.strip()]

    common = [f"--profile={profile}", f"--run_name={run_name}", f"--results_dir={results_dir}", f"--cache_dir={cache_dir}"]
    common += [f"--data_root={data_root}"] if data_root else []
    jobs = [(name, ["train", f"--model={name}", f"--seed={seed}"]) for name in _list(models)]
    jobs += [(f"{name} (class-weighted)", ["train", f"--model={name}", f"--seed={seed}", "--class_weighted=True"])
             for name in _list(class_weighted)]
    jobs += [("leaky-protocol emulation", ["leaky"])] if leaky_emulation else []  # the source's seed (211)
    failed = []
    for name, args in jobs:
        cmd = [sys.executable, "-m", "alz_cnn.train", *args, *common]
        log.info("training %s: %s", name, " ".join(cmd))
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(name)
    out = summarize(results_dir=results_dir, figures_dir=figures_dir)
    if failed:
        raise RuntimeError(f"training failed for {failed}; the table shows the models that finished")
    return out


#: The leaky-protocol emulation's size, epochs and tested checkpoint per profile: ``paper`` the source's
#: (44,060 images, AltzCNN's 20 (+1) epochs, the last epoch tested); ``cpu`` a fifth of the images and at
#: most 14 epochs, the best validation accuracy (of the leaky split's own validation images) tested. The
#: 14 epochs (about 760 Adam steps on its 6,892 training images) are a cost cap: the 4 epochs it had
#: before never left the majority class on validation (0.351 at every epoch), as AltzCNN needs more than
#: 4 epochs on the published folders too; the epoch tested is chosen on validation within them.
LEAKY_PROFILES = {"paper": dict(n_images=SOURCE_AUGMENTED_IMAGES, epochs=21, tested="last"),
                  "cpu": dict(n_images=SOURCE_AUGMENTED_IMAGES // 5, epochs=14, tested="best")}
LEAKY_METHOD = "alz_altzcnn_leaky_emulation"


def leaky(profile: str | None = None, dataset: str = DATASET, data_root: str | None = None,
          n_images: int | None = None, epochs: int | None = None, seed: int = 211, device: str = "auto",
          run_name: str | None = None, runs_dir: str = "runs", results_dir: str = "results",
          cache_dir: str = ".cache", publish: bool = True, resume: bool = False) -> dict:
    """The source's protocol, emulated and labelled as leaky: the published ``train/`` and ``test/``
    slices pooled, augmented to about ``n_images`` of equal class sizes (:mod:`alz_cnn.leaky`; the
    source's augmentation recipe is unknown), split 70/15/15 at image level, AltzCNN trained with the
    source's settings (Adam 3e-4, batch 128, 64x64 without normalisation or training augmentation) and
    tested on its own 15%: the last epoch (``paper``, as the source) or the best validation epoch (``cpu``).

    Args:
        profile: ``paper`` (44,060 images, 21 epochs, the last tested) or ``cpu`` (a fifth, at most 14
            epochs, the best validation accuracy tested); see ``LEAKY_PROFILES``.
        dataset: must be ``alzheimer4``.
        n_images, epochs: override the profile.
        seed: split, copies and training (default 211, the source's seed).
        device, run_name, runs_dir, results_dir, cache_dir: as :func:`train`.
        publish: write ``results/alz_altzcnn_leaky_emulation__alzheimer4.json``.
        resume: continue ``run_name`` from its ``last.pt`` (epoch ``e`` is seeded with ``seed + e``, so an
            interrupted run ends with the same weights as one that was not).

    Returns:
        Test metrics on the leaky split, with ``original_not_in_train``: the same on the test images
        whose original slice has no copy in the training split.

    Raises:
        FileExistsError: ``run_name`` already holds a run and ``resume`` is False.
        ValueError: another dataset; with ``resume``, a run folder whose image pool differs from the one
            these settings make.
    """
    setup_logging()
    t0 = time.time()
    if dataset != DATASET:
        raise ValueError(f"alz_cnn's leaky emulation works on the {DATASET} folder layout, not {dataset!r}")
    profile = profile or default_profile()
    hp = resolve_profile(LEAKY_PROFILES, profile, {"n_images": n_images, "epochs": epochs})
    source = dict(_ALTZ_PAPER)
    dev = select_device(device)
    configure_numerics(dev, "fp32")
    frame, class_names, exclusions, images = _load(data_root, cache_dir, source["image_size"], 0.15, seed)
    pool, table = augmented_pool(images, frame["label_index"].to_numpy(), int(hp["n_images"]), seed)
    table = image_level_split(table, seed)
    names = frame["image"].to_numpy()[table["original"].to_numpy()]
    table["image"] = [n if k == 0 else f"{n}#copy{k}" for n, k in zip(names, table["copy"])]
    run_dir = Path(runs_dir) / LEAKY_METHOD / dataset / (run_name or default_run_name(profile))
    if (run_dir / "last.pt").exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume=True to continue it, or another --run_name")
    if resume and (run_dir / "pool.csv").is_file():
        kept = pd.read_csv(run_dir / "pool.csv")
        if list(kept["image"]) != list(table["image"]) or list(kept["split"]) != list(table["split"]):
            raise ValueError(f"{run_dir}/pool.csv is not the image pool these settings make (n_images, seed); "
                             "resume it with the settings it was started with")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_csv(run_dir / "pool.csv", table)
    labels = table["label_index"].to_numpy()
    rows = {s: np.flatnonzero(table["split"] == s) for s in ("train", "val", "test")}
    torch.manual_seed(seed)
    net = AltzCNN(len(class_names)).to(dev)
    config = {"method": LEAKY_METHOD, "model": "altzcnn", "dataset": dataset, "profile": profile, **source, **hp,
              "seed": seed, "n_images": {s: len(r) for s, r in rows.items()}, "run_dir": str(run_dir),
              "data_root": data_root, "results_dir": results_dir, "cache_dir": cache_dir, "class_names": class_names}
    logger = RunLogger(run_dir, config, dev, resume=resume)
    meta = {"method": LEAKY_METHOD, "model": "altzcnn", "class_names": class_names, "image_size": source["image_size"],
            "commit": git_commit()}
    fit = fit_model(net, adam(net.parameters(), lr=source["lr"]), None, torch.nn.CrossEntropyLoss(),
                    DataLoader(AlzheimerSlices(pool, labels, rows["train"]), batch_size=source["batch_size"], shuffle=True,
                               generator=torch.Generator().manual_seed(seed)),
                    DataLoader(AlzheimerSlices(pool, labels, rows["val"]), batch_size=256), dev,
                    FitConfig(epochs=int(hp["epochs"]), seed=seed), run_dir, logger, meta, resume=resume,
                    selection=VAL_ACCURACY)
    logger.close()
    ckpt = load_checkpoint(run_dir / f"{hp['tested']}.pt", LEAKY_METHOD)  # paper: the last, as the source; cpu: best validation
    net.load_state_dict(ckpt["model_state"])
    idx, targets, logits = predict(net, DataLoader(AlzheimerSlices(pool, labels, rows["test"]), batch_size=256), dev)
    tested = table.iloc[rows["test"][idx]]
    label = "AltzCNN, leaky protocol emulation"
    metrics = report_classification(tested["image"], targets, logits, class_names, run_dir, label, id_column="image")
    unseen = ~tested["original_in_train"].to_numpy()
    for key, rows_of in (("original_not_in_train", unseen), ("original_in_train", ~unseen)):
        metrics[key] = (
            {k: v for k, v in classification_metrics(targets[rows_of], logits[rows_of].argmax(1), class_names).items()
             if k in ("accuracy", "accuracy_ci95", "balanced_accuracy", "n")} if rows_of.any() else {"n": 0})
    metrics["test_images_with_original_in_train"] = float(1 - unseen.mean())
    write_json(run_dir / "metrics_test.json", metrics)
    log.info("leaky emulation: test accuracy %.4f; %.1f%% of the test images have their original or a copy of it in "
             "training; on the other %d: %s", metrics["accuracy"], 100 * metrics["test_images_with_original_in_train"],
             int(unseen.sum()), metrics["original_not_in_train"].get("accuracy"))
    if publish:
        counts = table["split"].value_counts()
        notes = ["LEAKY PROTOCOL, NOT A GENERALISATION RESULT: augmented copies of the same slice are in the training "
                 f"and the test split ({100 * metrics['test_images_with_original_in_train']:.1f}% of the test images)",
                 "the source's augmentation recipe is unknown; the copies are this repository's (alz_cnn/leaky.py)",
                 f"{int(hp['n_images'])} images (the source's set: {SOURCE_AUGMENTED_IMAGES}), {int(hp['epochs'])} "
                 + ("epochs, the last tested" if hp["tested"] == "last" else
                    f"epochs, the best validation accuracy tested (epoch {ckpt['epoch'] + 1})")]
        path = publish_classification_result(
            results_dir, metrics, method=LEAKY_METHOD, method_label=f"{label} (image-level split of augmented copies)",
            source=SOURCE, dataset=dataset, profile=profile,
            source_reported={"accuracy": MODELS["altzcnn"].source_accuracy,
                             "dataset": "44,000-image augmented version, 70/15/15 image-level random split"},
            n_subjects={s: int(counts.get(s, 0)) for s in ("train", "val", "test")} | {"unit": "images"},
            parameters={**source, **hp, "seed": seed, "best_epoch": fit["best_epoch"]},
            n_parameters=count_parameters(net), wall_time_s=time.time() - t0 + fit["seconds_before_resume"],
            environment=environment_info(dev),
            commit=git_commit(), run_dir=run_dir, notes=notes, subject_split=False, readme_folder="alz_cnn")
        log.info("wrote %s", path)
    return metrics


def _num(value: float | None, fmt: str) -> str:
    """Format a number from a result file; missing or NaN (stored as null) shows as a dash."""
    return "–" if value is None or value != value else format(value, fmt)


def _fmt_ci(value: float, ci: list[float]) -> str:
    return f"{_num(value, '.3f')} [{_num(ci[0], '.3f')}, {_num(ci[1], '.3f')}]"


def summarize(results_dir: str = "results", figures_dir: str = "alz_cnn/figures",
              readme: str = "alz_cnn/README.md") -> str:
    """Write the comparison table (between ``<!-- comparison:start -->`` and ``<!-- comparison:end -->``
    in ``readme``), each model's confusion matrix and the near-duplicate figure under ``figures_dir``,
    from the result files of the finished models. The near-duplicate paragraph (between
    ``<!-- near-duplicates:start -->`` and ``<!-- near-duplicates:end -->``) is rewritten only when a
    result's run folder holds its ``near_duplicates_test.csv``: a checkout without the runs keeps it.

    Returns:
        The README path.
    """
    import shutil

    from common.io import replace_block

    figures = Path(figures_dir)
    figures.mkdir(parents=True, exist_ok=True)
    rows, leak_line = [], ""
    for (name, spec), weighted in ((item, w) for item in MODELS.items() for w in (False, True)):
        path = Path(results_dir) / f"{method_name(name, weighted)}__{DATASET}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        m, p = doc["metrics"], doc["parameters"]
        recall = ", ".join(f"{c.removesuffix('Demented') or c} {_num(v, '.2f')} [{_num(lo, '.2f')}, {_num(hi, '.2f')}]"
                           for (c, v), (lo, hi)
                           in zip(m["per_class_recall"].items(), m["per_class_recall_ci95"].values()))
        clean = m.get("no_near_duplicate", {})
        source = (f"{spec.source_accuracy:.4f} / {spec.source_size_mb} MB / {spec.source_train_s} s"
                  if spec.source_accuracy else "–")
        epochs = f"{p['epochs']} ep" + (f", {p['n_train_images']} imgs" if p.get("max_train_images") else "")
        label = spec.label + (", class-weighted loss" if weighted else "")
        rows.append(f"| {label} | {doc['profile']}: {p['image_size']} px, {epochs} | {doc['n_parameters']:,} | "
                    f"{_num(p['size_mb'], '.2f')} | {_num(p.get('train_seconds'), '.0f')} | "
                    f"{_num(p.get('peak_memory_mb'), '.0f')} | {_fmt_ci(m['accuracy'], m['accuracy_ci95'])} | "
                    f"{_num(m['balanced_accuracy'], '.3f')} | {_num(m['macro_f1'], '.3f')} | {recall} | "
                    f"{_num(clean.get('accuracy'), '.3f')} (n={clean.get('n', 0)}) | {source} |")
        confusion = Path(doc["run_dir"]) / "confusion_test.png"
        if confusion.exists():
            shutil.copyfile(confusion, figures / f"confusion_{name}{'_class_weighted' if weighted else ''}.png")
        leak_csv = Path(doc["run_dir"]) / "near_duplicates_test.csv"
        if leak_csv.exists() and not leak_line:
            leak_line = _leakage_summary(pd.read_csv(leak_csv))
            shutil.copyfile(Path(doc["run_dir"]) / "near_duplicates.png", figures / "near_duplicates.png")
    header = ("| model | profile | params | size [MB] | train time [s] | peak memory [MB] | test accuracy [95% CI] | "
              "balanced acc. | macro-F1 | per-class recall [95% CI] | accuracy without near-duplicates | "
              "source: accuracy / size / train time |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    table = "\n".join([header, *rows]) if rows else "_No finished model yet: run `bash alz_cnn/compare_transfer.sh`._"
    text = (f"Generated by `python -m alz_cnn.train summarize` from `results/alz_*__{DATASET}.json` "
            "(published test folder, 1,279 images; **not subject-split**).\n\n" + table
            + _leaky_summary(Path(results_dir) / f"{LEAKY_METHOD}__{DATASET}.json") + "\n")
    replace_block(Path(readme), "<!-- comparison:start -->", "<!-- comparison:end -->", text)
    if leak_line:
        replace_block(Path(readme), "<!-- near-duplicates:start -->", "<!-- near-duplicates:end -->", leak_line)
    return readme


def _leaky_summary(path: Path) -> str:
    """The leaky-protocol emulation's row (empty when it has not run)."""
    if not path.exists():
        return ""
    doc = json.loads(path.read_text())
    m, p, n = doc["metrics"], doc["parameters"], doc["n_subjects"]
    unseen, seen = m.get("original_not_in_train", {}), m.get("original_in_train", {})
    tested = ("the last tested" if p.get("tested", "last") == "last"
              else f"epoch {p['best_epoch'] + 1}, the best on validation, tested")
    return ("\n\n**The source's protocol, emulated (leaky; not a generalisation result).** AltzCNN on "
            f"{n['train'] + n['val'] + n['test']:,} images (originals of train/ and test/ plus augmented copies, "
            f"{p['epochs']} epochs, {tested}), split at image level 70/15/15: test accuracy "
            f"{_fmt_ci(m['accuracy'], m['accuracy_ci95'])}, balanced {_num(m['balanced_accuracy'], '.3f')}, on "
            f"{n['test']:,} test images of which {100 * m['test_images_with_original_in_train']:.1f}% have their original "
            f"or a copy of it in training"
            + (f" (accuracy on them {_num(seen['accuracy'], '.3f')})" if seen.get("n") else "")
            + f"; on the other {unseen.get('n', 0)}: accuracy {_num(unseen.get('accuracy'), '.3f')}. "
            f"The source reports {MODELS['altzcnn'].source_accuracy:.4f} under this protocol (alz_cnn/leaky.py).")


def _leakage_summary(leak: pd.DataFrame) -> str:
    n, dup = len(leak), int(leak["near_duplicate"].sum())
    same = int((leak["near_duplicate"] & (leak["label"] == leak["nearest_label"])).sum())
    counts = ", ".join(f"r >= {t}: {int((leak['correlation'] >= t).sum())}" for t in (0.95, 0.97, 0.98, 0.99))
    return (f"Near-duplicates: {dup} of {n} test images ({dup / n:.1%}) have a training image with Pearson "
            f"r >= {DEFAULT_THRESHOLD} on {DEFAULT_THUMBNAIL}x{DEFAULT_THUMBNAIL} thumbnails ({same} of them with the "
            f"same label); by threshold: "
            f"{counts}. Median nearest-neighbour r: {leak['correlation'].median():.3f}.\n\n"
            "![near-duplicate pairs](figures/near_duplicates.png)\n")


#: The command-line interface (fire).
declare_profiles(train, {f"{m}:{p}": hp for m, profiles in HYPERPARAMETERS.items() for p, hp in profiles.items()})

CLI = {"train": train, "test": evaluate, "compare": compare, "summarize": summarize, "leaky": leaky}

if __name__ == "__main__":
    run_cli(CLI, name="alz_cnn.train")
