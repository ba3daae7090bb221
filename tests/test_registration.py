"""Registration to MNI152 on the FSL 2 mm grid (TSAN's input), on a small synthetic volume."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from common.data.preprocess import VolumeSpec, preprocess_volume
from common.data.registration import FSL_2MM_AFFINE, FSL_2MM_SHAPE, mni_template, register_to_mni, similarity_to_template


@pytest.fixture(scope="module")
def moved_brain():
    """The template brain on a coarse 4 mm grid, displaced by 6 mm and scaled by 5%: a small 'subject'."""
    from nilearn.image import resample_img

    template, mask = mni_template()
    affine = np.diag([4.2, 4.2, 4.2, 1.0])
    affine[:3, 3] = [-84.0, -120.0, -66.0]
    img = resample_img(nib.Nifti1Image(template * mask, FSL_2MM_AFFINE), target_affine=affine, target_shape=(44, 52, 44),
                       interpolation="continuous", force_resample=True, copy_header=True)
    moved = affine.copy()
    moved[:3, :3] *= 1.05
    moved[:3, 3] += [6.0, -6.0, 4.0]
    return np.asarray(img.get_fdata(dtype=np.float32)), moved


def _resampled_by_header(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from nilearn.image import resample_img

    img = resample_img(nib.Nifti1Image(data, affine), target_affine=FSL_2MM_AFFINE, target_shape=FSL_2MM_SHAPE,
                       interpolation="continuous", force_resample=True, copy_header=True)
    return np.asarray(img.get_fdata(dtype=np.float32))


def test_template_is_on_the_fsl_grid():
    template, mask = mni_template()
    assert template.shape == mask.shape == FSL_2MM_SHAPE
    assert 150_000 < mask.sum() < 300_000, "about 1.5-2 litres of brain at 8 mm^3 per voxel"


def test_affine_registration_recovers_the_template(moved_brain):
    data, affine = moved_brain
    before = similarity_to_template(_resampled_by_header(data, affine))
    warped = register_to_mni(data, affine, brain_extracted=True, transform="Affine")
    assert warped.shape == FSL_2MM_SHAPE and warped.dtype == np.float32
    after = similarity_to_template(warped)
    assert after > 0.85 and after > before + 0.1, (before, after)
    with pytest.raises(ValueError, match="transform"):
        register_to_mni(data, affine, True, transform="BSpline")


def test_ants_pipeline_writes_a_zscored_brain(moved_brain, tmp_path):
    data, affine = moved_brain
    path = tmp_path / "sub.nii.gz"
    nib.save(nib.Nifti1Image(data * 300.0 + 50.0 * (data > 0), affine), path)
    out = preprocess_volume(path, VolumeSpec(shape=FSL_2MM_SHAPE, spacing_mm=(2.0, 2.0, 2.0), pipeline="ants_affine_mni",
                                             apply_mask=False))
    brain = out[0] != 0
    assert out.shape == (1, *FSL_2MM_SHAPE)
    assert abs(out[0][brain].mean()) < 1e-3 and abs(out[0][brain].std() - 1) < 1e-3, "z-scored over brain voxels"
    assert (out[0][~mni_template()[1]] == 0).all(), "background stays 0"
    with pytest.raises(ValueError, match="FSL 2 mm grid"):
        preprocess_volume(path, VolumeSpec(shape=(64, 64, 64), pipeline="ants_affine_mni"))


def test_registration_qc_flags_the_outlier(tmp_path):
    import pandas as pd

    from common.data.registration import qc_montage, registration_qc

    template, mask = mni_template()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        vol = (template * mask + rng.normal(0, 0.02 * (1 + i / 4), template.shape) * mask).astype(np.float32)
        if i == 7:
            vol = np.roll(vol, 12, axis=1)  # a failed registration: shifted by 24 mm
        paths.append(str(tmp_path / f"{i}.npy"))
        np.save(paths[-1], vol[None])
    frame = pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(8)], "session_id": "", "cache_path": paths})
    qc = registration_qc(frame)
    assert qc["flagged"].tolist() == [False] * 7 + [True]
    assert qc_montage(paths[:3], ["a", "b", "c"], tmp_path / "m.png").stat().st_size > 5000
