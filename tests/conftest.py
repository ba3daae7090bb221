"""Seeded, tiny synthetic fixtures in the real dataset layouts (in the style of TorchIO's tests)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The suite runs with oneDNN (before anything imports common.device, which applies the setting): fp32
# without it, the project's default since it gave different bits on different CPU kinds, made the suite
# 802 s instead of about 500 on 2 cores (deepbet 8 s instead of 2.5 s per scan, convolutions 2-3x).
# What the default does is tested on its own, in fresh processes without this variable
# (tests/test_numerics.py: no oneDNN kernel runs, and 5 training steps give the bits both EPYC kinds gave).
os.environ.setdefault("BRAINMRI_ONEDNN", "1")


def write_volume(path: Path, shape=(24, 28, 24), spacing=2.0, seed: int = 0, kind: str = "ok",
                 dtype=np.int16) -> Path:
    """Write a synthetic head-like NIfTI: a bright ellipsoid on a dark background.

    ``kind``: ``ok``, ``nan``, ``inf``, ``blank``, ``4d``, ``2d``, ``truncated``, ``not_nifti``, ``empty``,
    ``tiny_spacing``, ``huge_spacing``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
        return path
    if kind == "not_nifti":
        path.write_bytes(gzip.compress(b"this is a text file, not an image\n" * 20))
        return path
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (grid ** 2).sum(0) < 0.6
    data = (inside * (100 + 20 * rng.standard_normal(shape))).clip(0).astype(np.float32)
    if kind in ("nan", "inf"):
        data[3, 3, 3] = np.nan if kind == "nan" else np.inf
        dtype = np.float32
    elif kind == "blank":
        data[:] = 0
    elif kind == "4d":
        data = np.stack([data, data], axis=-1)
    elif kind == "2d":
        data = data[:, :, shape[2] // 2]
    zooms = {"tiny_spacing": (0.001,) * data.ndim, "huge_spacing": (50.0,) * data.ndim}.get(kind, (spacing,) * data.ndim)
    affine = np.diag([zooms[0], zooms[1], zooms[min(2, data.ndim - 1)], 1.0])
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_zooms(zooms)
    nib.save(img, str(path))
    if kind == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    return path


def write_ixi_xls(path: Path, rows: list[tuple]) -> Path:
    """Write an ``IXI.xls``-style sheet: (IXI_ID, SEX_ID, AGE or None)."""
    import xlwt

    book = xlwt.Workbook()
    sheet = book.add_sheet("Table")
    for c, name in enumerate(["IXI_ID", "SEX_ID (1=m, 2=f)", "HEIGHT", "AGE"]):
        sheet.write(0, c, name)
    for r, (ixi_id, sex, age) in enumerate(rows, start=1):
        sheet.write(r, 0, ixi_id)
        sheet.write(r, 1, sex)
        sheet.write(r, 2, 170)
        if age is not None:
            sheet.write(r, 3, age)
    book.save(str(path))
    return path


@pytest.fixture
def ixi_official(tmp_path: Path) -> Path:
    """Official IXI layout: IXI-T1/IXInnn-Site-nnnn-T1.nii.gz + IXI.xls with a duplicate and a missing age."""
    root = tmp_path / "ixi"
    for i, (num, site) in enumerate([(2, "Guys"), (12, "HH"), (13, "HH"), (14, "IOP"), (15, "Guys")]):
        write_volume(root / "IXI-T1" / f"IXI{num:03d}-{site}-{1000 + i:04d}-T1.nii.gz", seed=i)
    write_ixi_xls(root / "IXI.xls", [(2, 2, 35.8), (12, 1, 38.78), (13, 1, 46.7), (13, 2, 50.1), (14, 2, None),
                                    (15, 1, 24.28), (15, 1, 24.28), (99, 1, 60.0)])
    return root


@pytest.fixture
def ixi_hh(tmp_path: Path) -> Path:
    """The 2 mm HH subset layout: T1/, DLMUSE/ label maps, IXI_Demog.csv."""
    root = tmp_path / "ixi_hh"
    lines = ["MRID,Age,Sex"]
    for i in range(6):
        mrid = f"IXI{100 + i:03d}-HH-{2000 + i}"
        write_volume(root / "T1" / f"{mrid}_T1.nii.gz", seed=i)
        write_volume(root / "DLMUSE" / f"{mrid}_T1_DLMUSE.nii.gz", seed=i)
        if i < 5:
            lines.append(f"{mrid},{20.5 + 10 * i},{'MF'[i % 2]}")
    (root / "IXI_Demog.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def ds000228(tmp_path: Path) -> Path:
    """ds000228 layout: participants.tsv + derivatives/preprocessed_data with analysis masks (with NaN)."""
    root = tmp_path / "ds000228"
    rows = ["participant_id\tAge\tAgeGroup\tGender\tScanlog: Scanner"]
    groups = ["3yo", "4yo", "7yo", "8-12yo", "Adult", "Adult"]
    for i, group in enumerate(groups):
        pid = f"sub-pixar{i + 1:03d}"
        age = {"3yo": "3,6", "4yo": "4.5", "7yo": "7.2", "8-12yo": "10.1", "Adult": "25"}[group]
        rows.append(f"{pid}\t{age}\t{group}\t{'MF'[i % 2]}\t3T1")
        if i < 5:
            d = root / "derivatives" / "preprocessed_data" / pid
            write_volume(d / f"{pid}_normed_anat.nii.gz", shape=(20, 24, 18), seed=i)
            mask = write_volume(d / f"{pid}_analysis_mask.nii.gz", shape=(20, 24, 18), seed=i, kind="nan", dtype=np.float32)
            assert mask.exists()
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    """Generic BIDS: one subject with two sessions (ages in sessions.tsv), one without sessions."""
    root = tmp_path / "mybids"
    (root).mkdir()
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t30\tM\nsub-02\tn/a\tF\nsub-03\t41,5\tF\n")
    write_volume(root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz", seed=1)
    write_volume(root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz", seed=2)
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t30.0\nses-2\t32.5\n")
    write_volume(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz", seed=3)
    write_volume(root / "sub-04" / "anat" / "sub-04_T1w.nii.gz", seed=4)
    return root


@pytest.fixture
def shared_data() -> Path:
    """The real data folder; skips (with the reason shown) when it is absent."""
    root = Path(os.environ.get("DATA_ROOT", SHARED_DATA))
    if not (root / "ixi_hh").is_dir() or not (root / "ds000228").is_dir():
        pytest.skip(f"real data not found at {root} (set DATA_ROOT); real-data smoke test skipped")
    return root


@pytest.fixture
def oasis2(tmp_path: Path) -> Path:
    """OASIS-2 layout: Analyze mpr repeats in two RAW parts + oasis_longitudinal.csv."""
    root = tmp_path / "oasis2"
    sessions = [("OAS2_RAW_PART1", "OAS2_0001_MR1", 2), ("OAS2_RAW_PART2", "OAS2_0001_MR2", 1),
                ("OAS2_RAW_PART1", "OAS2_0002_MR1", 1), ("OAS2_RAW_PART2", "OAS2_0099_MR1", 1)]
    for k, (part, session, repeats) in enumerate(sessions):
        for r in range(1, repeats + 1):
            raw = root / part / session / "RAW"
            raw.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(10 * k + r)
            data = (rng.uniform(0, 200, (24, 28, 20))).astype(np.int16)
            nib.save(nib.AnalyzeImage(data, np.diag([1.5, 1.5, 1.5, 1.0])), str(raw / f"mpr-{r}.nifti.img"))
    (root / "oasis_longitudinal.csv").write_text(
        "Subject ID,MRI ID,Group,Visit,MR Delay,M/F,Hand,Age,EDUC,SES,MMSE,CDR\n"
        "OAS2_0001,OAS2_0001_MR1,Nondemented,1,0,M,R,87,14,2,27,0\n"
        "OAS2_0001,OAS2_0001_MR2,Nondemented,2,457,M,R,88,14,2,30,0\n"
        "OAS2_0002,OAS2_0002_MR1,Demented,1,0,F,R,75,12,,23,0.5\n"
        "OAS2_0003,OAS2_0003_MR1,Converted,1,0,F,R,80,16,1,29,0\n")
    return root


def write_study(tmp_path: Path, n_subjects: int, shape=(28, 28, 28), sexes: list[str] | None = None,
                age=lambda i: 20 + 3 * i) -> Path:
    """A BIDS study ``<tmp_path>/data/study`` (one T1 per subject, ages ``age(i)``, optional sex column)
    and its shared folds ``<tmp_path>/results/splits/study.csv``; returns the study folder."""
    from common.data.sources import load_bids
    from common.splits import make_age_stratified_folds

    root = tmp_path / "data" / "study"
    lines = ["participant_id\tage" + ("\tsex" if sexes else "")]
    for i in range(n_subjects):
        lines.append(f"sub-{i:02d}\t{age(i)}" + (f"\t{sexes[i]}" if sexes else ""))
        write_volume(root / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz", shape=shape, seed=i)
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    manifest, _ = load_bids(root)
    (tmp_path / "results" / "splits").mkdir(parents=True)
    make_age_stratified_folds(manifest[["participant_id", "age"]], seed=0).to_csv(
        tmp_path / "results" / "splits" / "study.csv", index=False)
    return root


def write_folds(path: Path, participant_ids: list[str], test_ids: list[str]) -> Path:
    """A fold file whose fold 0 is exactly ``test_ids``; the other participants go round-robin to
    folds 1-4 (tests that need to know fold 0's test subjects)."""
    import pandas as pd

    others = [p for p in participant_ids if p not in set(test_ids)]
    folds = pd.DataFrame({"participant_id": list(test_ids) + others,
                          "fold": [0] * len(test_ids) + [1 + i % 4 for i in range(len(others))]})
    path.parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(path, index=False)
    return path


def fold_result(run_dir: str | Path, name: str) -> dict:
    """The fold result ``<name>.json`` (``<method>__<dataset>``) that a one-fold run wrote in its
    folder or a sub-folder (common.results.fold_result_path)."""
    import json

    found = sorted(Path(run_dir).glob(f"**/fold_results/{name}.json"))
    assert found, f"no fold result {name} under {run_dir}"
    return json.loads(found[0].read_text())
