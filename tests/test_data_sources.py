"""Each data source on tiny synthetic fixtures in its real layout."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from common.data.manifest import MANIFEST_COLUMNS, parse_age, parse_sex
from common.data.sources import load_bids, load_dataset, load_ds000228, load_ixi


def _reasons(exclusions) -> list[str]:
    return [f"{r['item']}: {r['reason']}" for r in exclusions.rows]


def test_ixi_official_layout_joins_xls_exactly(ixi_official):
    manifest, exclusions = load_ixi(ixi_official)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    ages = dict(zip(manifest["participant_id"], manifest["age"]))
    assert ages["IXI002"] == pytest.approx(35.8) and ages["IXI012"] == pytest.approx(38.78)
    assert math.isnan(ages["IXI013"]), "conflicting duplicate IXI_ID rows must not be joined"
    assert math.isnan(ages["IXI014"]), "rows without AGE give no age"
    assert ages["IXI015"] == pytest.approx(24.28), "identical duplicate rows are one subject"
    assert dict(zip(manifest["participant_id"], manifest["sex"]))["IXI002"] == "F"
    assert set(manifest["site"]) == {"Guys", "HH", "IOP"}
    assert any("IXI013" in r and "conflicting" in r for r in _reasons(exclusions))
    assert manifest["age"].dtype == float


def test_ixi_hh_layout_uses_demog_and_dlmuse_masks(ixi_hh):
    manifest, exclusions = load_dataset("ixi_hh", ixi_hh.parent)
    assert len(manifest) == 6
    assert manifest["mask_path"].str.endswith("_T1_DLMUSE.nii.gz").all()
    row = manifest.set_index("participant_id").loc["IXI101"]
    assert row["age"] == pytest.approx(30.5) and row["sex"] == "F"
    unlabeled = manifest[manifest["age"].isna()]
    assert list(unlabeled["participant_id"]) == ["IXI105"], "the scan without age is kept for prediction"
    assert any("IXI105" in r and "no age" in r for r in _reasons(exclusions))


def test_ds000228_layout_labels_and_missing_images(ds000228):
    manifest, exclusions = load_ds000228(ds000228)
    assert len(manifest) == 5
    labels = dict(zip(manifest["participant_id"], manifest["label"]))
    assert labels == {"sub-pixar001": "Ages3-5", "sub-pixar002": "Ages3-5", "sub-pixar003": "Ages7-12",
                      "sub-pixar004": "Ages7-12", "sub-pixar005": "Adults"}
    assert manifest.set_index("participant_id").loc["sub-pixar001", "age"] == pytest.approx(3.6), "decimal comma"
    assert manifest["mask_path"].str.endswith("_analysis_mask.nii.gz").all()
    assert any("sub-pixar006" in r and "no normed_anat image" in r for r in _reasons(exclusions))


def test_generic_bids_sessions_and_missing_rows(bids):
    manifest, exclusions = load_bids(bids)
    assert manifest["dataset"].iloc[0] == "mybids"
    s1 = manifest[manifest["participant_id"] == "sub-01"].set_index("session_id")["age"]
    assert s1["ses-1"] == pytest.approx(30.0) and s1["ses-2"] == pytest.approx(32.5)
    assert math.isnan(manifest.set_index("participant_id").loc["sub-02", "age"]), "n/a age"
    reasons = _reasons(exclusions)
    assert any("sub-04" in r and "not in participants.tsv" in r for r in reasons)
    assert any(r.startswith("sub-03") and "no T1w image" in r for r in reasons)


def test_duplicated_participant_ids_are_dropped_and_logged(bids):
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-01\t31\nsub-02\t20\n")
    manifest, exclusions = load_bids(bids)
    assert manifest.set_index("session_id").loc["ses-1", "age"] == pytest.approx(30.0)  # from sessions.tsv
    assert any("sub-01" in r and "2 times" in r for r in _reasons(exclusions))


def test_unknown_dataset_folder_has_clear_error(tmp_path):
    (tmp_path / "mystery").mkdir()
    with pytest.raises(FileNotFoundError, match="unknown dataset layout"):
        load_dataset("mystery", tmp_path)
    with pytest.raises(FileNotFoundError, match="fetch_data.py"):
        load_dataset("absent", tmp_path)


@pytest.mark.parametrize("raw, expected", [("34.5", 34.5), ("34,5", 34.5), (" 7 ", 7.0), (12, 12.0)])
def test_parse_age_values(raw, expected):
    assert parse_age(raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["n/a", "", None, "NaN"])
def test_parse_age_missing(raw):
    assert math.isnan(parse_age(raw))


@pytest.mark.parametrize("raw, message", [("old", "not a number"), ("-3", "negative")])
def test_parse_age_rejects(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_age(raw)


def test_parse_sex_codings():
    assert [parse_sex(v) for v in ["M", "female", 1, "2", 2.0, "x", None]] == ["M", "F", "M", "F", "F", "", ""]


def test_manifest_keeps_float_ages(ixi_hh):
    manifest, _ = load_ixi(ixi_hh)
    assert pd.api.types.is_float_dtype(manifest["age"])


def test_oasis2_layout_repeats_sessions_and_subject_grouping(oasis2):
    from common.data.sources import load_oasis2

    manifest, exclusions = load_oasis2(oasis2)
    assert len(manifest) == 5, "every mpr repeat is a sample"
    s1 = manifest[manifest["participant_id"] == "OAS2_0001"]
    assert set(s1["session_id"]) == {"OAS2_0001_MR1", "OAS2_0001_MR2"}, "sessions grouped under the Subject ID"
    assert sorted(s1["age"]) == [87.0, 87.0, 88.0] and set(s1["sex"]) == {"M"}
    assert manifest.set_index("session_id").loc["OAS2_0002_MR1", "label"] == "Demented"
    assert manifest["image_path"].str.endswith(".nifti.img").all()
    reasons = [f"{r['item']}: {r['reason']}" for r in exclusions.rows]
    assert any("OAS2_0099_MR1" in r and "not in oasis_longitudinal.csv" in r for r in reasons)
    assert any(r.startswith("OAS2_0003_MR1") and "no mpr image" in r for r in reasons)


def test_oasis2_analyze_files_load_and_preprocess(oasis2, tmp_path):
    from common.data.checks import load_checked
    from common.data.preprocess import VolumeSpec, preprocess_volume
    from common.data.sources import load_oasis2

    manifest, _ = load_oasis2(oasis2)
    data, _, spacing = load_checked(manifest["image_path"].iloc[0])
    assert data.shape == (24, 28, 20) and spacing == (1.5, 1.5, 1.5)
    spec = VolumeSpec(shape=(16, 16, 16), spacing_mm=(4.0, 4.0, 4.0), intensity="zscore_volume",
                      pipeline="nilearn_centered")
    out = preprocess_volume(manifest["image_path"].iloc[0], spec)
    assert out.shape == (1, 16, 16, 16)  # z-scored over the volume, not clipped (the tutorial clips in training only)
    assert abs(float(out.mean())) < 1e-4 and float(out.std()) == pytest.approx(1.0, rel=1e-3)
