"""The 4-class Alzheimer slices: published train/test folders, a seeded validation split, a cached
uint8 image array, and the datasets and augmentation of the source.

Images are decoded once per (file list, size) into ``<cache_dir>/alzheimer4/images_<size>_<key>.npy``
(N, 3, S, S) uint8 and memory-mapped afterwards, so an epoch decodes no JPEG and resizes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.transforms import v2

from common.data.fingerprint import file_digest
from common.data.image_folder import load_image_checked, scan_image_folder
from common.data.manifest import Exclusions
from common.io import atomic_write
from common.pretrained import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)



def load_alzheimer4(root: str | Path, val_fraction: float = 0.15, seed: int = 42,
                    check: bool = True) -> tuple[pd.DataFrame, list[str], Exclusions]:
    """Index the published ``train/`` and ``test/`` folders and carve a validation split from ``train/``.

    Class names come from the folder names, sorted (the source hard-coded a list in another order
    than ``os.listdir`` gave it). The validation images are a class-stratified ``val_fraction`` of
    ``train/`` drawn with ``seed`` (scikit-learn ``train_test_split``); ``test/`` is never touched.
    Unreadable or non-image files are excluded with a reason.

    Returns:
        ``(frame, class_names, exclusions)``; frame columns ``image, image_path, split, label,
        label_index`` with ``split`` in ``train``/``val``/``test``.

    Raises:
        FileNotFoundError: ``root/train`` missing or without class folders.
        ValueError: no usable image in ``train/`` or ``test/``, or ``val_fraction`` outside (0, 1).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    frame, class_names, exclusions = scan_image_folder(root, ("train", "test"), check=check)
    for split in ("train", "test"):
        if not (frame["split"] == split).any():
            raise ValueError(f"no usable image in {Path(root) / split}; see the exclusions")
    train = frame.index[frame["split"] == "train"]
    labels = frame.loc[train, "label_index"]
    stratify = labels if labels.value_counts().min() >= 2 else None
    _, val = train_test_split(train, test_size=val_fraction, random_state=seed, stratify=stratify)
    frame.loc[val, "split"] = "val"
    return frame, class_names, exclusions


def _cache_key(paths: list[str], size: int) -> str:
    digest = hashlib.sha256(f"size={size};gray->rgb;PIL-bilinear".encode())
    for p in paths:
        digest.update(f"{file_digest(p)}\n".encode())
    return digest.hexdigest()[:16]


def cached_images(frame: pd.DataFrame, size: int, cache_dir: str | Path) -> np.ndarray:
    """All images of ``frame`` (in row order) as a (N, 3, size, size) uint8 array, cached on disk.

    Every image is decoded to one luminance channel (:func:`load_image_checked`; the slices are
    grayscale JPEGs, and a colour file is converted with the ITU-R 601-2 luma transform), resized
    with PIL's bilinear filter (what the source's ``transforms.Resize`` does on PIL images) and
    replicated to the 3 channels the models take (the source's ``convert('RGB')``). The cache file
    is keyed by the content of the files (in row order) and the size.

    Raises:
        common.data.checks.BadImageError: a file became unreadable after indexing.
    """
    paths = frame["image_path"].tolist()
    out = Path(cache_dir) / "alzheimer4" / f"images_{size}_{_cache_key(paths, size)}.npy"
    if out.exists():
        return np.load(out, mmap_mode="r")
    images = np.empty((len(paths), 3, size, size), np.uint8)
    for i, path in enumerate(paths):
        gray = Image.fromarray(load_image_checked(path)).resize((size, size), Image.BILINEAR)
        images[i] = np.asarray(gray)[None]
    atomic_write(out, lambda f: np.save(f, images), mode="wb")
    log.info("cached %d images at %dx%d in %s", len(paths), size, size, out)
    return np.load(out, mmap_mode="r")


class RandomSoftening(v2.Transform):
    """kornia's ``RandomSharpness`` at its default strength: the image blended with its 3x3-smoothed
    version by a factor drawn uniformly from (0, ``max_factor``) per image, with PIL's convention
    (factor 0: the smoothed image, 1: unchanged), through torchvision's ``adjust_sharpness``. So
    with the default 0.5 it always softens (by 50-100%). Shapes: (C, H, W) uint8 or float -> same."""

    def __init__(self, max_factor: float = 0.5):
        super().__init__()
        self.max_factor = float(max_factor)

    def make_params(self, flat_inputs: list) -> dict:
        return {"factor": float(torch.empty(()).uniform_(0.0, self.max_factor))}

    def transform(self, inpt, params: dict):
        return v2.functional.adjust_sharpness(inpt, params["factor"])


def source_augmentation() -> v2.Transform:
    """The source's training augmentation of the transfer models (notebook cell 21, kornia
    ``AugmentationSequential``), with torchvision transforms v2, each step with the source's
    probability: affine (rotation up to 5 degrees, translation up to 10%, scale 0.75-1.05) p=0.1,
    perspective (distortion 0.1) p=0.1, horizontal flip p=0.1, vertical flip p=0.1, Gaussian blur
    (kernel 5x9, sigma 1e-4 to 0.5) p=0.4, sharpness (kornia default strength 0.5, see
    :class:`RandomSoftening`) p=0.1. The source applies it per batch on the GPU to float images;
    here per image to the cached uint8 images (alz_cnn/README.md, "Deviations").
    """
    return v2.Compose([
        v2.RandomApply([v2.RandomAffine(degrees=5, translate=(0.1, 0.1), scale=(0.75, 1.05))], p=0.1),
        v2.RandomPerspective(distortion_scale=0.1, p=0.1),
        v2.RandomHorizontalFlip(p=0.1),
        v2.RandomVerticalFlip(p=0.1),
        v2.RandomApply([v2.GaussianBlur(kernel_size=(5, 9), sigma=(1e-4, 0.5))], p=0.4),
        v2.RandomApply([RandomSoftening(0.5)], p=0.1),
    ])


class AlzheimerSlices(Dataset):
    """Cached uint8 slices -> float model inputs.

    Items are dicts ``image`` (3, S, S) float32, ``target`` class index, ``index`` row in ``rows``.

    Args:
        images: (N, 3, S, S) uint8 array (e.g. the memory map of :func:`cached_images`).
        targets: (N,) class indices.
        rows: indices into ``images`` that form this split.
        augment: a v2 transform applied to the uint8 image (training only), or None.
        normalize: ImageNet mean/std normalisation (transfer models); AltzCNN takes [0, 1] inputs.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, rows: np.ndarray,
                 augment: v2.Transform | None = None, normalize: bool = False):
        self.images, self.targets, self.rows = images, np.asarray(targets), np.asarray(rows)
        self.augment = augment
        self.normalize = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD) if normalize else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        x = torch.from_numpy(np.array(self.images[row]))
        if self.augment is not None:
            x = self.augment(x)
        x = x.float() / 255.0
        if self.normalize is not None:
            x = self.normalize(x)
        return {"image": x, "target": torch.tensor(int(self.targets[row])), "index": torch.tensor(i)}
