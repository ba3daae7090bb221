"""Dataset sources: turn a dataset's public layout into the standard manifest.

Each source returns ``(manifest, exclusions)``; see :mod:`common.data.manifest` for the columns.
Labels are joined on exact identifiers, never by substring; ages stay floats.

Supported layouts:

* IXI, official release: ``IXI-T1/IXInnn-Site-nnnn-T1.nii.gz`` + ``IXI.xls`` (IXI_ID, SEX_ID 1=m 2=f,
  AGE). The 2 mm Hammersmith subset shipped as ``ixi_hh``: ``T1/IXInnn-HH-nnnn_T1.nii.gz``,
  ``IXI_Demog.csv`` (MRID, Age, Sex), DLMUSE label maps ``DLMUSE/<MRID>_T1_DLMUSE.nii.gz`` (label > 0
  is the brain mask), and optionally ``IXI.xls``.
* OpenNeuro ds000228: ``participants.tsv`` + SPM-normalised anatomicals
  ``derivatives/preprocessed_data/sub-*/sub-*_normed_anat.nii.gz`` with ``*_analysis_mask.nii.gz``.
* Generic BIDS: ``participants.tsv`` + ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``; per-session ages from
  ``sub-*/sub-*_sessions.tsv`` when it has an age column.
* OASIS-2 (longitudinal): ``OAS2_RAW_PART1/``, ``OAS2_RAW_PART2/`` with
  ``OAS2_nnnn_MRn/RAW/mpr-N.nifti.img|hdr`` Analyze pairs, and ``oasis_longitudinal.csv``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.manifest import Exclusions, make_manifest, parse_age, parse_sex

#: Why a scan without a label is left out (it is not lost: predict can still take it).
UNLABELLED = ": left out of training and evaluation (it can still be predicted)"

_IXI_HH_NAME = re.compile(r"^(IXI(\d{3})-([A-Za-z]+)-(\d{4}))_T1\.nii(\.gz)?$")
_IXI_OFFICIAL_NAME = re.compile(r"^(IXI(\d{3})-([A-Za-z]+)-(\d{4}))-T1\.nii(\.gz)?$")

#: ds000228 AgeGroup -> the 3 classes of the MathWorks mid-slice example.
DS000228_AGE_CLASSES = {
    "3yo": "Ages3-5", "4yo": "Ages3-5", "5yo": "Ages3-5",
    "7yo": "Ages7-12", "8-12yo": "Ages7-12",
    "Adult": "Adults",
}


def read_participants_table(path: Path, id_column: str, exclusions: Exclusions, dataset: str) -> pd.DataFrame:
    """Read a participants table (TSV/CSV/XLS) as strings; drop and log duplicated IDs.

    Every row of an ID that occurs more than once is dropped (which row is right cannot be told).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if ``id_column`` is missing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"participants table not found: {path}")
    if path.suffix == ".xls":
        table = pd.read_excel(path, engine="xlrd", dtype=str)
    else:
        table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str,
                            keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    if id_column not in table.columns:
        raise ValueError(f"{path}: no {id_column!r} column (columns: {list(table.columns)})")
    table[id_column] = table[id_column].fillna("").astype(str).str.strip()
    table = table[table[id_column] != ""]
    dup = table[id_column].duplicated(keep=False)
    for pid in sorted(set(table.loc[dup, id_column])):
        exclusions.add(dataset, pid, f"ID occurs {int((table[id_column] == pid).sum())} times in {path.name}",
                       "participants")
    return table[~dup].reset_index(drop=True)


def _ages(table: pd.DataFrame, column: str, id_column: str, exclusions: Exclusions,
          dataset: str, source: str) -> dict[str, float]:
    """Parse an age column into ``{id: float}``, logging unparseable cells (kept as NaN)."""
    ages = {}
    for pid, raw in zip(table[id_column], table[column]):
        try:
            ages[pid] = parse_age(raw)
        except ValueError as err:
            exclusions.add(dataset, pid, f"{source}: {err}", "participants")
            ages[pid] = float("nan")
    return ages


