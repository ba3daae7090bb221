"""Axial mid-slice extraction and histogram equalisation, as in the MathWorks example.

Source: MathWorks, "Brain MRI Age Classification Using Deep Learning" (ds000228): from each SPM
MNI-normalised anatomical (79x95x68) take the axial slice ``round(68/2)`` (MATLAB 1-based 34),
multiply by the subject's brain mask, subtract the minimum, make it 3-channel grey and
histogram-equalise it. The source equalises each image to its own class's average histogram, which
puts the label into the input; here every image is equalised to the *training split's* average
histogram (:class:`HistogramMatcher`).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from common.data.checks import BadImageError, load_checked, load_mask


def axial_axis(affine: np.ndarray) -> int:
    """Index of the voxel axis that runs inferior-superior (from the affine's axis codes)."""
    codes = nib.aff2axcodes(affine)
    return next(i for i, c in enumerate(codes) if c in ("S", "I"))


def mid_slice_index(n_axial: int) -> int:
    """0-based index of MATLAB's ``round(n/2)`` (1-based) slice; 33 for 68 slices.

    MATLAB rounds halves away from zero, so ``round(n/2)`` is ``floor(n/2 + 0.5)``.
    """
    return int(np.floor(n_axial / 2 + 0.5)) - 1


def extract_mid_slice(image_path: str | Path, mask_path: str | Path = "") -> np.ndarray:
    """Masked axial mid-slice with its minimum subtracted.

    Args:
        image_path: 3D T1 volume (checked with :func:`common.data.checks.load_checked`).
        mask_path: brain mask on the same grid (NaN counts as outside); none: no masking.

    Returns:
        float32 array (X, Y) >= 0, in the volume's in-plane voxel order.

    Raises:
        BadImageError: the volume or its mask fails the checks, or the slice is empty.
    """
    data, affine, _ = load_checked(image_path)
    axis = axial_axis(affine)
    index = mid_slice_index(data.shape[axis])
    slc = np.take(data, index, axis=axis)
    if mask_path:
        slc = slc * np.take(load_mask(mask_path, data.shape), index, axis=axis)
    slc = slc - slc.min()
    if not np.isfinite(slc).all() or slc.max() <= 0:
        raise BadImageError(image_path, f"axial slice {index} is empty after masking")
    return slc.astype(np.float32)


def to_uint8(slice_2d: np.ndarray) -> np.ndarray:
    """Scale a non-negative slice to 0..255 (uint8) by its maximum."""
    return np.round(255.0 * slice_2d / max(float(slice_2d.max()), 1e-12)).astype(np.uint8)


class HistogramMatcher:
    """Equalise images to a target histogram (MATLAB ``histeq(I, hgram)``), fitted on training images.

    ``fit`` averages the normalised 256-bin histograms of the training images; ``transform`` maps
    each grey level through the image's CDF to the nearest level of the target CDF.
    """

    def __init__(self, target_histogram: np.ndarray | None = None):
        self.target = None if target_histogram is None else np.asarray(target_histogram, float)

    def fit(self, images: list[np.ndarray]) -> HistogramMatcher:
        """Target = mean normalised histogram of ``images`` (uint8 arrays, training split only).

        Raises:
            ValueError: no images.
        """
        if not images:
            raise ValueError("HistogramMatcher.fit needs at least one training image")
        hists = [np.bincount(im.ravel(), minlength=256)[:256] / im.size for im in images]
        self.target = np.mean(hists, axis=0)
        return self

    def transform(self, image: np.ndarray) -> np.ndarray:
        """uint8 image (H, W) -> uint8 image equalised to the target histogram."""
        if self.target is None:
            raise RuntimeError("HistogramMatcher is not fitted")
        src_cdf = np.cumsum(np.bincount(image.ravel(), minlength=256)[:256]) / image.size
        tgt_cdf = np.cumsum(self.target) / self.target.sum()
        mapping = np.clip(np.searchsorted(tgt_cdf, src_cdf - 1e-12), 0, 255).astype(np.uint8)
        return mapping[image]


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Save a uint8 (H, W) image as PNG, rotated so that anterior is up (for viewing only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rot90(array)).save(path)
    return path


def montage(images: list[np.ndarray], titles: list[str], path: str | Path, columns: int = 8) -> Path:
    """A grid of slices with titles, for a visual check of the extraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, im, title in zip(np.atleast_1d(axes).ravel(), images, titles):
        ax.imshow(np.rot90(im), cmap="gray")
        ax.set_title(title, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
