"""The source's evaluation protocol, emulated: augmented copies split at image level (a leaky protocol).

The source trains and tests on the Kaggle set "alzheimers-multiclass-dataset-equal-and-augmented"
(44,060 images, 4 classes of about equal size), made from the 6,400 slices of the published
``train/`` and ``test/`` folders by augmentation, and splits it 70/15/15 at image level with
``random_split`` (notebook cell 13). Neither the repository nor the notebook nor the dataset page
stored here says how the augmentation was made, so :func:`emulation_augmentation` is this
repository's own choice of the usual kind (small rotation, shift, zoom, flip, brightness) and is
declared as such. What matters for the finding does not depend on it: copies of one original slice
land in the training and the test split alike, so the test split measures recognition of images the
model has seen in another pose, not generalisation to new ones.

Every result of this module is published as ``alz_altzcnn_leaky_emulation`` and labelled so.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from torchvision.transforms import v2

log = logging.getLogger("alz_cnn")

#: Size of the source's augmented set (Kaggle "alzheimers-multiclass-dataset-equal-and-augmented").
SOURCE_AUGMENTED_IMAGES = 44060
#: The source's image-level split (notebook cell 13: ``random_split`` 70/15/15).
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


def emulation_augmentation() -> v2.Transform:
    """The augmentation that makes the copies (declared: the source's recipe is unknown): rotation
    up to 10 degrees, shift up to 5%, zoom 0.9-1.1, horizontal flip p=0.5, brightness and contrast
    +-10%, on (3, S, S) uint8 images."""
    return v2.Compose([v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)),
                       v2.RandomHorizontalFlip(p=0.5), v2.ColorJitter(brightness=0.1, contrast=0.1)])


def augmented_pool(images: np.ndarray, labels: np.ndarray, n_images: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Every original image plus augmented copies until each class holds ``n_images / K`` images.

    Args:
        images: (N, 3, S, S) uint8, the pooled originals (published train/ and test/).
        labels: (N,) class indices.
        n_images: size of the augmented set (about; a class larger than its share keeps all its originals).
        seed: seeds which originals are copied and how.

    Returns:
        ``(pool, table)``: (M, 3, S, S) uint8 and one row per pooled image with ``original`` (row of
        ``images`` it was made from), ``label_index`` and ``copy`` (0 for the original itself).

    Raises:
        ValueError: ``n_images`` below the number of originals, or a class without images.
    """
    classes = np.unique(labels)
    if n_images < len(labels):
        raise ValueError(f"the augmented set ({n_images}) must hold at least the {len(labels)} originals")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    augment = emulation_augmentation()
    share = int(round(n_images / len(classes)))
    rows = []
    for c in classes:
        originals = np.flatnonzero(labels == c)
        rows += [(int(o), int(c), 0) for o in originals]
        sources = rng.choice(originals, size=max(0, share - len(originals)), replace=True)
        rows += [(int(o), int(c), k + 1) for k, o in enumerate(sources)]
    table = pd.DataFrame(rows, columns=["original", "label_index", "copy"])
    pool = np.empty((len(table), *images.shape[1:]), np.uint8)
    for i, (original, copy) in enumerate(zip(table["original"], table["copy"])):
        image = torch.from_numpy(np.array(images[original]))
        pool[i] = image.numpy() if copy == 0 else augment(image).numpy()
    return pool, table


def image_level_split(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """``table`` with a ``split`` column: a seeded random 70/15/15 split of the images, ignoring which
    original each was made from (the source's protocol), and ``original_in_train``: whether the test
    or validation image's original, or another copy of it, is in the training split.
    """
    order = np.random.default_rng(seed).permutation(len(table))
    n_train = int(round(SPLIT_FRACTIONS["train"] * len(table)))
    n_val = int(round(SPLIT_FRACTIONS["val"] * len(table)))
    split = np.empty(len(table), object)
    split[order[:n_train]], split[order[n_train:n_train + n_val]], split[order[n_train + n_val:]] = "train", "val", "test"
    out = table.assign(split=split)
    seen = set(out.loc[out["split"] == "train", "original"])
    return out.assign(original_in_train=out["original"].isin(seen))
