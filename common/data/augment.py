"""Training-time variation of how a scan was acquired, for the brain-age methods' ``cpu`` profiles.

The shared preprocessing (:mod:`common.data.standardize`) removes what a pipeline can remove: voxel
order, head position, field of view, bias field, skull. What it leaves is the network's job: a
residual misalignment of a few millimetres and degrees after the affine registration, a little more or
less blur, a little more or less noise. Training on such variation (Shorten & Khoshgoftaar, J Big
Data 2019; for brain age e.g. Dinsdale et al., NeuroImage 2021) makes the prediction depend less on
it. Every transform is MONAI's; this module only chooses the ranges, in millimetres, and keeps the
background (zero outside the brain after ``zscore_nonzero``) at zero.

The ranges are about what the invariance benchmark's variants leave after preprocessing
(``scripts/bench.py --sections=invariance``), not tuned on any score; whether they help is decided on
validation MAE (the method READMEs give the evidence).
"""

from __future__ import annotations

import math

import torch
from monai.transforms import Compose, RandAffine, RandGaussianNoise, RandGaussianSmooth, Randomizable, Transform

#: Rotation (degrees, about each axis), translation (mm, along each axis) and scaling (fraction) of
#: the random affine: the residual misalignment left by an affine registration.
ROTATE_DEG, TRANSLATE_MM, SCALE = 5.0, 4.0, 0.05
#: Gaussian blur, sigma drawn per axis up to this (mm): a 1 mm to 3 mm acquisition seen at 2 mm.
SMOOTH_SIGMA_MM = 1.5
#: Additive Gaussian noise SD, in units of the brain's intensity SD (``zscore_nonzero`` images).
NOISE_SD = 0.1


class InsideBrain(Randomizable, Transform):
    """Apply ``transform`` and put the voxels that were zero (outside the brain) back to zero.

    Args:
        transform: a MONAI (randomisable) array transform of a (C, D, H, W) tensor.
    """

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        outside = img == 0
        out = self.transform(img)
        return torch.where(outside, torch.zeros_like(out), out)

    def set_random_state(self, seed=None, state=None):
        self.transform.set_random_state(seed=seed, state=state)
        return self

    def randomize(self, data=None) -> None:  # the wrapped transform draws its own parameters
        pass


def acquisition_augmentation(prob: float, spacing_mm: float) -> list:
    """MONAI transforms that vary blur, noise and alignment of a (C, D, H, W) training image.

    Each of the three is applied with probability ``prob``: a Gaussian blur (sigma per axis uniform in
    [0, ``SMOOTH_SIGMA_MM``] mm) and additive noise (SD ``NOISE_SD``), both inside the brain only, then a
    random affine (``ROTATE_DEG`` degrees, ``TRANSLATE_MM`` mm, ``SCALE``; bilinear, zero padding).

    Args:
        prob: probability of each transform (0 gives an empty list).
        spacing_mm: voxel size of the method's grid (mm), to express the ranges in voxels.

    Returns:
        The transforms, to put in a ``monai.transforms.Compose`` after the method's own.

    Raises:
        ValueError: ``prob`` outside [0, 1] or a non-positive ``spacing_mm``.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"augmentation probability {prob} is not in [0, 1]")
    if spacing_mm <= 0:
        raise ValueError(f"voxel spacing {spacing_mm} mm must be positive")
    if prob == 0.0:
        return []
    sigma = (0.0, SMOOTH_SIGMA_MM / spacing_mm)
    return [
        InsideBrain(RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=prob)),
        InsideBrain(RandGaussianNoise(prob=prob, mean=0.0, std=NOISE_SD)),
        RandAffine(prob=prob, rotate_range=(math.radians(ROTATE_DEG),) * 3,
                   translate_range=(TRANSLATE_MM / spacing_mm,) * 3, scale_range=(SCALE,) * 3,
                   mode="bilinear", padding_mode="zeros"),
    ]


def seeded(transforms: list, seed: int) -> Compose:
    """``Compose(transforms)`` with its random state set from ``seed`` (deterministic training)."""
    aug = Compose(transforms)
    aug.set_random_state(seed=seed)
    return aug
