"""Registration of T1 volumes to MNI152 space on the FSL 2 mm grid, with ANTsPy.

The template is nilearn's MNI152 (ICBM 2009c nonlinear asymmetric, shipped in its wheel), resampled
onto the field of view of FSL's ``MNI152_T1_2mm`` (91 x 109 x 91 voxels of 2 mm, RAS voxel order,
origin at (-90, -126, -72) mm), the input grid of TSAN (Liu et al. 2020, Cheng et al. 2021).
"""

from __future__ import annotations

from functools import lru_cache

import nibabel as nib
import numpy as np

#: FSL MNI152 2 mm field of view, in RAS voxel order.
FSL_2MM_SHAPE = (91, 109, 91)
FSL_2MM_AFFINE = np.array([[2.0, 0, 0, -90.0], [0, 2.0, 0, -126.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1.0]])

#: ANTs transform types accepted by :func:`register_to_mni`.
TRANSFORMS = ("Rigid", "Affine", "SyN")


@lru_cache(maxsize=1)
def mni_template() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 T1 template and its brain mask on the FSL 2 mm grid.

    Returns:
        ``(template, mask)``: float32 (91, 109, 91) intensities and a bool mask of the same shape.
    """
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template
    from nilearn.image import resample_img

    def on_grid(img: nib.Nifti1Image, interpolation: str) -> np.ndarray:
        out = resample_img(img, target_affine=FSL_2MM_AFFINE, target_shape=FSL_2MM_SHAPE, interpolation=interpolation,
                           force_resample=True, copy_header=True)
        return np.asarray(out.get_fdata(dtype=np.float32))

    template = on_grid(load_mni152_template(resolution=2), "continuous")
    mask = on_grid(load_mni152_brain_mask(resolution=2), "nearest") > 0.5
    return template, mask


def _to_ants(data: np.ndarray, affine: np.ndarray):
    import ants

    return ants.from_nibabel_nifti(nib.Nifti1Image(np.asarray(data, np.float32), affine))


def similarity_to_template(warped: np.ndarray) -> float:
    """Pearson correlation between a volume on the FSL 2 mm grid and the template, inside the
    template's brain mask (a registration QC measure; about 0.9 for a good affine registration)."""
    template, mask = mni_template()
    a, b = warped[mask].astype(float), template[mask].astype(float)
    if a.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def register_to_mni(data: np.ndarray, affine: np.ndarray, brain_extracted: bool, transform: str = "Affine",
                    seed: int = 1) -> np.ndarray:
    """Register a T1 volume to the MNI152 template and resample it onto the FSL 2 mm grid.

    Args:
        data: (X, Y, Z) intensities; affine: its voxel-to-world matrix (mm).
        brain_extracted: the volume is already skull-stripped (the dataset's brain mask applied): it is
            registered to the template masked by the template's brain mask. Otherwise the whole head is
            registered to the whole template and the result is multiplied by the template brain mask.
        transform: ANTs ``type_of_transform``: ``"Rigid"``, ``"Affine"`` or ``"SyN"`` (affine + nonlinear).
        seed: ANTs random seed (sampling of the similarity metric), for reproducible results.

    Returns:
        float32 (91, 109, 91) volume, zero outside the brain.

    Raises:
        ValueError: unknown ``transform``.
    """
    import ants

    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose from {TRANSFORMS}")
    template, mask = mni_template()
    fixed = _to_ants(template * mask if brain_extracted else template, FSL_2MM_AFFINE)
    moving = _to_ants(data, affine)
    result = ants.registration(fixed=fixed, moving=moving, type_of_transform=transform, random_seed=seed)
    warped = result["warpedmovout"].numpy().astype(np.float32)
    warped[~mask] = 0.0
    return warped
