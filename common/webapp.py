"""The web app's logic (``bash scripts/app.sh``; the page itself is ``scripts/app.py``): which trained
models exist, and a prediction for uploaded scans through :func:`common.predict.main`, the same code as
the command line. Nothing here preprocesses or predicts on its own.

Uploads are written to a private temporary folder under names chosen here (``scan<k>.nii[.gz]``),
never under the name the upload came with, and refused above :data:`MAX_UPLOAD_MB`.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common import predict

log = logging.getLogger("common.webapp")

#: Largest upload accepted (a 1 mm T1 as .nii is ~20-60 MB).
MAX_UPLOAD_MB = 512


@dataclass
class ModelChoice:
    """One model the app offers: a run's fold ensemble (or one model file) of one method."""

    label: str
    model_path: str
    method: str
    dataset: str
    n_models: int
    train_age_range: tuple[float, float] | None
    validation_mae: float | None


def find_models(runs_dir: str | Path = "runs") -> list[ModelChoice]:
    """Every trained, tested model under ``runs_dir`` (``<method>/<dataset>/<run>/fold<k>``) that
    :func:`common.predict.load_models` accepts, one entry per run and method, sorted by label."""
    found: list[ModelChoice] = []
    root = Path(runs_dir)
    files = [*root.glob("*/*/*/fold*/best.pt"), *root.glob(f"*/*/*/fold*/*/{predict.SKLEARN_MODEL}")]
    runs = {p.parents[1] if p.name == "best.pt" else p.parents[2] for p in files}
    for run in sorted(runs):
        try:
            methods = sorted(predict.methods_in(run))
        except Exception as err:  # an unreadable model file: not offered, the others are
            log.warning("not offered: %s (%s: %s)", run, type(err).__name__, str(err).splitlines()[0][:200])
            continue
        for method in methods:
            try:
                models = predict.load_models(run, method=method)
            except Exception as err:
                log.warning("not offered: %s (%s: %s)", run, type(err).__name__, str(err).splitlines()[0][:200])
                continue
            ranges = [m.checkpoint.get("train_age_range") for m in models if m.checkpoint.get("train_age_range")]
            scores = [m.checkpoint.get("val_score") for m in models if m.checkpoint.get("val_score") is not None]
            dataset = models[0].checkpoint.get("dataset", run.parent.name)
            age_range = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
            kind = f"ensemble of {len(models)} folds" if len(models) > 1 else "single model"
            found.append(ModelChoice(f"{method} on {dataset}, {run.name} ({kind})", str(run), method, dataset, len(models),
                                     age_range, float(np.mean(scores)) if scores else None))
    return sorted(found, key=lambda c: c.label)


def training_predictions(choice: ModelChoice) -> pd.DataFrame | None:
    """The run's pooled out-of-fold predictions (``predictions_oof__<method>.csv``: age and
    predicted age of every training-data subject), or None."""
    path = Path(choice.model_path) / f"predictions_oof__{choice.method}.csv"
    return pd.read_csv(path) if path.is_file() else None


def _stored_name(index: int, upload_name: str) -> str:
    """``scan<k>`` with the upload's NIfTI suffix (``.nii.gz`` or ``.nii``), else ``.upload``: the input
    checks then say the file is not a NIfTI image."""
    lower = upload_name.lower()
    suffix = ".nii.gz" if lower.endswith(".nii.gz") else ".nii" if lower.endswith(".nii") else ".upload"
    return f"scan{index}{suffix}"


def participant_label(upload_name: str) -> str:
    """A display ID from an upload's name (letters, digits, ``-_.`` only; the suffix removed)."""
    stem = re.sub(r"\.nii(\.gz)?$", "", Path(upload_name).name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:64] or "scan"


@dataclass
class Upload:
    """One uploaded scan: its original name (shown, never used as a path), bytes, optional age
    (years) and sex (``M``/``F``/``""``)."""

    name: str
    data: bytes
    age: float | None = None
    sex: str = ""


def predict_uploads(model_path: str, uploads: list[Upload], workdir: str | Path, method: str | None = None,
                    saliency: bool = False, cache_dir: str = ".cache") -> dict:
    """Write ``uploads`` to a new private folder in ``workdir`` and predict them with :func:`common.predict.main`.

    Returns:
        ``{"predictions": DataFrame, "excluded": DataFrame (``item`` = the upload's name), "out_dir": Path,
        "refused": [(name, reason)]}``; ``predictions`` is empty when no scan passed the checks.
    """
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=workdir))
    rows, names, refused = [], {}, []
    for k, up in enumerate(uploads):
        if len(up.data) > MAX_UPLOAD_MB * 2**20:
            refused.append((up.name, f"larger than {MAX_UPLOAD_MB} MB"))
            continue
        path = folder / _stored_name(k, up.name)
        path.write_bytes(up.data)
        names[str(path)] = up.name
        label = participant_label(up.name)
        label = label if label not in {r["participant_id"] for r in rows} else f"{label}_{k}"
        rows.append({"image_path": str(path), "participant_id": label,
                     "age": "" if up.age is None else f"{up.age:g}", "sex": up.sex})
    out = folder / "out"
    empty = pd.DataFrame()
    if not rows:
        return {"predictions": empty, "excluded": empty, "out_dir": out, "refused": refused}
    pd.DataFrame(rows).to_csv(folder / "inputs.csv", index=False)
    try:
        table = pd.read_csv(predict.main(model_path=model_path, inputs=str(folder / "inputs.csv"), output_dir=str(out),
                                         method=method, saliency=saliency, cache_dir=cache_dir), keep_default_na=False)
    except ValueError as err:
        if "none of the" not in str(err):
            raise
        table = empty
    excluded = pd.read_csv(out / "excluded.csv") if (out / "excluded.csv").exists() else empty
    if len(excluded):
        excluded["item"] = excluded["item"].map(lambda p: names.get(p, Path(p).name))
    return {"predictions": table, "excluded": excluded, "out_dir": out, "refused": refused}
