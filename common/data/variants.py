"""The same brain as different scanners, sites and pipelines deliver it: acquisition variants of a scan.

Used by the invariance test of the shared preprocessing (``tests/test_standardize.py``) and by the
prediction-invariance section of ``scripts/bench.py``. Each variant takes a scan (data, affine in mm)
and returns another (data, affine) of the same head, changed in one way that differs between sites.
Coarser grids are low-pass filtered to the new voxel size before resampling (what a coarser
acquisition measures), so a variant is not an aliasing artefact of this code. The thick slices are
5 mm, as a 2D clinical T1 series has them.
"""

from __future__ import annotations

from collections.abc import Callable

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

Scan = tuple[np.ndarray, np.ndarray]


def _world_axes(affine: np.ndarray) -> np.ndarray:
    """For each voxel axis, the world axis (0 x, 1 y, 2 z) it runs along (nearest)."""
    return nib.io_orientation(affine)[:, 0].astype(int)


def resampled(data: np.ndarray, affine: np.ndarray, world_mm: tuple[float, float, float]) -> Scan:
    """The scan acquired on a grid of ``world_mm`` voxels along world x, y, z (same field of view;
    :func:`common.data.standardize.resample_to_voxel_size`: low-pass where coarser, then linear)."""
    from common.data.standardize import resample_to_voxel_size

    return resample_to_voxel_size(data, affine, np.asarray(world_mm, float)[_world_axes(affine)])


def reoriented(data: np.ndarray, affine: np.ndarray) -> Scan:
    """Header-only change: voxel order flipped on the first axis and the other two swapped, the affine
    updated to match, the origin moved 40 mm, stored as int16."""
    flipped = np.flip(data, 0).transpose(0, 2, 1)
    perm = np.eye(4)[[0, 2, 1, 3]]
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = data.shape[0] - 1
    new_affine = affine @ flip @ perm.T
    new_affine[:3, 3] += [40.0, -40.0, 40.0]
    scale = 3000.0 / max(float(np.abs(data).max()), 1e-6)
    return np.round(flipped * scale).astype(np.int16).astype(np.float32), new_affine


def moved(data: np.ndarray, affine: np.ndarray, rotation_deg: tuple[float, float, float] = (0, 0, 0),
          shift_mm: tuple[float, float, float] = (0, 0, 0)) -> Scan:
    """The head rotated (degrees about world x = nodding, y = tilting, z = turning) about the centre of
    the field of view and shifted, inside the same field of view (what leaves it is lost)."""
    rx, ry, rz = np.deg2rad(rotation_deg)
    rot_x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    rot_y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    rot_z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    centre = (affine @ np.append((np.asarray(data.shape) - 1) / 2, 1))[:3]
    motion = np.eye(4)
    motion[:3, :3] = rot_z @ rot_y @ rot_x
    motion[:3, 3] = centre - motion[:3, :3] @ centre + np.asarray(shift_mm, float)
    head = nib.Nifti1Image(np.asarray(data, np.float32), motion @ affine)  # the head, moved in the world
    out = resample_from_to(head, (data.shape, affine), order=1)  # seen on the original grid
    return np.asarray(out.dataobj, np.float32), affine


def fov_cropped(data: np.ndarray, affine: np.ndarray, inferior_fraction: float = 0.15) -> Scan:
    """The field of view ends higher: the most inferior ``inferior_fraction`` of the slices is missing."""
    axis = int(np.argmax(np.abs(affine[2, :3])))  # the voxel axis that runs along world z
    n = data.shape[axis]
    cut = int(round(n * inferior_fraction))
    keep = slice(cut, n) if affine[2, axis] > 0 else slice(0, n - cut)
    index = [slice(None)] * 3
    index[axis] = keep
    new_affine = affine.copy()
    new_affine[:3, 3] = affine[:3, :3] @ np.array([s.start or 0 for s in index]) + affine[:3, 3]
    return np.asarray(data[tuple(index)], np.float32), new_affine


def bias_field(data: np.ndarray, affine: np.ndarray, amplitude: float = 0.3) -> Scan:
    """A smooth multiplicative intensity inhomogeneity of about ±``amplitude`` across the head."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in data.shape], indexing="ij"))
    field = 1 + amplitude * np.sin(1.4 * grid[0] + 0.4) * np.cos(1.1 * grid[1] - 0.3) * np.cos(0.8 * grid[2])
    return (data * field).astype(np.float32), affine


def rician_noise(data: np.ndarray, affine: np.ndarray, fraction: float = 0.03, seed: int = 0) -> Scan:
    """Rician noise (magnitude of complex Gaussian noise) of SD ``fraction`` of the 99th percentile."""
    rng = np.random.default_rng(seed)
    sigma = fraction * float(np.percentile(data, 99))
    real = data + rng.normal(0, sigma, data.shape)
    imag = rng.normal(0, sigma, data.shape)
    return np.sqrt(real ** 2 + imag ** 2).astype(np.float32), affine


def skull_stripped(data: np.ndarray, affine: np.ndarray, brain_mask: np.ndarray) -> Scan:
    """The scan as a skull-stripping pipeline delivers it: zero outside ``brain_mask``."""
    return (data * (brain_mask > 0)).astype(np.float32), affine


def standard_variants(brain_mask: np.ndarray | None = None) -> dict[str, Callable[[np.ndarray, np.ndarray], Scan]]:
    """The variants the invariance test and the benchmark use, by name (``skull_stripped`` only with
    a brain mask)."""
    variants = {
        "reoriented_int16_origin40mm": reoriented,
        "resampled_1.0mm": lambda d, a: resampled(d, a, (1.0, 1.0, 1.0)),
        "resampled_1.5mm": lambda d, a: resampled(d, a, (1.5, 1.5, 1.5)),
        "resampled_3.0mm": lambda d, a: resampled(d, a, (3.0, 3.0, 3.0)),
        "thick_axial_slices_5mm": lambda d, a: resampled(d, a, (2.0, 2.0, 5.0)),
        "nodding_10deg": lambda d, a: moved(d, a, rotation_deg=(10, 0, 0)),
        "turned_10deg": lambda d, a: moved(d, a, rotation_deg=(0, 0, 10)),
        "shifted_15mm_forward": lambda d, a: moved(d, a, shift_mm=(0, 15, 0)),
        "fov_inferior_15pct_missing": fov_cropped,
        "bias_field_30pct": bias_field,
        "rician_noise_3pct": rician_noise,
    }
    if brain_mask is not None:
        variants["skull_stripped"] = lambda d, a: skull_stripped(d, a, brain_mask)
    return variants
