"""Brain age on your own T1-weighted scans, with any trained brain-age model of this repository.

    python -m common.predict --model_path=runs/resnet3d/ixi_hh/main-cpu --inputs=my_scans/      # fold ensemble
    python -m common.predict --model_path=runs/tsan_stage2/ixi_hh/main-cpu-faithful --inputs=scans.csv --fold=0
    python -m common.predict --model_path=runs/resnet3d/ixi_hh/main-cpu --inputs=bids_study/ --saliency=True
    bash resnet3d/predict.sh --model_path=... --inputs=a.nii.gz,b.nii.gz   # the same, one wrapper per method

``--model_path`` is a cross-validated run (``runs/<method>/<dataset>/<run>/``: every ``fold<k>/best.pt``,
ensembled), one fold folder, or one ``best.pt``. The method is read from the checkpoint, and so is
the preprocessing (:class:`common.data.preprocess.VolumeSpec`), which runs through the same code as
training. ``--inputs``: NIfTI files (comma-separated), a folder of them, a BIDS dataset (``sub-``/``ses-``
from the file names, age and sex from ``participants.tsv`` and ``sub-*_sessions.tsv``), or a CSV/TSV with
``image_path`` and optional ``participant_id``, ``session_id``, ``age`` (years), ``sex``, ``mask_path``.

Writes to ``--output_dir``: ``predictions.csv`` (one row per scan: the ensemble mean, the SD over the
fold models, the brain age gap raw and bias-corrected with the formula named, warnings),
``excluded.csv`` (every input that failed a check, with the reason), ``model_card.json``,
``qc/<id>.png`` (three orthogonal slices of what the model saw, brain outline drawn), with
``--saliency`` ``saliency/<id>.nii.gz`` and ``.png`` (MONAI occlusion sensitivity), and ``predict.log``.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.cli import run as run_cli
from common.data.manifest import Exclusions, make_manifest, parse_age, parse_sex
from common.data.preprocess import VolumeSpec, prepare_volumes, qc_records
from common.data.standardize import SKULL_STRIPPED_BELOW
from common.device import autocast_dtype, precision_of_run, select_device
from common.io import write_csv, write_json
from common.metrics import BiasCorrection, regression_metrics
from common.plots import scatter_predicted_vs_age
from common.runlog import fold_dirs, progress, setup_logging
from common.training import load_checkpoint

log = logging.getLogger("common.predict")

#: Checkpoint ``method`` -> the module that rebuilds its model (``model_from_checkpoint(ckpt)``, or for
#: VGG16 + SVR ``load_fitted``) and names its ``SOURCE``. The leakage-check model (permuted training
#: ages) is deliberately absent.
MODEL_MODULES = {"resnet3d": "resnet3d.train", "oasis_resblock": "baselines.oasis_resblock.train",
                 "tsan_stage1": "tsan.train", "tsan_stage2": "tsan.train",
                 **{f"vgg16_svr_{fusion}{init}": "baselines.vgg16_svr.train" for fusion in ("early", "late")
                    for init in ("", "_randinit")}}
SKLEARN_MODEL = "model.skops"  # a fitted scikit-learn model beside its model_card.json (VGG16 + SVR)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: QC numbers where higher is better (only a value below the training scans' is flagged).
REGISTRATION_QC = ("template_dice", "similarity")
TABLE_SUFFIXES = (".csv", ".tsv")
_ENTITY = re.compile(r"(?:^|_)(sub|ses)-([A-Za-z0-9]+)")


def _name_stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def bids_entities(path: str | Path) -> tuple[str, str]:
    """``(participant_id, session_id)`` from BIDS entities: ``sub-01_ses-2_T1w.nii.gz`` ->
    ``("sub-01", "ses-2")``, from the file name first, else from its folders; ``("", "")`` when none."""
    path = Path(path)
    found: dict[str, str] = {}
    for part in [path.name, *reversed(path.parent.parts)]:
        for key, value in _ENTITY.findall(part):
            found.setdefault(key, f"{key}-{value}")
    return found.get("sub", ""), found.get("ses", "")


def _row(path: Path, participant: str = "", session: str = "", age: object = "", sex: object = "",
         mask: str = "") -> dict:
    return {"dataset": "user", "participant_id": participant, "session_id": session, "image_path": str(path),
            "mask_path": mask, "age": parse_age(age), "sex": parse_sex(sex), "site": "", "label": ""}


def _bids_rows(root: Path) -> list[dict]:
    """The T1w scans of a BIDS dataset: with ``participants.tsv``, through the training loader
    (:func:`common.data.sources.load_bids`: ages from the session and participant tables, sex);
    without it, every ``*_T1w`` file, IDs from its entities, no ages."""
    if (root / "participants.tsv").exists():
        from common.data.sources import load_bids

        manifest, notes = load_bids(root, dataset="user")
        for row in notes.rows:  # table problems are logged; every image is still predicted
            log.info("%s: %s", row["item"], row["reason"])
        return manifest.to_dict("records")
    rows = []
    for path in sorted(p for p in root.rglob("*_T1w.nii*") if p.name.endswith(NIFTI_SUFFIXES)):
        participant, session = bids_entities(path.relative_to(root))
        rows.append(_row(path, participant, session))
    return rows


def _table_rows(path: Path) -> list[dict]:
    table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    if "image_path" not in table.columns:
        raise ValueError(f"{path}: needs an image_path column (optional: participant_id, session_id, age, sex, mask_path)")
    rows = []
    for r in table.to_dict("records"):
        image = Path(r["image_path"]) if Path(r["image_path"]).is_absolute() else path.parent / r["image_path"]
        rows.append(_row(image, r.get("participant_id", ""), r.get("session_id", ""), r.get("age", ""), r.get("sex", ""),
                         r.get("mask_path", "")))
    return rows


def input_table(inputs: str | list | tuple) -> pd.DataFrame:
    """The scans named by ``inputs``, as manifest rows (:func:`common.data.manifest.make_manifest`).

    Each item of ``inputs`` (a list, or comma-separated) is a NIfTI file, a CSV/TSV table, a BIDS
    dataset (a folder with ``participants.tsv`` or ``sub-*`` folders) or a folder searched for NIfTI
    files. IDs come from BIDS entities, else from the file name; where two distinct files would share
    an ID, each takes its path (below the folder given, without the suffix) instead. A path that does not
    exist stays in the table: the input checks exclude it with its reason.

    Raises:
        ValueError: nothing given, a table without ``image_path``, or a folder without NIfTI files.
    """
    items = [str(p) for p in inputs] if isinstance(inputs, (list, tuple)) else [p for p in str(inputs).split(",") if p]
    if not items:
        raise ValueError("no inputs given")
    rows: list[dict] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            bids = (path / "participants.tsv").exists() or any(path.glob("sub-*"))
            found = _bids_rows(path) if bids else [_row(p) for p in sorted(path.rglob("*"))
                                                   if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)]
            if not found:
                raise ValueError(f"{path}: no NIfTI files ({'*_T1w.nii[.gz] in a BIDS dataset' if bids else '*.nii[.gz]'})")
            for r in found:
                r["_base"] = str(path)
            rows += found
        elif path.name.endswith(TABLE_SUFFIXES) and path.is_file():
            rows += _table_rows(path)
        else:
            rows.append(_row(path))
    for r in rows:
        if not r["participant_id"]:
            participant, session = bids_entities(r["image_path"])
            r["participant_id"] = participant or _name_stem(Path(r["image_path"]))
            r["session_id"] = r["session_id"] or session
    unique, seen = [], set()
    for r in rows:  # the same file named twice is one row
        key = (str(Path(r["image_path"]).resolve()), r["participant_id"], r["session_id"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    counts = pd.Series([(r["participant_id"], r["session_id"]) for r in unique]).value_counts()
    for r in unique:  # distinct files never share an ID
        if counts[(r["participant_id"], r["session_id"])] > 1:
            image = Path(r["image_path"])
            base = Path(r.get("_base") or image.parent.parent)
            rel = image.relative_to(base) if image.is_relative_to(base) else image
            r["participant_id"] = str(rel.parent / _name_stem(rel)).strip("/").replace("/", "_")
    frame = pd.DataFrame(unique).drop(columns=["_base"], errors="ignore")
    return make_manifest(frame.to_dict("records"))


@dataclass
class FoldModel:
    """One trained model of a run: a torch checkpoint (``best.pt``, itself the model card) with its
    run's ``config.json``, or a fitted scikit-learn model (``model.skops``) with its ``model_card.json``
    as ``checkpoint``."""

    path: Path
    checkpoint: dict
    config: dict

    @property
    def method(self) -> str:
        return self.checkpoint["method"]

    @property
    def is_torch(self) -> bool:
        return self.path.name != SKLEARN_MODEL

    @property
    def module(self):
        return importlib.import_module(MODEL_MODULES[self.method])

    @property
    def correction(self) -> BiasCorrection:
        return BiasCorrection.from_dict(self.checkpoint["bias_correction"])

    @property
    def spec(self) -> VolumeSpec:
        """The preprocessing of a torch model; for VGG16 + SVR, the shared one its MNI slices come from."""
        if self.is_torch:
            return VolumeSpec.from_dict(self.checkpoint["preprocess"])
        slicing = self.checkpoint["features"]["slicing"]
        return VolumeSpec(pipeline="mni_brain" if slicing == "mni_axial" else "monai")

    def build(self, device: torch.device) -> torch.nn.Module:
        """The trained network on ``device``, in eval mode (torch models)."""
        model = self.module.model_from_checkpoint(self.checkpoint)
        model.load_state_dict(self.checkpoint["model_state"])
        return model.to(device).eval()

    def card(self) -> dict:
        """What the model is: method, source, commit, preprocessing, training data and ages, fold,
        validation score, bias-correction formula."""
        ckpt, correction = self.checkpoint, self.correction
        common = {"checkpoint": str(self.path), "method": self.method, "source": getattr(self.module, "SOURCE", ""),
                  "bias_correction": {**correction.to_dict(), "needs_age": correction.needs_age}}
        if not self.is_torch:
            return {**ckpt, **common}
        return {**common, "commit": ckpt.get("commit", self.config.get("git_commit", "")), "dataset": ckpt.get("dataset", ""),
                "fold": ckpt.get("fold"), "profile": self.config.get("profile", ""), "preprocess": ckpt["preprocess"],
                "train_age_range": ckpt.get("train_age_range"), "train_mean_age": ckpt.get("train_mean_age"),
                "best_epoch": ckpt.get("best_epoch"), "validation_score": ckpt.get("val_score"),
                "precision": precision_of_run(self.config), "input_reference": ckpt.get("input_reference")}


def model_files(path: Path) -> list[Path]:
    """The model files of a run, fold folder or file (``best.pt`` / ``model.skops``), moved-aside folds excluded."""
    if path.is_file():
        return [path]
    direct = [path / "best.pt", *sorted(path.glob(f"*/{SKLEARN_MODEL}")), path / SKLEARN_MODEL]
    if any(p.is_file() for p in direct):
        return [p for p in direct if p.is_file()]
    return [f for p in fold_dirs(path) for f in [p / "best.pt", *sorted(p.glob(f"*/{SKLEARN_MODEL}"))] if f.is_file()]


def methods_in(path: str | Path) -> set[str]:
    """The methods of the models under ``path``, read from the light files beside them (``config.json``,
    ``model_card.json``), or from the checkpoint where there is none."""
    methods = set()
    for file in model_files(Path(path)):
        light = file.parent / ("model_card.json" if file.name == SKLEARN_MODEL else "config.json")
        method = json.loads(light.read_text()).get("method") if light.is_file() else None
        methods.add(method or _load(file).method)
    return methods


def _load(file: Path) -> FoldModel:
    if file.name == SKLEARN_MODEL:
        card = json.loads((file.parent / "model_card.json").read_text())
        return FoldModel(file, card, {})
    config_path = file.parent / "config.json"
    return FoldModel(file, load_checkpoint(file), json.loads(config_path.read_text()) if config_path.exists() else {})


def load_models(model: str | Path, fold: int | None = None, method: str | None = None) -> list[FoldModel]:
    """The fold models of ``model``: a run folder of ``fold<k>/best.pt`` (VGG16 + SVR:
    ``fold<k>/<fusion>/model.skops``), a fold folder, or one model file.

    Args:
        fold: keep only the model of this outer fold.
        method: keep only this method's models (VGG16 + SVR keeps two fusions in one run).

    Raises:
        FileNotFoundError: no model there, or none of fold ``fold`` or method ``method``.
        ValueError: models of several methods and no ``method``, a method that cannot predict, or a run
            that was never tested (no validation-fitted bias correction).
    """
    path = Path(model)
    files = model_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no best.pt or {SKLEARN_MODEL} (give a run folder with fold<k>/, a fold folder "
                                "or a model file)")
    models = [_load(f) for f in files]
    if method is not None:
        models = [m for m in models if m.method == method]
        if not models:
            raise FileNotFoundError(f"{path}: no model of method {method!r}")
    methods = {m.method for m in models}
    if len(methods) > 1:
        raise ValueError(f"{path}: models of several methods {sorted(methods)}; choose one with --method")
    (name,) = methods
    if name not in MODEL_MODULES:
        raise ValueError(f"{path}: method {name!r} has no predict (known: {sorted(MODEL_MODULES)})")
    untested = [str(m.path) for m in models if "bias_correction" not in m.checkpoint]
    if untested:
        raise ValueError(f"{untested[0]} has no bias correction: its run was never tested (run its test command first)")
    if fold is not None:
        models = [m for m in models if m.checkpoint.get("fold", 0) == int(fold)]
        if not models:
            raise FileNotFoundError(f"{path}: no model of fold {fold}")
    keys = {json.dumps(m.checkpoint.get("preprocess", m.checkpoint.get("features")), sort_keys=True) for m in models}
    if len(keys) > 1:
        raise ValueError(f"{path}: the fold models use different preprocessing")
    return models


def _predict_one(net: torch.nn.Module, frame: pd.DataFrame, device: torch.device, precision: str,
                 batch_size: int) -> np.ndarray:
    from common.brain_age import volume_loader
    from common.data.datasets import VolumeDataset
    from common.training import predict

    extra = [k for k in getattr(net, "extra_inputs", ()) if k not in VolumeDataset.ITEM_KEYS]
    frame = frame.assign(**{k: np.nan for k in extra if k not in frame})  # e.g. TSAN's stage1_age: computed
    idx, _, out = predict(net, volume_loader(frame, batch_size, False, 0, columns=tuple(extra)), device,
                          autocast_dtype(precision))
    predicted = np.empty(len(frame))
    predicted[idx] = out
    return predicted


def _feature_cache(model: FoldModel, cache_dir: str | Path):
    """VGG16 + SVR: the feature extractor and cache of a model's card (one per feature spec)."""
    return _cached_feature_cache(MODEL_MODULES[model.method], json.dumps(model.checkpoint["features"], sort_keys=True),
                                 str(cache_dir))


