"""The shared brain-age preprocessing: the same brain gives the same array however it was acquired.

Steps, each from a well-kept tool, on the scan's own grid, coarsened to 2 mm where it is finer (the
output grid is 2 mm; :func:`to_working_resolution`), after the voxel axes are put in RAS order
(nibabel's ``as_closest_canonical``: a header-only change of voxel order then gives the same array to
every step; on IXI012 the 4 mm brain correlated 0.9916 with the native scan's without it, 1.0000 with it):

1. **Brain extraction** with deepbet (Fisch et al., "deepbet: Fast brain extraction of T1-weighted MRI
   using Convolutional Neural Networks", Comput. Biol. Med. 2024; its wheel ships the weights). Chosen
   by measurement against the DLMUSE masks of IXI-HH (README "Shared preprocessing").
2. **N4 bias-field correction** (Tustison et al., IEEE TMI 2010; ANTsPy) inside the brain mask, on a
   grid shrunk 4x (the field is smooth; 2.7 s instead of 13 s per 2 mm scan, correlation 0.99 inside the
   brain with the unshrunk, unmasked N4).
3. **Affine registration of the extracted brain to the MNI152 brain** (ANTsPy ``Affine``, or ``SyN``
   for TSAN's ``paper`` profile), template and grid of :mod:`common.data.registration` (FSL 2 mm,
   91 x 109 x 91). The brain mask goes through the same transform. Registering brain to brain is
   what makes it reliable: whole head to whole template fails on half the IXI-HH heads.

The result, a :class:`StandardBrain`, is cached once per scan and transform and serves every method;
:func:`to_method_grid` then resamples it to each method's grid with anti-aliasing and standardises the
intensities inside the brain. A scan that fails a step raises :class:`BadImageError` with the step
named, so the caller excludes it and goes on with the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.data.checks import BadImageError, load_checked
from common.data.registration import FSL_2MM_AFFINE, FSL_2MM_SHAPE, TRANSFORMS, _to_ants, ants_registration, mni_template
from common.io import atomic_write

log = logging.getLogger(__name__)

#: Bump when :func:`standardize_brain` changes its output for the same input. 2: the registration is
#: reproducible (version 1 entries came from an unseeded, multi-threaded ANTs run: no two alike). 3: deepbet
#: runs without oneDNN (:func:`common.device.apply_onednn_policy`). 4: voxel axes in RAS order first
#: (:func:`to_canonical`; IXI-HH is stored PSR).
STANDARD_VERSION = 4
#: Brain volumes outside this range (ml) are not a brain extraction but a failure of it.
BRAIN_VOLUME_ML = (400.0, 2500.0)
#: A registered brain whose mask overlaps the template brain mask less than this (Dice) failed.
MIN_TEMPLATE_DICE = 0.80
#: N4 grid shrink factor (see the module docstring for the measurement behind it).
N4_SHRINK = 4
#: ``scaled_brain`` intensity: the brain's 99th percentile maps to this value (the brain's SD is then
#: about 1, as after a z-score: 0.19 x 5 on IXI-HH), so intensity augmentations keep their strength.
SCALED_BRAIN_P99 = 5.0
#: Finer scans are brought to this voxel size (mm) before the steps: the output grid is 2 mm.
WORKING_MM = 2.0


def resample_to_voxel_size(data: np.ndarray, affine: np.ndarray, voxel_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scan on a grid of ``voxel_mm`` (per voxel axis), same field of view and voxel order.

    Axes made coarser are first low-pass filtered (Gaussian, FWHM the extra width: what a coarser
    acquisition measures, no aliasing); then linear interpolation (nibabel ``resample_from_to``).

    Args:
        data: (X, Y, Z) intensities; affine: voxel-to-world (mm); voxel_mm: (3,) target voxel sizes.

    Returns:
        ``(data, affine)`` on the new grid.
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to
    from scipy.ndimage import gaussian_filter

    native = np.sqrt((affine[:3, :3] ** 2).sum(0))
    target = np.asarray(voxel_mm, float)
    sigma = np.sqrt(np.clip(target ** 2 - native ** 2, 0, None)) / 2.3548 / native
    smooth = gaussian_filter(np.asarray(data, np.float32), sigma) if sigma.any() else np.asarray(data, np.float32)
    shape = tuple(int(n) for n in np.maximum(np.round(np.asarray(data.shape) * native / target), 1))
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / native * target
    centre = affine @ np.append((np.asarray(data.shape) - 1) / 2, 1)
    new_affine[:3, 3] = centre[:3] - new_affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    out = resample_from_to(nib.Nifti1Image(smooth, affine), (shape, new_affine), order=1)
    return np.asarray(out.dataobj, np.float32), new_affine


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same scan with its voxel axes flipped and permuted to the closest RAS order
    (``nibabel.as_closest_canonical``; no interpolation, the affine updated to match)."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, np.float32), np.asarray(affine, float)))
    return np.asarray(image.dataobj, np.float32), image.affine


def to_working_resolution(data: np.ndarray, affine: np.ndarray, voxel_mm: float = WORKING_MM) -> tuple[np.ndarray, np.ndarray]:
    """The scan with every axis finer than ``voxel_mm`` brought to ``voxel_mm``
    (:func:`resample_to_voxel_size`); unchanged when no axis is finer."""
    native = np.sqrt((affine[:3, :3] ** 2).sum(0))
    target = np.maximum(native, voxel_mm)
    if np.allclose(target, native):
        return data, affine
    return resample_to_voxel_size(data, affine, target)


@dataclass
class StandardBrain:
    """One scan after :func:`standardize_brain`, on the FSL 2 mm MNI grid (RAS voxel order).

    Attributes:
        brain: float32 (91, 109, 91) bias-corrected intensities (scanner units / bias field), zero
            outside ``mask``.
        mask: bool (91, 109, 91) brain mask carried through the registration.
        qc: ``brain_volume_ml`` (native space), ``template_dice`` (mask vs the MNI brain mask),
            ``similarity`` (correlation with the template inside the brain),
            ``extracerebral_signal`` (:func:`extracerebral_signal`; entries cached before it existed
            lack it) and ``transform``.
    """

    brain: np.ndarray
    mask: np.ndarray
    qc: dict


@lru_cache(maxsize=1)
def _deepbet():
    """deepbet's model pair, loaded once per process on the CPU (the weights ship in its wheel), with
    the project's oneDNN policy (:func:`common.device.apply_onednn_policy`: off, so that the mask does
    not depend on the CPU kind)."""
    from deepbet import BrainExtraction

    from common.device import apply_onednn_policy

    apply_onednn_policy()

    return BrainExtraction(no_gpu=True)


def extract_brain(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Brain mask of a T1 volume with deepbet (threshold 0.5, largest component, voids filled).

    Args:
        data: (X, Y, Z) intensities; affine: voxel-to-world (mm).

    Returns:
        bool (X, Y, Z) mask in the voxel order of ``data``.

    Raises:
        BadImageError: deepbet finds no foreground (its bounding-box check fails).
    """
    import nibabel as nib

    try:
        _, mask_img, _ = _deepbet().run(nib.Nifti1Image(np.asarray(data, np.float32), affine))
    except (AssertionError, ValueError) as err:
        raise BadImageError("", f"brain extraction failed (deepbet: {err})") from None
    return np.asarray(mask_img.dataobj) > 0


