"""VGG16 slice-triplet features + linear SVR, early and late fusion, on a shared split.

    python -m baselines.vgg16_svr.train --dataset=ixi_hh               # random-init VGG16 (no download here)
    python -m baselines.vgg16_svr.train --dataset=ixi_hh --weights=IMAGENET1K_V1

Source: legacy track of the open-source "brain-age-estimation" project (IXI). Early fusion: the
mean of a subject's triplet features -> StandardScaler (fitted on the training split) + one linear
SVR (C=98, epsilon=0.064); held-out features are clipped to their training range. Late fusion: one
linear SVR per triplet position on the unscaled features (C=1, epsilon=0.1), predictions averaged
(both as the notebook that produced the reported numbers). The source's "oracle" and inverse-MAE
weightings (which choose weights with the evaluation labels) are not reproduced. Deviations:
baselines/vgg16_svr/README.md.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVR

from baselines.vgg16_svr.features import FeatureCache, VGG16Features
from common.brain_age import publish_brain_age_result, report_brain_age
from common.cli import declare_profiles
from common.cli import run as run_cli
from common.cv import cross_validated
from common.data.checks import BadImageError
from common.data.preprocess import VolumeSpec, input_reference
from common.device import configure_numerics, default_profile
from common.experiment import default_run_name, labelled_split_frame, publication, resolve_profile, run_folder
from common.io import atomic_write, write_json
from common.runlog import RunLogger, environment_info, git_commit, progress, setup_logging

log = logging.getLogger("vgg16_svr")

SOURCE = 'open-source "brain-age-estimation" project, legacy VGG16 + SVR track (IXI)'
_RECIPE = ("Brain_Age_Colab.ipynb, 70/15/15 version (Results_VGG16SVR of commit af323c9): IXI all sites, 563 subjects "
           "split 394/84/85 at random (seed 42), scored on the 84 validation subjects (no choice made on them); Keras "
           "ImageNet VGG16 block5_pool on the first 120 raw slices of voxel axis 2")
SOURCE_REPORTED = {"early": {"dataset": "IXI, 84 validation subjects, ImageNet VGG16", "mae": 8.47, "recipe": _RECIPE},
                   "late": {"dataset": "IXI, 84 validation subjects, ImageNet VGG16", "mae": 8.03, "recipe": _RECIPE}}

#: ``paper``: the source's triplets (raw voxel axis 2, first 120 slices, all triplets); ``cpu``: the
#: shared preprocessing's MNI brain, the 6 central axial triplet positions (feature extraction at
#: 224x224 costs ~0.27 s per image on 2 cores: 40 triplets x 161 IXI scans would take 29 minutes).
PROFILES = {
    "paper": dict(slicing="voxel_axis2", keep_triplets=None, early_C=98.0, early_epsilon=0.064, late_C=1.0,
                  late_epsilon=0.1),
}
PROFILES["cpu"] = dict(PROFILES["paper"], slicing="mni_axial", keep_triplets=6)


def _subject_features(features: list[np.ndarray]) -> np.ndarray:
    """Early fusion's input: the mean triplet feature per subject, (N, F) float64. In float32, scikit-learn's
    ``MinMaxScaler`` takes a training range below 10 float32 epsilons (1.2e-6) for a constant and does not
    scale or clip that feature, the very case the clip is there for."""
    return np.stack([f.mean(0) for f in features]).astype(np.float64)


def fit_early_fusion(features: list[np.ndarray], ages: np.ndarray, train: np.ndarray, C: float, epsilon: float):
    """Mean triplet feature per subject -> StandardScaler + linear SVR fitted on ``train`` rows (the
    source's), behind a ``MinMaxScaler(clip=True)`` that holds every held-out feature inside its training
    range.

    On the training rows the guard changes nothing (standardising an affine map of a feature gives the
    same values), so the fitted SVR is the source's. It matters for a scan that lights up a feature that
    was all but constant in training: at d03ca9a one IXI-HH test subject had a feature whose training SD
    was 4e-9, standardised to 229,410 SDs, and the source's pipeline predicted -1,043 years for it. It
    also pulls in the ordinary held-out values beyond the training range; on validation only (IXI-HH, the
    5 folds at d03ca9a) the mean of the folds' validation MAE went from 8.39 to 8.14 y (better in 4 folds).

    Args:
        features: per subject (T, F) arrays; ages: (N,) years; train: boolean mask (N,).

    Returns:
        ``(predictions (N,), fitted pipeline)``.
    """
    x = _subject_features(features)
    model = make_pipeline(MinMaxScaler(clip=True), StandardScaler(), SVR(kernel="linear", C=C, epsilon=epsilon))
    model.fit(x[train], ages[train])
    return predict_fitted("early", model, features), model


def fit_late_fusion(features: list[np.ndarray], ages: np.ndarray, train: np.ndarray, C: float, epsilon: float):
    """One linear SVR per triplet position on the unscaled features (fitted on ``train`` rows), as the
    source; the subject's prediction is the mean over positions.

    Raises:
        ValueError: subjects with different numbers of triplet positions.
    """
    counts = {len(f) for f in features}
    if len(counts) != 1:
        raise ValueError(f"late fusion needs the same triplet positions for every subject, got counts {sorted(counts)}")
    stacked = np.stack(features)  # (N, T, F)
    models = [SVR(kernel="linear", C=C, epsilon=epsilon).fit(stacked[train, t], ages[train])
              for t in range(stacked.shape[1])]
    return predict_fitted("late", models, features), models


def predict_fitted(fusion: str, model, features: list[np.ndarray]) -> np.ndarray:
    """Predicted ages (N,) in years of fitted fusion models on per-subject (T, F) feature matrices:
    early, the pipeline on the mean triplet feature; late, the mean over positions of each position's SVR.

    Raises:
        ValueError: late fusion with a subject whose number of triplet positions differs from the models'.
    """
    if fusion == "early":
        return model.predict(_subject_features(features))
    if any(len(f) != len(model) for f in features):
        raise ValueError(f"late fusion has {len(model)} position models; a subject has {sorted({len(f) for f in features})}")
    stacked = np.stack(features)
    return np.mean([m.predict(stacked[:, t]) for t, m in enumerate(model)], axis=0)


#: The only types a saved model may hold; :func:`load_fitted` refuses a file with any other (no pickle).
TRUSTED_TYPES = {"sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler",
                 "sklearn.preprocessing._data.MinMaxScaler", "sklearn.svm._classes.SVR",
                 "builtins.list", "builtins.dict", "builtins.str", "builtins.tuple", "numpy.ndarray", "numpy.dtype",
                 "numpy.float64", "numpy.int32", "numpy.int64"}
MODEL_FILE, CARD_FILE = "model.skops", "model_card.json"


def save_fitted(folder: Path, fusion: str, model, card: dict) -> None:
    """Keep a fusion's fitted scaler and SVR(s) (skops, ``model.skops``) and its model card
    (``model_card.json``: method, features, training ages, bias correction), so it can predict."""
    import skops.io as sio

    write_json(folder / CARD_FILE, {**card, "fusion": fusion})
    atomic_write(folder / MODEL_FILE, lambda fh: fh.write(sio.dumps(model)), mode="wb")


def load_fitted(folder: str | Path) -> tuple[object, dict]:
    """``(model, card)`` of :func:`save_fitted`.

    Raises:
        FileNotFoundError: no saved model in ``folder``.
        ValueError: the file holds a type outside :data:`TRUSTED_TYPES`.
    """
    import skops.io as sio

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no {MODEL_FILE} (runs made before VGG16 + SVR kept its models cannot predict)")
    data = (folder / MODEL_FILE).read_bytes()
    held = _types_in(data)  # every type in the file, not only those skops distrusts (it trusts any scikit-learn class)
    if held - TRUSTED_TYPES:
        raise ValueError(f"{folder / MODEL_FILE} holds types this project never saves: {sorted(held - TRUSTED_TYPES)}")
    return sio.loads(data, trusted=sorted(held)), json.loads((folder / CARD_FILE).read_text())


def _types_in(data: bytes) -> set[str]:
    """``module.class`` of every object in a skops file (from its ``schema.json``)."""
    import io
    import zipfile

    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if "__class__" in node:
                found.add(f"{node.get('__module__', '')}.{node['__class__']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        walk(json.loads(archive.read("schema.json")))
    return found


def feature_cache(card: dict, cache_dir: str | Path) -> FeatureCache:
    """The feature extractor and cache a saved model was fitted on (its card's ``features``)."""
    f = card["features"]
    return FeatureCache(cache_dir, VGG16Features(f["weights"], seed=f["seed"]), f["weights"], f["keep_triplets"],
                        seed=f["seed"], slicing=f["slicing"])


def _root(a: dict) -> Path:
    """``<runs>/vgg16_svr[_randinit]/<dataset>``: the folder of this run's folds."""
    return Path(a["runs_dir"]) / f"vgg16_svr{_suffix(a['weights'])}" / a["dataset"]


def _suffix(weights) -> str:
    """``_randinit`` for a random-init VGG16 (the result names say so), else ``""``."""
    return "_randinit" if weights in ("none", "", None) else ""


@cross_validated(_root)
def main(dataset: str = "ixi_hh", profile: str | None = None, weights: str = "none", data_root: str | None = None,
         keep_triplets: int | None = None, slicing: str | None = None, seed: int = 42, run_name: str | None = None,
         runs_dir: str = "runs",
         results_dir: str = "results", cache_dir: str = ".cache", max_per_split: int | None = None,
         resume: bool = False, publish: bool = True, fold: int | str = "all") -> str:
    """Extract (or load cached) VGG16 features, fit both fusions on the training split, fit the
    bias correction on validation and report on test.

    Args:
        dataset: dataset folder under the data root.
        profile: ``paper`` (all triplets) or ``cpu`` (6 central triplets).
        weights: ``none`` (random-init VGG16, what runs here), ``IMAGENET1K_V1`` (torchvision weights
            API; a clear error when not cached and not downloadable), or a path to a VGG16 state dict.
        data_root: data folder.
        keep_triplets: override the number of central triplet positions kept.
        slicing: ``voxel_axis2`` (the source's: raw voxel axis 2, first 120 slices, raw intensities;
            paper) or ``mni_axial`` (axial slices of the shared preprocessing's MNI brain; cpu).
        seed: seed of the random VGG16 initialisation (used with ``--weights=none``).
        run_name: run folder name.
        runs_dir: root of run folders.
        results_dir: split files in, result JSON out.
        cache_dir: feature cache.
        max_per_split: first N participants per split only (smoke tests).
        resume: with ``fold=all``, reuse the finished folds of ``run_name`` (common/cv.py).
        publish: write ``results/vgg16_svr_{early,late}[_randinit]__<dataset>.json``.
        fold: outer cross-validation fold to run (0..4), or ``all``: every fold, then the pooled
            out-of-fold results (common/cv.py).

    Returns:
        The run folder.
    """
    setup_logging()
    t0 = time.time()
    configure_numerics(torch.device("cpu"), "fp32")
    profile = profile or default_profile()
    overrides = {"keep_triplets": keep_triplets, "slicing": slicing}
    hp = resolve_profile(PROFILES, profile, overrides)
    publish = publication(publish, results_dir, PROFILES, profile, overrides, max_per_split)
    extractor = VGG16Features(weights, seed=seed)
    suffix = _suffix(weights)
    run_dir = run_folder(runs_dir, f"vgg16_svr{suffix}", dataset, run_name or default_run_name(profile), fold)
    frame, exclusions = labelled_split_frame(dataset, data_root, results_dir, max_per_split, fold)
    cache = FeatureCache(cache_dir, extractor, str(weights), hp["keep_triplets"], seed=seed, slicing=hp["slicing"])
    features, keep = [], []
    for i, row in enumerate(progress(list(frame.itertuples()), desc="VGG16 features", unit="scan", log_every_s=60)):
        try:
            features.append(cache.get(row.image_path))
            keep.append(i)
        except BadImageError as err:
            exclusions.add(row.dataset, row.image_path, err.problem, "features")
    frame = frame.iloc[keep].reset_index(drop=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    exclusions.write(run_dir / "exclusions.csv")
    logger = RunLogger(run_dir, {"dataset": dataset, "profile": profile, "weights": str(weights),
                                 "weights_provenance": extractor.provenance, **hp, "seed": seed,
                                 "results_dir": results_dir,
                                 "n_triplets": int(features[0].shape[0]), "feature_dim": int(features[0].shape[1])},
                       torch.device("cpu"))
    logger.close()
    ages = frame["age"].to_numpy(float)
    train = (frame["split"] == "train").to_numpy()
    eval_rows = frame["split"].isin(["val", "test"]).to_numpy()
    train_mean = float(ages[train].mean())
    fits = {"early": fit_early_fusion(features, ages, train, hp["early_C"], hp["early_epsilon"]),
            "late": fit_late_fusion(features, ages, train, hp["late_C"], hp["late_epsilon"])}
    for fusion, (pred, model) in fits.items():
        method = f"vgg16_svr_{fusion}{suffix}"
        sub = run_dir / fusion
        sub.mkdir(exist_ok=True)
        report, correction = report_brain_age(frame[eval_rows].reset_index(drop=True), pred[eval_rows], sub,
                                              f"{method} on {dataset} ({profile})", train_mean_age=train_mean)
        save_fitted(sub, fusion, model, {
            "method": method, "dataset": dataset, "fold": int(fold), "profile": profile, "commit": git_commit(),
            "features": {"weights": str(weights), "seed": seed, "keep_triplets": hp["keep_triplets"],
                         "slicing": hp["slicing"], "provenance": extractor.provenance},
            "train_age_range": [float(ages[train].min()), float(ages[train].max())], "train_mean_age": train_mean,
            "input_reference": input_reference(frame.loc[train, "image_path"], VolumeSpec(pipeline="mni_brain"), cache_dir)
            if hp["slicing"] == "mni_axial" else None,
            "bias_correction": correction.to_dict()})
        if publish:
            label = f"VGG16 {'random-init' if suffix else extractor.provenance} features + SVR, {fusion} fusion"
            notes = [f"VGG16 weights: {extractor.provenance}" + (" (ImageNet weights cannot be downloaded here)"
                                                                  if suffix else "")]
            if hp["keep_triplets"]:
                notes.append(f"cpu profile: the {hp['keep_triplets']} central axial triplets only")
            if hp["slicing"] == "mni_axial":
                notes.append("preprocessing: the shared one (brain extraction, N4, affine to the MNI152 brain), "
                             "axial triplets")
            publish_brain_age_result(
                results_dir, frame, report, method=method, method_label=label, source=SOURCE, dataset=dataset,
                profile=profile, source_reported=SOURCE_REPORTED[fusion], parameters={**hp, "seed": seed},
                n_parameters=None,
                wall_time_s=time.time() - t0, environment=environment_info(torch.device("cpu")), commit=git_commit(),
                run_dir=sub, notes=notes, readme_folder="baselines/vgg16_svr")
    return str(run_dir)


declare_profiles(main, PROFILES)  # shown by --help


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="baselines.vgg16_svr.train")