@functools.lru_cache(maxsize=2)
def _cached_feature_cache(module: str, features: str, cache_dir: str):
    return importlib.import_module(module).feature_cache({"features": json.loads(features)}, cache_dir)


def prepare_inputs(models: list[FoldModel], frame: pd.DataFrame, cache_dir: str | Path,
                   exclusions: Exclusions) -> pd.DataFrame:
    """Preprocess every row of ``frame`` as the models were trained (torch: the checkpoint's
    :class:`VolumeSpec`; VGG16 + SVR: its slice features), through the training code and cache.

    Returns:
        The rows that passed (with ``cache_path`` for torch models); the others are in ``exclusions``.
    """
    if models[0].is_torch:
        return prepare_volumes(frame, models[0].spec, cache_dir, exclusions)
    from common.data.checks import BadImageError

    cache, keep = _feature_cache(models[0], cache_dir), []
    for i, row in enumerate(progress(list(frame.itertuples(index=False)), desc="VGG16 features", unit="scan", log_every_s=60)):
        try:
            cache.get(row.image_path)
            keep.append(i)
        except BadImageError as err:
            exclusions.add(row.dataset, row.image_path, err.problem, "features")
    return frame.iloc[keep].reset_index(drop=True)


def predict_frame(models: list[FoldModel], frame: pd.DataFrame, device: torch.device, batch_size: int = 4,
                  cache_dir: str | Path = ".cache") -> dict:
    """Every fold model on every prepared row of ``frame`` (:func:`prepare_inputs`).

    A model that takes sex (TSAN) is given the row's sex; where it is unknown the row is predicted
    once as ``M`` and once as ``F`` and the prediction is their mean (both are returned).

    Returns:
        ``{"raw": (K, N) years, "corrected": (K, N) years (NaN where the formula needs an unknown
        age), "as_male": (K, N) or None, "as_female": (K, N) or None}``.
    """
    age = frame["age"].to_numpy(float)
    unknown = ~frame["sex"].isin(["M", "F"]).to_numpy()
    raw, corrected, as_male, as_female = [], [], [], []
    for m in progress(models, desc="fold models", unit="model"):
        if not m.is_torch:
            model, _ = m.module.load_fitted(m.path.parent)
            features = [_feature_cache(m, cache_dir).get(path) for path in frame["image_path"]]
            pred = m.module.predict_fitted(m.checkpoint["fusion"], model, features)
            raw.append(pred)
            corrected.append(m.correction.apply(pred, age))  # formulas that need no age ignore it
            continue
        net = m.build(device)
        precision = precision_of_run(m.config)
        if "sex" in getattr(net, "extra_inputs", ()):
            male = _predict_one(net, frame.assign(sex=np.where(unknown, "M", frame["sex"])), device, precision, batch_size)
            female = _predict_one(net, frame.assign(sex="F"), device, precision, batch_size) if unknown.any() else male
            pred = np.where(unknown, (male + female) / 2, male)
            as_male.append(np.where(unknown, male, np.nan))
            as_female.append(np.where(unknown, female, np.nan))
        else:
            pred = _predict_one(net, frame, device, precision, batch_size)
        raw.append(pred)
        corrected.append(m.correction.apply(pred, age))
    return {"raw": np.array(raw), "corrected": np.array(corrected),
            "as_male": np.array(as_male) if as_male else None, "as_female": np.array(as_female) if as_female else None}