#: A scan with less extracerebral signal than this (:func:`extracerebral_signal`) arrived skull-stripped.
SKULL_STRIPPED_BELOW = 0.05


def extracerebral_signal(data: np.ndarray, mask: np.ndarray) -> float:
    """Voxels with signal outside the brain, per brain voxel: a skull-on T1 has scalp, fat and muscle
    there (typically about as many voxels as the brain), a skull-stripped one almost none.

    Counts the voxels more than 4 voxels outside ``mask`` (scipy ``binary_dilation``) brighter than 10% of
    the brain's median intensity, divided by the brain's voxel count.

    Args:
        data: (X, Y, Z) intensities; mask: (X, Y, Z) bool brain mask.

    Returns:
        The ratio (0 for a scan with nothing outside the brain).
    """
    from scipy.ndimage import binary_dilation

    if not mask.any():
        return 0.0
    outside = ~binary_dilation(mask, iterations=4)
    threshold = 0.1 * float(np.median(data[mask]))
    return float(np.count_nonzero(data[outside] > threshold)) / float(mask.sum())


def n4_in_brain(data: np.ndarray, affine: np.ndarray, mask: np.ndarray, shrink_factor: int = N4_SHRINK) -> np.ndarray:
    """N4 bias-field-corrected intensities (ANTsPy ``n4_bias_field_correction``), field fitted inside ``mask``.

    Args:
        data: (X, Y, Z) non-negative intensities; affine: voxel-to-world (mm); mask: bool (X, Y, Z).
        shrink_factor: N4's grid shrink factor.

    Returns:
        float32 (X, Y, Z) corrected intensities.
    """
    import ants

    image = _to_ants(np.clip(data, 0, None), affine)
    weight = image.new_image_like(mask.astype(np.float32))
    return ants.n4_bias_field_correction(image, mask=weight, shrink_factor=shrink_factor).numpy().astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 0.0


