"""Checks every image passes before use (DESIGN.md "Data contract").

A volume must be readable, 3D (a trailing singleton 4th axis is accepted), of plausible size and
voxel spacing, finite, and not blank. A failure raises :class:`BadImageError`, whose message names
the file and the problem; callers log it as an exclusion and carry on with the other files.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

#: Plausible bounds for a brain MRI volume.
MIN_DIM, MAX_DIM = 16, 1024
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 10.0
#: A volume with fewer non-zero voxels than this fraction is considered blank.
MIN_NONZERO_FRACTION = 0.005


class BadImageError(ValueError):
    """An input image that cannot be used; ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def check_file(path: str | Path) -> Path:
    """Raise :class:`BadImageError` unless ``path`` is an existing, non-empty file."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise BadImageError(path, "file is empty (0 bytes)")
    return path


def load_checked(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Load a NIfTI/Analyze volume and check it.

    Args:
        path: image file (``.nii``, ``.nii.gz``, ``.img``/``.hdr``).

    Returns:
        ``(data, affine, spacing)``: ``data`` float32 array of shape (X, Y, Z) with the header's
        scaling applied, the 4x4 voxel-to-world ``affine`` (mm), and the voxel spacing in mm.

    Raises:
        BadImageError: missing, empty, unreadable or truncated file, not 3D, implausible size
            or voxel spacing, NaN/Inf voxels, or a blank (all-constant) volume.
    """
    path = check_file(path)
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for non-NIfTI content
        raise BadImageError(path, f"not a readable NIfTI/Analyze image ({type(err).__name__}: {err})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise BadImageError(path, f"expected a 3D volume, got {len(img.shape)}D with shape {tuple(img.shape)}")
    if min(shape) < MIN_DIM or max(shape) > MAX_DIM:
        raise BadImageError(path, f"implausible volume size {shape} (each axis must be {MIN_DIM}-{MAX_DIM} voxels)")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    if not all(MIN_SPACING_MM <= z <= MAX_SPACING_MM for z in spacing):
        raise BadImageError(path, f"implausible voxel spacing {spacing} mm (expected {MIN_SPACING_MM}-{MAX_SPACING_MM} mm)")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise BadImageError(path, f"truncated or corrupt image data ({type(err).__name__}: {err})") from None
    if not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise BadImageError(path, f"{n_bad} voxels are NaN or Inf")
    nonzero = float(np.count_nonzero(data)) / data.size
    if nonzero < MIN_NONZERO_FRACTION or float(data.max()) == float(data.min()):
        raise BadImageError(path, f"blank volume (non-zero fraction {nonzero:.4f}, range {data.min()}..{data.max()})")
    return data, img.affine.astype(np.float64), spacing


def load_mask(path: str | Path, shape: tuple[int, int, int]) -> np.ndarray:
    """Load a brain mask or label map as a boolean array (label > 0; NaN counts as outside).

    Raises:
        BadImageError: unreadable file or a shape that differs from the image's ``shape``.
    """
    try:
        data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as err:
        raise BadImageError(path, f"unreadable mask ({type(err).__name__}: {err})") from None
    data = data.reshape(data.shape[:3]) if data.ndim == 4 and data.shape[3] == 1 else data
    if tuple(data.shape) != tuple(shape):
        raise BadImageError(path, f"mask shape {data.shape} differs from image shape {shape}")
    return np.nan_to_num(data, nan=0.0) > 0