def read_ixi_xls(path: Path, exclusions: Exclusions, dataset: str) -> tuple[dict[int, float], dict[int, str]]:
    """Ages and sexes from the official ``IXI.xls`` keyed by IXI number.

    Rows without AGE are dropped. An IXI_ID listed more than once is kept only if all its rows
    agree on age (to 0.01 y) and sex; otherwise all its rows are dropped and logged.

    Raises:
        ValueError: if the IXI_ID, AGE or SEX_ID columns are missing.
    """
    table = pd.read_excel(path, engine="calamine")
    sex_col = next((c for c in table.columns if str(c).startswith("SEX_ID")), None)
    if "IXI_ID" not in table.columns or "AGE" not in table.columns or sex_col is None:
        raise ValueError(f"{path}: expected columns IXI_ID, SEX_ID, AGE; got {list(table.columns)}")
    table = table.dropna(subset=["IXI_ID", "AGE"]).copy()
    table["IXI_ID"] = table["IXI_ID"].astype(int)
    table["AGE"] = table["AGE"].astype(float).round(2)
    ages, sexes = {}, {}
    for ixi_id, rows in table.groupby("IXI_ID"):
        if rows["AGE"].nunique() > 1 or rows[sex_col].nunique() > 1:
            exclusions.add(dataset, f"IXI{ixi_id:03d}", f"IXI_ID listed {len(rows)} times in {path.name} "
                           f"with conflicting AGE/SEX ({sorted(rows['AGE'])})", "participants")
            continue
        ages[int(ixi_id)] = float(rows["AGE"].iloc[0])
        sexes[int(ixi_id)] = parse_sex(rows[sex_col].iloc[0])
    return ages, sexes


def load_ixi(root: str | Path, dataset: str = "ixi") -> tuple[pd.DataFrame, Exclusions]:
    """Manifest for IXI T1 scans, official layout or the ``ixi_hh`` 2 mm subset.

    ``participant_id`` is the IXI number (``IXI012``), the subject key of ``IXI.xls``; the scan's
    MRID (``IXI012-HH-1211``) is joined exactly to ``IXI_Demog.csv`` when that file is present,
    otherwise the IXI number is joined to ``IXI.xls`` after dropping rows without AGE and IDs that
    occur more than once. Scans without an age are kept with ``age=NaN`` (prediction inputs).

    Raises:
        FileNotFoundError: if no IXI T1 images are found under ``root``.
    """
    root = Path(root)
    exclusions = Exclusions()
    images: list[tuple[Path, re.Match]] = []
    for folder, pattern in ((root / "T1", _IXI_HH_NAME), (root / "IXI-T1", _IXI_OFFICIAL_NAME), (root, _IXI_OFFICIAL_NAME)):
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                m = pattern.match(p.name)
                if m:
                    images.append((p, m))
                elif p.name.endswith((".nii", ".nii.gz")):
                    exclusions.add(dataset, p, "file name does not follow the IXI naming scheme", "source")
        if images:
            break
    if not images:
        raise FileNotFoundError(
            f"no IXI T1 images (T1/IXInnn-Site-nnnn_T1.nii.gz or IXI-T1/IXInnn-Site-nnnn-T1.nii.gz) under {root}")

    demog_ages: dict[str, float] = {}
    demog_sex: dict[str, str] = {}
    demog = root / "IXI_Demog.csv"
    if demog.is_file():
        table = read_participants_table(demog, "MRID", exclusions, dataset)
        demog_ages = _ages(table, "Age", "MRID", exclusions, dataset, demog.name)
        demog_sex = {k: parse_sex(v) for k, v in zip(table["MRID"], table.get("Sex", ""))}
    xls_ages: dict[int, float] = {}
    xls_sex: dict[int, str] = {}
    xls = root / "IXI.xls"
    if xls.is_file() and not demog_ages:
        xls_ages, xls_sex = read_ixi_xls(xls, exclusions, dataset)
    if not demog_ages and not xls_ages:
        raise FileNotFoundError(f"{root}: neither IXI_Demog.csv nor IXI.xls found; ages are needed")

    rows = []
    for path, m in images:
        mrid, number, site = m.group(1), int(m.group(2)), m.group(3)
        if demog_ages:
            age, sex = demog_ages.get(mrid, float("nan")), demog_sex.get(mrid, "")
        else:
            age, sex = xls_ages.get(number, float("nan")), xls_sex.get(number, "")
        if not np.isfinite(age):
            exclusions.add(dataset, path, f"no age in the demographics table{UNLABELLED}", "labels")
        mask = root / "DLMUSE" / f"{mrid}_T1_DLMUSE.nii.gz"
        rows.append({
            "dataset": dataset, "participant_id": f"IXI{number:03d}", "session_id": "",
            "image_path": str(path), "mask_path": str(mask) if mask.is_file() else "",
            "age": age, "sex": sex, "site": site, "label": "",
        })
    return make_manifest(rows), exclusions


