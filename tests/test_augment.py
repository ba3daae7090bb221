"""The shared acquisition augmentation (common/data/augment.py): seeded, inside the brain, off at p=0."""

from __future__ import annotations

import pytest
import torch

from common.data.augment import acquisition_augmentation, seeded


def _brain() -> torch.Tensor:
    x = torch.zeros(1, 32, 32, 32)
    x[:, 8:24, 8:24, 8:24] = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    return x


def test_same_seed_same_augmentation_and_another_seed_differs():
    x = _brain()
    a = seeded(acquisition_augmentation(1.0, 4.0), 7)(x)
    b = seeded(acquisition_augmentation(1.0, 4.0), 7)(x)
    c = seeded(acquisition_augmentation(1.0, 4.0), 8)(x)
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    assert not torch.equal(torch.as_tensor(a), torch.as_tensor(c))
    assert not torch.equal(torch.as_tensor(a), x), "p=1 changes the image"


def test_blur_and_noise_leave_the_background_at_zero():
    x = _brain()
    blur_noise = seeded(acquisition_augmentation(1.0, 4.0)[:2], 3)(x)  # without the affine, which moves the brain
    out = torch.as_tensor(blur_noise)
    assert (out[x == 0] == 0).all() and not torch.equal(out[x != 0], x[x != 0])


def test_probability_zero_is_off_and_bad_arguments_raise():
    assert acquisition_augmentation(0.0, 4.0) == []
    with pytest.raises(ValueError, match="probability"):
        acquisition_augmentation(1.5, 4.0)
    with pytest.raises(ValueError, match="spacing"):
        acquisition_augmentation(0.5, 0.0)
