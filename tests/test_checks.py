"""Bad files are excluded with a reason naming the file and the problem; the rest goes on."""

from __future__ import annotations

import pytest

from common.data.checks import BadImageError, load_checked
from common.data.manifest import Exclusions, make_manifest
from common.data.preprocess import VolumeCache, VolumeSpec, prepare_volumes
from tests.conftest import write_volume

BAD_CASES = {
    "truncated": "truncated or corrupt",
    "4d": "expected a 3D volume",
    "2d": "expected a 3D volume",
    "nan": "NaN or Inf",
    "blank": "blank volume",
    "not_nifti": "not a readable NIfTI",
    "empty": "empty (0 bytes)",
    "tiny_spacing": "implausible voxel spacing",
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_file_raises_with_reason(tmp_path, kind):
    path = write_volume(tmp_path / f"bad_{kind}.nii.gz", kind=kind)
    with pytest.raises(BadImageError) as err:
        load_checked(path)
    assert BAD_CASES[kind] in str(err.value)
    assert str(path) in str(err.value)


def test_tiny_volume_rejected(tmp_path):
    path = write_volume(tmp_path / "tiny.nii.gz", shape=(8, 8, 8))
    with pytest.raises(BadImageError, match="implausible volume size"):
        load_checked(path)


def test_good_file_passes(tmp_path):
    data, affine, spacing = load_checked(write_volume(tmp_path / "ok.nii.gz"))
    assert data.shape == (24, 28, 24) and spacing == (2.0, 2.0, 2.0) and affine.shape == (4, 4)


def test_prepare_volumes_excludes_bad_and_keeps_good(tmp_path):
    rows = []
    for i, kind in enumerate(["ok", "truncated", "nan", "ok", "4d"]):
        path = write_volume(tmp_path / f"s{i}_{kind}.nii.gz", seed=i, kind=kind)
        rows.append({"dataset": "t", "participant_id": f"s{i}", "image_path": str(path), "age": 30 + i})
    rows.append({"dataset": "t", "participant_id": "s9", "image_path": str(tmp_path / "missing.nii.gz"), "age": 50})
    exclusions = Exclusions()
    spec = VolumeSpec(shape=(16, 16, 16), spacing_mm=(3.0, 3.0, 3.0))
    out = prepare_volumes(make_manifest(rows), spec, tmp_path / "cache", exclusions, workers=1)
    assert list(out["participant_id"]) == ["s0", "s3"]
    reasons = {r["item"].split("/")[-1]: r["reason"] for r in exclusions.rows}
    assert "truncated or corrupt" in reasons["s1_truncated.nii.gz"]
    assert "NaN" in reasons["s2_nan.nii.gz"]
    assert "3D" in reasons["s4_4d.nii.gz"]
    assert "does not exist" in reasons["missing.nii.gz"]
    log = exclusions.write(tmp_path / "excl.csv").read_text()
    assert log.startswith("dataset,item,stage,reason") and log.count("\n") == 5


def test_cache_is_keyed_by_content_and_rebuilds_corrupt_entries(tmp_path):
    path = write_volume(tmp_path / "a.nii.gz", seed=1)
    spec = VolumeSpec(shape=(16, 16, 16), spacing_mm=(3.0, 3.0, 3.0))
    cache = VolumeCache(tmp_path / "cache", spec)
    first = cache.get(path)
    assert cache.is_valid(first)
    first.write_bytes(b"garbage")  # a corrupt entry is detected and rebuilt
    assert cache.get(path) == first and cache.is_valid(first)
    copy = tmp_path / "copy" / "a.nii.gz"  # same bytes elsewhere, new mtime -> same entry (re-extracted data)
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    assert cache.path_for(copy) == first
    write_volume(path, seed=2)  # new content -> new key
    assert cache.path_for(path) != first
    other = VolumeCache(tmp_path / "cache", VolumeSpec(shape=(20, 20, 20)))
    assert other.dir != cache.dir, "different parameters use a different cache folder"