def load_ds000228(root: str | Path, dataset: str = "ds000228") -> tuple[pd.DataFrame, Exclusions]:
    """Manifest for OpenNeuro ds000228 (SPM8 MNI-normalised anatomicals with brain masks).

    ``label`` is the 3-class age group of the MathWorks example (Ages3-5, Ages7-12, Adults);
    ``site`` is the scanner from the scan log. Participants without an image and images without a
    participants row are logged.

    Raises:
        FileNotFoundError: if ``participants.tsv`` or the derivative images are missing.
    """
    root = Path(root)
    exclusions = Exclusions()
    table = read_participants_table(root / "participants.tsv", "participant_id", exclusions, dataset)
    ages = _ages(table, "Age", "participant_id", exclusions, dataset, "participants.tsv")
    info = table.set_index("participant_id")
    deriv = root / "derivatives" / "preprocessed_data"
    images = sorted(deriv.glob("sub-*/sub-*_normed_anat.nii*"))
    if not images:
        raise FileNotFoundError(f"no derivatives/preprocessed_data/sub-*/sub-*_normed_anat.nii.gz under {root}")
    rows, seen = [], set()
    for path in images:
        pid = path.name.split("_")[0]
        if path.parent.name != pid:
            exclusions.add(dataset, path, f"file is in folder {path.parent.name}, not {pid}", "source")
            continue
        seen.add(pid)
        if pid not in info.index:
            exclusions.add(dataset, path, f"participant not in participants.tsv{UNLABELLED}", "labels")
        row = info.loc[pid] if pid in info.index else {}
        mask = next(iter(sorted(path.parent.glob(f"{pid}_analysis_mask.nii*"))), None)
        age = ages.get(pid, float("nan"))
        rows.append({
            "dataset": dataset, "participant_id": pid, "session_id": "", "image_path": str(path),
            "mask_path": str(mask) if mask else "", "age": age,
            "sex": parse_sex(row.get("Gender", "")), "site": str(row.get("Scanlog: Scanner", "")),
            "label": DS000228_AGE_CLASSES.get(str(row.get("AgeGroup", "")), ""),
        })
    for pid in sorted(set(info.index) - seen):
        exclusions.add(dataset, pid, "participant has no normed_anat image", "source")
    return make_manifest(rows), exclusions


def load_bids(root: str | Path, dataset: str | None = None) -> tuple[pd.DataFrame, Exclusions]:
    """Manifest for a generic BIDS dataset's T1-weighted images.

    Ages come from ``sub-*/sub-*_sessions.tsv`` (column ``age``) for a session when present, else
    from ``participants.tsv`` (column ``age``, case-insensitive). Sex from ``sex``/``gender``.

    Raises:
        FileNotFoundError: if ``participants.tsv`` or any ``*_T1w.nii[.gz]`` image is missing.
    """
    root = Path(root)
    dataset = dataset or root.name
    exclusions = Exclusions()
    table = read_participants_table(root / "participants.tsv", "participant_id", exclusions, dataset)
    cols = {c.lower(): c for c in table.columns}
    ages = _ages(table, cols["age"], "participant_id", exclusions, dataset, "participants.tsv") if "age" in cols else {}
    sex_col = cols.get("sex") or cols.get("gender")
    sexes = {p: parse_sex(s) for p, s in zip(table["participant_id"], table[sex_col])} if sex_col else {}
    images = sorted(list(root.glob("sub-*/anat/*_T1w.nii*")) + list(root.glob("sub-*/ses-*/anat/*_T1w.nii*")))
    if not images:
        raise FileNotFoundError(f"no sub-*/[ses-*/]anat/*_T1w.nii[.gz] images under {root}")
    session_ages: dict[tuple[str, str], float] = {}
    for sessions_tsv in root.glob("sub-*/sub-*_sessions.tsv"):
        pid = sessions_tsv.parent.name
        st = read_participants_table(sessions_tsv, "session_id", exclusions, dataset)
        scol = {c.lower(): c for c in st.columns}.get("age")
        if scol:
            for ses, a in _ages(st, scol, "session_id", exclusions, dataset, sessions_tsv.name).items():
                session_ages[(pid, ses)] = a
    rows, seen = [], set()
    for path in images:
        pid = next(p for p in path.parts if p.startswith("sub-"))
        ses = next((p for p in path.parts if p.startswith("ses-")), "")
        seen.add(pid)
        age = session_ages.get((pid, ses), ages.get(pid, float("nan")))
        if pid not in ages and (pid, ses) not in session_ages:
            exclusions.add(dataset, path, f"participant not in participants.tsv{UNLABELLED}", "labels")
        rows.append({"dataset": dataset, "participant_id": pid, "session_id": ses, "image_path": str(path),
                     "mask_path": "", "age": age, "sex": sexes.get(pid, ""), "site": "", "label": ""})
    for pid in sorted(set(ages) - seen):
        exclusions.add(dataset, pid, "participant has no T1w image", "source")
    return make_manifest(rows), exclusions