def scan_warnings(frame: pd.DataFrame, models: list[FoldModel], qc: list[dict]) -> list[str]:
    """Per row, the reasons to distrust its prediction (``; ``-joined, empty when none): an age outside
    the training ages, sex unknown to a model that takes it, a brain volume outside the training scans'
    range (another input domain), and a registration to the template (Dice, similarity) worse than every
    training scan's (a failed registration, or a header orientation that disagrees with the image),
    and a scan that arrived skull-stripped (:func:`common.data.standardize.extracerebral_signal`);
    the ranges are the checkpoint's ``input_reference``."""
    ranges = [m.checkpoint.get("train_age_range") for m in models if m.checkpoint.get("train_age_range")]
    low, high = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else (-np.inf, np.inf)
    takes_sex = models[0].method.startswith("tsan")
    reference = models[0].checkpoint.get("input_reference") or {}
    out = []
    for row, stats in zip(frame.itertuples(index=False), qc):
        notes = []
        if np.isfinite(row.age) and not low <= row.age <= high:
            notes.append(f"age {row.age:g} outside the training ages {low:g}-{high:g}")
        if takes_sex and row.sex not in ("M", "F"):
            notes.append("sex unknown: the mean of the predictions as M and as F")
        for key, (lo, hi) in reference.items():
            value = stats.get(key)
            if value is None:
                continue
            if key in REGISTRATION_QC and value < lo:  # a better registration than every training scan's is no warning
                notes.append(f"{key} {value:g} below every training scan's ({lo:g}-{hi:g}): the registration to the "
                             "template failed or the header orientation disagrees with the image")
            elif key not in REGISTRATION_QC and not lo <= value <= hi:
                notes.append(f"{key} {value:g} outside the training scans' {lo:g}-{hi:g}: another input domain")
        if stats.get("extracerebral_signal", 1.0) < SKULL_STRIPPED_BELOW:
            notes.append("the scan arrived skull-stripped (almost no signal outside the brain); the models here are "
                         "trained on skull-on scans, and a mask from another tool moved resnet3d's prediction by 15-19 y "
                         "in the invariance benchmark (benchmarks/BENCHMARKS.md): predict the original scan")
        out.append("; ".join(notes))
    return out