def standardize_brain(data: np.ndarray, affine: np.ndarray, transform: str = "Affine", seed: int = 1) -> StandardBrain:
    """Brain extraction, N4 and registration of the brain to the MNI152 brain (module docstring).

    Args:
        data: (X, Y, Z) T1 intensities, skull on or off, any orientation and voxel size; affine: its
            voxel-to-world matrix (mm).
        transform: ANTs ``type_of_transform`` (``"Affine"``; ``"SyN"`` adds the nonlinear step).
        seed: ANTs random seed of the metric sampling (:func:`common.data.registration.ants_registration`:
            with it and one ITK thread the result is the same bits in every process).

    Returns:
        The :class:`StandardBrain` on the FSL 2 mm grid.

    Raises:
        BadImageError: the brain extraction fails or gives an implausible volume, or the
            registered brain does not overlap the template brain (Dice below ``MIN_TEMPLATE_DICE``).
        ValueError: unknown ``transform``.
    """
    import ants

    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose from {TRANSFORMS}")
    data, affine = to_working_resolution(*to_canonical(data, affine))
    mask = extract_brain(data, affine)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    volume_ml = float(mask.sum()) * voxel_ml
    if not BRAIN_VOLUME_ML[0] <= volume_ml <= BRAIN_VOLUME_ML[1]:
        raise BadImageError("", f"brain extraction gave {volume_ml:.0f} ml (plausible: {BRAIN_VOLUME_ML[0]:.0f}-"
                                f"{BRAIN_VOLUME_ML[1]:.0f} ml)")
    extracerebral = extracerebral_signal(data, mask)
    corrected = n4_in_brain(data, affine, mask) * mask
    template, template_mask = mni_template()
    fixed = _to_ants(template * template_mask, FSL_2MM_AFFINE)
    result = ants_registration(fixed, _to_ants(corrected, affine), transform, seed)
    warped = result["warpedmovout"].numpy().astype(np.float32)
    warped_mask = ants.apply_transforms(fixed=fixed, moving=_to_ants(mask.astype(np.float32), affine),
                                        transformlist=result["fwdtransforms"], interpolator="linear").numpy() > 0.5
    warped = np.where(warped_mask, np.clip(warped, 0, None), 0).astype(np.float32)
    dice = _dice(warped_mask, template_mask)
    inside = warped_mask & template_mask
    similarity = float(np.corrcoef(warped[inside], template[inside])[0, 1]) if inside.sum() > 1000 else 0.0
    qc = {"brain_volume_ml": round(volume_ml, 1), "template_dice": round(dice, 4), "similarity": round(similarity, 4),
          "extracerebral_signal": round(extracerebral, 4), "transform": transform}
    if dice < MIN_TEMPLATE_DICE:
        raise BadImageError("", f"registration to MNI failed (brain-mask Dice with the template {dice:.2f} < "
                                f"{MIN_TEMPLATE_DICE})")
    return StandardBrain(warped, warped_mask, qc)


class StandardCache:
    """On-disk cache of :func:`standardize_brain` per scan and transform, shared by every method.

    Entries are ``<root>/standard-<transform>-v<version>/<digest>.npz`` (``brain``, ``mask``) with a
    ``.json`` QC record beside each, keyed by the image file's content.
    """

    def __init__(self, root: str | Path, transform: str = "Affine"):
        self.transform = transform
        self.dir = Path(root) / f"standard-{transform.lower()}-v{STANDARD_VERSION}"

    def path_for(self, image_path: str | Path) -> Path:
        """Cache file of this image (keyed by its content)."""
        from common.data.fingerprint import file_digest

        return self.dir / f"{hashlib.sha1(file_digest(image_path).encode()).hexdigest()[:20]}.npz"

    def get(self, image_path: str | Path) -> StandardBrain:
        """The cached :class:`StandardBrain` of ``image_path``, computed first if missing or unreadable.

        Raises:
            BadImageError: the image fails its checks or a step (the reason names the step).
        """
        path = self.path_for(image_path)
        qc_path = path.with_suffix(".json")
        if path.exists() and qc_path.exists():
            try:
                with np.load(path) as stored:
                    brain, mask = stored["brain"], stored["mask"]
                if brain.shape == FSL_2MM_SHAPE and mask.shape == FSL_2MM_SHAPE:
                    return StandardBrain(brain, mask, json.loads(qc_path.read_text()))
            except Exception:  # a truncated or corrupt entry is rebuilt
                log.warning("standard cache entry %s is corrupt; rebuilding", path)
        data, affine, _ = load_checked(image_path)
        try:
            result = standardize_brain(data, affine, self.transform)
        except BadImageError as err:
            raise BadImageError(image_path, err.problem) from None
        atomic_write(path, lambda fh: np.savez_compressed(fh, brain=result.brain, mask=result.mask), mode="wb")
        atomic_write(qc_path, lambda fh: fh.write(json.dumps(result.qc)))
        return result