def load_oasis2(root: str | Path, dataset: str = "oasis2") -> tuple[pd.DataFrame, Exclusions]:
    """Manifest for OASIS-2: every ``mpr-N`` repeat of every MR session is one row.

    ``participant_id`` is the ``Subject ID`` (``OAS2_0001``) and ``session_id`` the ``MRI ID``
    (``OAS2_0001_MR1``), so all sessions and repeats of a person share a split (the tutorial grouped
    by MRI ID, which put one person's visits on both sides). Age is the age at that visit; ``label``
    is ``Group`` (Nondemented / Demented / Converted).

    Raises:
        FileNotFoundError: no ``oasis_longitudinal.csv`` or no ``OAS2_RAW_PART*`` images.
    """
    root = Path(root)
    exclusions = Exclusions()
    table = read_participants_table(root / "oasis_longitudinal.csv", "MRI ID", exclusions, dataset)
    ages = _ages(table, "Age", "MRI ID", exclusions, dataset, "oasis_longitudinal.csv")
    info = table.set_index("MRI ID")
    images = sorted(root.glob("OAS2_RAW_PART*/OAS2_*_MR*/RAW/mpr-*.nifti.img"))
    if not images:
        raise FileNotFoundError(f"no OAS2_RAW_PART*/OAS2_nnnn_MRn/RAW/mpr-N.nifti.img images under {root}")
    rows, seen = [], set()
    for path in images:
        session = path.parent.parent.name
        seen.add(session)
        if session not in info.index:
            exclusions.add(dataset, path, f"MRI ID not in oasis_longitudinal.csv{UNLABELLED}", "labels")
            subject = "_".join(session.split("_")[:2])
            row = {}
        else:
            row = info.loc[session]
            subject = str(row["Subject ID"]).strip()
        if not path.with_suffix(".hdr").is_file():
            exclusions.add(dataset, path, "Analyze header (.hdr) missing", "source")
            continue
        rows.append({"dataset": dataset, "participant_id": subject, "session_id": session, "image_path": str(path),
                     "mask_path": "", "age": ages.get(session, float("nan")), "sex": parse_sex(row.get("M/F", "")),
                     "site": "", "label": str(row.get("Group", ""))})
    for session in sorted(set(info.index) - seen):
        exclusions.add(dataset, session, "MR session has no mpr image", "source")
    return make_manifest(rows), exclusions


#: Dataset folder name -> source. Any other folder with a participants.tsv is read as generic BIDS.
SOURCES: dict[str, Callable[..., tuple[pd.DataFrame, Exclusions]]] = {
    "ixi_hh": load_ixi,
    "ixi": load_ixi,
    "ds000228": load_ds000228,
    "oasis2": load_oasis2,
}


def load_dataset(name: str, data_root: str | Path) -> tuple[pd.DataFrame, Exclusions]:
    """Manifest of dataset ``name`` found at ``data_root/name``.

    Raises:
        FileNotFoundError: if the dataset folder does not exist or has no recognised layout.
    """
    root = Path(data_root) / name
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset folder {root} not found; set DATA_ROOT or run `python scripts/fetch_data.py`")
    if name in SOURCES:
        return SOURCES[name](root, dataset=name)
    if (root / "participants.tsv").is_file():
        return load_bids(root, dataset=name)
    raise FileNotFoundError(f"{root}: unknown dataset layout (known: {sorted(SOURCES)} or BIDS)")
