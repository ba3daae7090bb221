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

    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")  # units ANTs would otherwise assume, with a warning per call
    return ants.from_nibabel_nifti(img)


def ants_registration(fixed, moving, transform: str, seed: int = 1) -> dict:
    """``ants.registration(fixed, moving, type_of_transform=transform)``, reproducible: the same inputs
    give the same bits in every process.

    Two things make ANTs registration random, and both are fixed here:

    - its metric samples a random 20% of the voxels. ANTsPy 0.6 takes the seed of that sampling from
      ``ants.config._random_seed`` (what its ``set_ants_deterministic`` sets, along with numpy's and
      Python's global seeds, which this leaves alone); a ``random_seed=`` keyword, as this project passed
      before, falls into ``**kwargs`` and is ignored;
    - ITK sums the metric over threads in an order that varies from run to run. One thread
      (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``) is set when :mod:`common` is imported
      (:mod:`common.numerics`), before ITK starts its thread pool.

    Measured on IXI012 (2 mm, brain to MNI brain, ``Affine``, 2026-12-05): with the seed alone, four
    registrations gave four different results (up to 379 in intensity on one voxel; template Dice
    0.9610-0.9622); with the seed and one thread, four runs in two processes gave the same bits, in the
    same 6.4-6.8 s.

    Args:
        fixed, moving: ANTs images (:func:`_to_ants`).
        transform: ANTs ``type_of_transform``.
        seed: seed of the metric sampling.

    Returns:
        ANTsPy's result dict (``warpedmovout``, ``fwdtransforms``, ...).
    """
    import ants
    import ants.config

    previous = ants.config._random_seed
    ants.config._random_seed = int(seed)
    try:
        return ants.registration(fixed=fixed, moving=moving, type_of_transform=transform)
    finally:
        ants.config._random_seed = previous


def similarity_to_template(warped: np.ndarray) -> float:
    """Pearson correlation between a volume on the FSL 2 mm grid and the template, over the voxels
    inside the template's brain mask where the volume is non-zero (so a dataset mask that cuts the
    cerebellum differently does not count as misregistration). A QC measure: compare subjects of one
    dataset with each other (contrast differs between scanners and ages)."""
    template, mask = mni_template()
    inside = mask & (warped != 0)
    if inside.sum() < 1000:
        return 0.0
    a, b = warped[inside].astype(float), template[inside].astype(float)
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
        seed: ANTs random seed (sampling of the similarity metric; :func:`ants_registration`).

    Returns:
        float32 (91, 109, 91) volume, zero outside the brain.

    Raises:
        ValueError: unknown ``transform``.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose from {TRANSFORMS}")
    template, mask = mni_template()
    fixed = _to_ants(template * mask if brain_extracted else template, FSL_2MM_AFFINE)
    result = ants_registration(fixed, _to_ants(data, affine), transform, seed)
    warped = result["warpedmovout"].numpy().astype(np.float32)
    warped[~mask] = 0.0
    return warped


def flag_low_outliers(values, n_mad: float = 4.0, floor: float = 0.01):
    """True where a value lies more than ``n_mad`` median absolute deviations (at least ``floor``)
    below the median of ``values`` (a pandas Series): a failed step stands out from its peers, while
    contrast alone shifts a whole dataset."""
    median = float(values.median())
    mad = float((values - median).abs().median())
    return values < median - n_mad * max(mad, floor)


def registration_qc(frame, n_mad: float = 4.0):
    """QC table of registered volumes: similarity to the template per row and a ``flagged`` column.

    Args:
        frame: rows with ``participant_id``, ``session_id`` and ``cache_path`` (float32 (1, 91, 109, 91)
            arrays from an ``ants_*_mni`` pipeline), one dataset.
        n_mad: rows whose similarity lies more than ``n_mad`` median absolute deviations below the
            dataset's median are flagged for visual inspection (a failed registration correlates far
            less than its peers; contrast alone shifts a whole dataset).

    Returns:
        DataFrame ``participant_id, session_id, similarity, flagged``.
    """
    import pandas as pd

    sims = [similarity_to_template(np.load(p, mmap_mode="r")[0]) for p in frame["cache_path"]]
    out = pd.DataFrame({"participant_id": frame["participant_id"].to_numpy(),
                        "session_id": frame.get("session_id", pd.Series([""] * len(frame))).to_numpy(),
                        "similarity": np.round(sims, 4)})
    out["flagged"] = flag_low_outliers(out["similarity"], n_mad)
    return out


def qc_montage(paths: list[str], labels: list[str], out_path, columns: int = 6):
    """PNG montage of the mid-axial, mid-coronal and mid-sagittal slices of registered volumes, the
    template first, with the template's brain outline drawn on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    template, mask = mni_template()
    volumes = [template] + [np.load(p, mmap_mode="r")[0] for p in paths]
    names = ["MNI152 template"] + list(labels)
    cut = [s // 2 for s in FSL_2MM_SHAPE]

    def views(v):
        return [np.rot90(v[:, :, cut[2]]), np.rot90(v[:, cut[1], :]), np.rot90(v[cut[0], :, :])]

    rows = int(np.ceil(len(volumes) / columns))
    fig, axes = plt.subplots(rows * 3, columns, figsize=(1.8 * columns, 1.9 * rows * 3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (vol, name) in enumerate(zip(volumes, names)):
        r, c = divmod(i, columns)
        for k, (view, outline) in enumerate(zip(views(np.asarray(vol)), views(mask.astype(float)))):
            ax = axes[3 * r + k, c]
            ax.imshow(view, cmap="gray")
            ax.contour(outline, levels=[0.5], colors="r", linewidths=0.4)
            if k == 0:
                ax.set_title(name, fontsize=6)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path