def qc_figure(volume: np.ndarray, path: str | Path, title: str) -> Path:
    """Three orthogonal slices through the centre of a preprocessed (D, H, W) volume, with the brain
    outline (non-zero voxels) drawn; what the model saw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = [s // 2 for s in volume.shape]
    cuts = [volume[centre[0]], volume[:, centre[1]], volume[:, :, centre[2]]]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for ax, cut, name in zip(axes, cuts, ("sagittal", "coronal", "axial")):
        ax.imshow(np.rot90(cut), cmap="gray")
        if (cut != 0).any() and (cut == 0).any():
            ax.contour(np.rot90(cut != 0), levels=[0.5], colors="tab:orange", linewidths=0.7)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


class _AgeOutput(torch.nn.Module):
    """``x -> (B, 1)`` predicted age, with fixed extra inputs (TSAN's sex), for MONAI's saliency."""

    def __init__(self, net: torch.nn.Module, sex_code: int):
        super().__init__()
        self.net, self.sex_code = net, sex_code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        extras = [torch.full((n,), self.sex_code, dtype=torch.int64, device=x.device) if k == "sex"
                  else torch.full((n,), float("nan"), device=x.device) for k in getattr(self.net, "extra_inputs", ())]
        return self.net(x, *extras).reshape(-1, 1)


def occlusion_saliency(model: FoldModel, volume: np.ndarray, sex: str, device: torch.device, mask_size: int = 8) -> np.ndarray:
    """MONAI occlusion sensitivity of one fold model's predicted age: (D, H, W), the change of the
    predicted age (years) when a ``mask_size`` cube around each voxel is blurred away."""
    from monai.visualize import OcclusionSensitivity

    from common.data.datasets import SEX_CODES

    wrapped = _AgeOutput(model.build(device), SEX_CODES.get(sex, 0))
    occlusion = OcclusionSensitivity(wrapped, mask_size=mask_size, n_batch=8, verbose=False, activate=False)
    with torch.no_grad():
        x = torch.from_numpy(volume[None, None].astype(np.float32)).to(device)
        base = float(wrapped(x)[0, 0])
        occluded, _ = occlusion(x)
    return (base - occluded[0, 0].cpu().numpy()).astype(np.float32)


def _saliency_outputs(values: np.ndarray, volume: np.ndarray, spec: VolumeSpec, stem: Path, title: str) -> None:
    import matplotlib
    import nibabel as nib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(values, np.diag([*spec.spacing_mm, 1.0])), f"{stem}.nii.gz")
    centre = [s // 2 for s in volume.shape]
    limit = float(np.abs(values).max()) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for ax, (img, sal), name in zip(axes, [(volume[centre[0]], values[centre[0]]), (volume[:, centre[1]], values[:, centre[1]]),
                                           (volume[:, :, centre[2]], values[:, :, centre[2]])], ("sagittal", "coronal", "axial")):
        ax.imshow(np.rot90(img), cmap="gray")
        shown = ax.imshow(np.rot90(sal), cmap="coolwarm", vmin=-limit, vmax=limit, alpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.colorbar(shown, ax=axes, shrink=0.7, label="age change when occluded (years)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(f"{stem}.png", dpi=90)
    plt.close(fig)


def safe_name(participant: str, session: str) -> str:
    """The file-name stem of a scan's QC and saliency outputs (letters, digits, ``_.-`` only)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{participant}_{session}" if session else participant)


def main(model_path: str, inputs: str, output_dir: str = "predictions", fold: int | None = None,
         method: str | None = None, saliency: bool = False,
         cache_dir: str = ".cache", device: str = "auto", batch_size: int = 4, qc: bool = True) -> str:
    """Predict brain age for each input scan with a trained brain-age model (the fold ensemble by default).

    Args:
        model_path: a cross-validated run folder (``runs/<method>/<dataset>/<run>``: every fold model,
            ensembled), a fold folder, or a ``best.pt``.
        inputs: NIfTI files (comma-separated), a folder of them, a BIDS dataset, or a CSV/TSV with
            ``image_path`` and optional ``participant_id``, ``session_id``, ``age`` (years), ``sex``,
            ``mask_path`` (module docstring).
        output_dir: where ``predictions.csv``, ``excluded.csv``, ``model_card.json``, ``qc/``,
            ``predict.log`` (and, with ages, ``metrics.json`` and ``scatter.png``) are written.
        fold: use only the model of this fold instead of the ensemble.
        method: the method, where a run holds several (VGG16 + SVR: ``vgg16_svr_early_randinit``
            or ``vgg16_svr_late_randinit``).
        saliency: also write MONAI occlusion-sensitivity maps (first fold model; NIfTI on the
            model's grid, and a PNG overlay) to ``saliency/``; slow on a CPU (hundreds of forward passes per scan).
        cache_dir: preprocessing cache (shared with training).
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: inference batch size.
        qc: write the QC figure of each scan.

    Returns:
        Path of ``predictions.csv``.

    Raises:
        FileNotFoundError / ValueError: see :func:`load_models` and :func:`input_table`; ValueError
            also when no input passed the checks.
    """
    setup_logging()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "predict.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))  # the run log keeps the INFO lines whoever set up the console
    try:
        return _main(model_path, inputs, out, fold, method, saliency, cache_dir, device, batch_size, qc)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def _qc_volume(model: FoldModel, row, cache_dir) -> np.ndarray:
    """The (D, H, W) volume a model saw: a torch model's preprocessed input; for VGG16 + SVR the
    shared preprocessing's MNI brain (its slices) or the raw volume (the source's slicing)."""
    if model.is_torch:
        return np.load(row.cache_path)[0]
    if model.spec.pipeline == "mni_brain":
        from common.data.standardize import StandardCache

        return StandardCache(cache_dir, "Affine").get(row.image_path).brain
    from common.data.checks import load_checked

    return load_checked(row.image_path)[0]


def _main(model, inputs, out: Path, fold, method, saliency, cache_dir, device, batch_size, qc) -> str:
    models = load_models(model, fold, method)
    spec = models[0].spec
    if saliency and not models[0].is_torch:
        log.warning("saliency maps need a network; %s is an SVR on fixed features: none are written", models[0].method)
        saliency = False
    write_json(out / "model_card.json", {"models": [m.card() for m in models]})
    log.info("%s: %d fold model(s) of %s trained on %s", model, len(models), models[0].method,
             models[0].checkpoint.get("dataset", "?"))
    frame = input_table(inputs)
    exclusions = Exclusions()
    usable = prepare_inputs(models, frame, cache_dir, exclusions)
    exclusions.write(out / "excluded.csv")
    for row in exclusions.rows:
        print(f"EXCLUDED {row['item']}: {row['reason']}")
    if usable.empty:
        raise ValueError(f"none of the {len(frame)} inputs passed the checks; see {out / 'excluded.csv'}")
    usable = usable.reset_index(drop=True).assign(split="predict")
    dev = select_device(device)
    preds = predict_frame(models, usable, dev, batch_size, cache_dir)
    raw, corrected = preds["raw"], preds["corrected"]
    correction = models[0].correction
    age = usable["age"].to_numpy(float)
    mean_raw = raw.mean(axis=0)
    mean_corrected = corrected.mean(axis=0)
    table = pd.DataFrame({
        "participant_id": usable["participant_id"], "session_id": usable["session_id"],
        "image_path": usable["image_path"], "method": models[0].method, "age": age, "sex": usable["sex"],
        "predicted_age": mean_raw, "predicted_age_sd": raw.std(axis=0, ddof=1) if len(models) > 1 else np.nan,
        "n_models": len(models), "brain_age_gap": mean_raw - age,
        "predicted_age_corrected": mean_corrected, "brain_age_gap_corrected": mean_corrected - age,
        "correction_formula": correction.formula + (" (needs the age)" if correction.needs_age else ""),
    })
    if preds["as_male"] is not None:
        # the rows of unknown sex, predicted as each (NaN where the sex was given)
        table["predicted_age_as_male"] = preds["as_male"].mean(axis=0)
        table["predicted_age_as_female"] = preds["as_female"].mean(axis=0)
    table["warnings"] = scan_warnings(usable, models, qc_records(usable["image_path"], spec, cache_dir))
    for row in table[table["warnings"] != ""].itertuples(index=False):
        log.warning("%s: %s", row.participant_id, row.warnings)
    if correction.needs_age and np.isnan(age).any():
        log.info("the %s correction needs each scan's age: corrected values are left empty where it is unknown",
                 correction.formula)
    path = write_csv(out / "predictions.csv", table.round(4))
    for i, row in enumerate(progress(list(usable.itertuples(index=False)), desc="QC", unit="scan", log_every_s=60)):
        name = safe_name(row.participant_id, row.session_id)
        volume = _qc_volume(models[0], row, cache_dir)
        scan_id = " ".join(filter(None, (row.participant_id, row.session_id)))
        title = f"{scan_id}: predicted {mean_raw[i]:.1f} y ({models[0].method})"
        if qc:
            qc_figure(volume, out / "qc" / f"{name}.png", title)
        if saliency:
            values = occlusion_saliency(models[0], volume, row.sex, dev)
            _saliency_outputs(values, volume, spec, out / "saliency" / name, f"{title}, occlusion sensitivity")
    labelled = ~np.isnan(age)
    if labelled.sum() >= 2:
        metrics = {"n": int(labelled.sum()), "raw": regression_metrics(age[labelled], mean_raw[labelled]),
                   "corrected": regression_metrics(age[labelled], mean_corrected[labelled])}
        write_json(out / "metrics.json", metrics)
        scatter_predicted_vs_age(age[labelled], mean_raw[labelled], out / "scatter.png", f"{models[0].method} predictions",
                                 corrected=mean_corrected[labelled] if np.isfinite(mean_corrected[labelled]).all() else None)
        log.info("MAE %.2f (corrected %.2f) on %d scans with age", metrics["raw"]["mae"], metrics["corrected"]["mae"],
                 metrics["n"])
    log.info("wrote %s (%d predicted, %d excluded)", path, len(table), len(exclusions))
    return str(path)


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="common.predict")