def smooth_inside_brain(brain: np.ndarray, mask: np.ndarray, fwhm_mm: float, voxel_mm: float = 2.0) -> np.ndarray:
    """Gaussian smoothing of ``brain`` inside ``mask`` by normalised convolution (scipy ``gaussian_filter``).

    The smoothed brain is divided by the smoothed mask, so the brain's edge is not darkened by the zero
    background; outside the mask the result is 0. Smoothing every scan by a kernel wider than the
    differences between acquisitions (a 1 mm, 2 mm or 3 mm scan: effective FWHM about 2.5-3.5 mm on the
    2 mm grid) brings them to about one effective resolution: sqrt(fwhm^2 + own^2).

    Args:
        brain: (X, Y, Z) intensities; mask: (X, Y, Z) bool; fwhm_mm: kernel FWHM (mm), 0 = unchanged;
        voxel_mm: isotropic voxel size of the arrays (mm).

    Returns:
        float32 (X, Y, Z), zero outside ``mask``.

    Raises:
        ValueError: a negative ``fwhm_mm``.
    """
    from scipy.ndimage import gaussian_filter

    if fwhm_mm < 0:
        raise ValueError(f"smoothing FWHM {fwhm_mm} mm is negative")
    if fwhm_mm == 0:
        return brain.astype(np.float32)
    sigma = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / voxel_mm
    weight = mask.astype(np.float32)
    num = gaussian_filter(np.where(mask, brain, 0.0).astype(np.float32), sigma, mode="constant")
    den = gaussian_filter(weight, sigma, mode="constant")
    return np.where(mask, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


def to_method_grid(standard: StandardBrain, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float],
                   intensity: str = "zscore_nonzero", smooth_fwhm_mm: float = 0.0) -> np.ndarray:
    """Resample a :class:`StandardBrain` to a method's grid, centred on the MNI grid's centre.

    With ``smooth_fwhm_mm`` the brain is first smoothed inside its mask (:func:`smooth_inside_brain`).
    The 2 mm array is padded or cropped (centred) to the target field of view, then resized to
    ``shape`` with MONAI ``Resize`` (trilinear, ``anti_aliasing=True``: a Gaussian low-pass first, so
    a coarse grid does not alias). The intensities are z-scored over the brain (``zscore_nonzero``:
    zero outside, which is the brain's mean, so a mask edge in dark CSF shows as a dark rim), over the
    whole volume (``zscore_volume``), or scaled so the brain's 99th percentile is
    :data:`SCALED_BRAIN_P99` (``scaled_brain``: no shift, so the background stays 0, as dark as CSF or
    darker, and a mask edge in CSF is hardly visible; the brain's SD is then about 1, as z-scored).

    Args:
        standard: the scan on the FSL 2 mm grid.
        shape: output grid (voxels); spacing_mm: its voxel size (mm), each at least 2 mm.

    Returns:
        float32 (1, *shape).

    Raises:
        ValueError: a spacing finer than the 2 mm the brain is stored at, or an unknown ``intensity``.
    """
    import torch
    from monai.transforms import Resize, ResizeWithPadOrCrop

    if min(spacing_mm) < 2.0:
        raise ValueError(f"the standard brain is stored at 2 mm; spacing {spacing_mm} would invent detail")
    if intensity not in ("zscore_nonzero", "zscore_volume", "scaled_brain"):
        raise ValueError(f"unknown intensity normalisation {intensity!r}")
    fov = tuple(int(round(n * s / 2.0)) for n, s in zip(shape, spacing_mm))
    brain = smooth_inside_brain(standard.brain, standard.mask, smooth_fwhm_mm)
    stack = torch.from_numpy(np.stack([brain, standard.mask.astype(np.float32)]))
    stack = ResizeWithPadOrCrop(spatial_size=fov)(stack)
    if tuple(fov) != tuple(shape):
        stack = Resize(spatial_size=shape, mode="trilinear", anti_aliasing=True)(stack)
    stack = np.asarray(stack, dtype=np.float32)
    brain, mask = stack[0], stack[1] > 0.5
    if mask.sum() < 10:
        raise BadImageError("", f"no brain left on the {shape} grid")
    values = brain[mask]
    if intensity == "zscore_nonzero":
        out = np.where(mask, (brain - values.mean()) / max(float(values.std()), 1e-6), 0.0)
    elif intensity == "scaled_brain":
        out = np.where(mask, SCALED_BRAIN_P99 * np.clip(brain, 0.0, None) / max(float(np.percentile(values, 99.0)), 1e-6),
                       0.0)
    else:
        masked = np.where(mask, brain, 0.0)
        out = (masked - masked.mean()) / max(float(masked.std()), 1e-6)
    return out.astype(np.float32)[None]
