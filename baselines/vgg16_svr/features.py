"""Slice triplets -> VGG16 ``block5_pool`` features, cached per subject.

Source: the legacy track of the open-source "brain-age-estimation" project: non-overlapping
triplets of consecutive slices of voxel axis 2, each stacked as the 3 channels of one image resized
to 224x224, fed to ImageNet VGG16; the ``block5_pool`` output (7x7x512 = 25,088 values) is the feature.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from common.data.checks import load_checked
from common.data.fingerprint import file_digest
from common.data.standardize import StandardCache
from common.io import atomic_write
from common.pretrained import IMAGENET_MEAN, IMAGENET_STD, load_pretrained

_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


#: Triplet sources: ``voxel_axis2`` (the source's: raw voxel axis 2, first ``SOURCE_MAX_SLICES``
#: slices, raw intensities) and ``mni_axial`` (the shared preprocessing's MNI brain, axial slices).
SLICINGS = ("voxel_axis2", "mni_axial")
#: The source's reported run used the first 120 slices of voxel axis 2 (40 triplets).
SOURCE_MAX_SLICES = 120


def slice_triplets(data: np.ndarray) -> np.ndarray:
    """Non-overlapping triplets of consecutive slices along the last voxel axis.

    Args:
        data: (X, Y, Z) array.

    Returns:
        float32 (T, 3, X, Y), T = Z // 3; channel c of triplet t is slice 3t + c; trailing slices
        that do not fill a triplet are dropped.
    """
    n = data.shape[2] // 3
    return np.stack([np.moveaxis(data[:, :, 3 * t:3 * t + 3], 2, 0) for t in range(n)]).astype(np.float32)


def source_triplets(volume: np.ndarray) -> np.ndarray:
    """The source's triplets: the raw voxel array (no reorientation; on IXI-HH files, stored P, S, R,
    voxel axis 2 runs left-right, so these are sagittal), its first 120 slices, raw intensities
    read as 0-255 pixel values (Keras ``preprocess_input`` subtracts the ImageNet means from raw
    values; :class:`VGG16Features` divides by 255 and applies torchvision's mean/std).

    Returns:
        float32 (T, 3, X, Y) on the 0-1 pixel scale (raw / 255).
    """
    return slice_triplets(np.asarray(volume, np.float32)[:, :, :SOURCE_MAX_SLICES] / 255.0)


def standard_triplets(brain: np.ndarray) -> np.ndarray:
    """Axial triplets (inferior to superior) of a brain on the MNI grid (RAS voxel order), intensities
    min-max scaled to [0, 1] over the volume.

    Returns:
        float32 (T, 3, X, Y).
    """
    lo, hi = float(brain.min()), float(brain.max())
    return slice_triplets((brain - lo) / (hi - lo if hi > lo else 1.0))


def central_positions(n_triplets: int, keep: int | None) -> np.ndarray:
    """Indices of the ``keep`` central triplet positions (all when ``keep`` is None or >= n)."""
    if keep is None or keep >= n_triplets:
        return np.arange(n_triplets)
    start = (n_triplets - keep) // 2
    return np.arange(start, start + keep)


class VGG16Features(nn.Module):
    """torchvision VGG16 convolutional part up to ``block5_pool``.

    Shapes: (N, 3, H, W) on the 0-1 pixel scale -> (N, 25088) (resized to 224 x 224, ImageNet mean/std
    normalisation inside).

    Args:
        weights: ``"none"`` (random initialisation), ``"IMAGENET1K_V1"`` (torchvision weights API),
            or a path to a VGG16 state dict. Missing weights raise
            :class:`common.pretrained.WeightsUnavailableError`.
        seed: seed of the random initialisation (torch's own default seed differs in every process,
            so an unseeded random-init extractor gives different features on every run).
    """

    def __init__(self, weights: str = "none", seed: int = 42):
        super().__init__()
        torch.manual_seed(seed)
        vgg = torchvision.models.vgg16(weights=None)
        self.provenance = load_pretrained(vgg, "vgg16", weights, skip_prefixes=("classifier.",))
        # channels_last: 25% faster on the 2-core CPU here (0.27 -> 0.20 s per image), values equal up to float rounding.
        self.features = vgg.features.eval().to(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        x = ((x - _MEAN) / _STD).contiguous(memory_format=torch.channels_last)
        return self.features(x).flatten(1)


class FeatureCache:
    """Per-subject feature matrices (T_kept, 25088) stored as float32 ``.npy`` (so a run that reads
    the cache gives exactly the numbers of the run that filled it), keyed by the file's content, the
    weights (and their initialisation seed), the slicing and the kept positions.

    Raises:
        ValueError: unknown ``slicing`` (:data:`SLICINGS`).
    """

    def __init__(self, root: str | Path, extractor: VGG16Features, weights: str, keep: int | None, seed: int = 42,
                 slicing: str = "voxel_axis2"):
        if slicing not in SLICINGS:
            raise ValueError(f"unknown slicing {slicing!r}; choose from {SLICINGS}")
        self.extractor, self.keep, self.slicing, self.root = extractor, keep, slicing, Path(root)
        key = f"{weights}|seed{seed}|{keep}|{slicing}|v5"
        self.dir = self.root / "vgg16_features" / hashlib.sha1(key.encode()).hexdigest()[:12]

    def get(self, image_path: str | Path, batch_size: int = 16) -> np.ndarray:
        """Features of one scan, computed once. Raises BadImageError for a bad file."""
        key = file_digest(image_path)[:20]
        path = self.dir / f"{key}.npy"
        if path.exists():
            try:
                return np.load(path)
            except (ValueError, OSError):
                path.unlink()
        if self.slicing == "mni_axial":
            feats = self.from_brain(StandardCache(self.root, "Affine").get(image_path).brain, batch_size)
        else:
            feats = self._extract(source_triplets(load_checked(image_path)[0]), batch_size)
        atomic_write(path, lambda fh: np.save(fh, feats), mode="wb")
        return feats

    def from_brain(self, brain: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Features of a brain already on the shared MNI grid (``mni_axial`` slicing; not cached): what
        :meth:`get` computes for a scan, for a brain that is not a file (the invariance benchmark's
        acquisition variants).

        Args:
            brain: (X, Y, Z) the standardised brain (:class:`common.data.standardize.StandardBrain`).

        Returns:
            float32 (T_kept, 25088).

        Raises:
            ValueError: the cache's slicing is not ``mni_axial``.
        """
        if self.slicing != "mni_axial":
            raise ValueError(f"features of an MNI brain need slicing 'mni_axial', not {self.slicing!r}")
        return self._extract(standard_triplets(brain), batch_size)

    def _extract(self, triplets: np.ndarray, batch_size: int) -> np.ndarray:
        """The kept central triplets of (T, 3, X, Y) through the extractor: float32 (T_kept, 25088)."""
        triplets = triplets[central_positions(len(triplets), self.keep)]
        return torch.cat([self.extractor(torch.from_numpy(triplets[i:i + batch_size]))
                          for i in range(0, len(triplets), batch_size)]).numpy().astype(np.float32)
