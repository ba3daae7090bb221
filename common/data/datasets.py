"""torch Datasets over cached, preprocessed volumes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

SEX_CODES = {"M": 0, "F": 1}


class VolumeDataset(Dataset):
    """Reads preprocessed volumes from the on-disk cache (``cache_path`` column).

    Args:
        frame: manifest rows with ``cache_path`` (see :func:`common.data.preprocess.prepare_volumes`),
            ``age`` and ``sex``.
        augment: optional callable on a (1, D, H, W) tensor (e.g. a MONAI ``Compose`` of random
            transforms); it should be seeded by the caller for reproducibility.

        columns: further numeric columns of ``frame`` returned as float32 items under their own
            names (NaN where missing), e.g. a per-subject input a model takes besides the image.

    Items: ``{"image": (1, D, H, W) float32, "target": float32 age in years (NaN if unknown),
    "sex": int64 (0=M, 1=F, -1 unknown), "index": int64 row index}`` plus ``columns``.

    Raises:
        KeyError: a name in ``columns`` is not a column of ``frame``.
    """

    #: What every item holds; ``columns`` add to it.
    ITEM_KEYS = ("image", "target", "sex", "index")

    def __init__(self, frame: pd.DataFrame, augment=None, columns: tuple[str, ...] = ()):
        missing = [c for c in columns if c not in frame.columns or c in self.ITEM_KEYS]
        if missing:
            raise KeyError(f"columns {missing} not in the frame, or names of standard item keys {self.ITEM_KEYS}")
        self.frame = frame.reset_index(drop=True)
        self.augment = augment
        self.columns = tuple(columns)

    def __len__(self) -> int:
        return len(self.frame)

    def reseed(self, seed: int) -> None:
        """Re-seed the augmentation (called by the training loop at every epoch)."""
        if self.augment is not None and hasattr(self.augment, "set_random_state"):
            self.augment.set_random_state(seed=seed)

    def __getitem__(self, i: int) -> dict:
        row = self.frame.iloc[i]
        image = torch.from_numpy(np.array(np.load(row["cache_path"], mmap_mode="r"), dtype=np.float32))
        if self.augment is not None:
            image = self.augment(image)
            image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        return {
            "image": image.contiguous(),
            "target": torch.tensor(float(row["age"]), dtype=torch.float32),
            "sex": torch.tensor(SEX_CODES.get(row.get("sex", ""), -1), dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
            **{c: torch.tensor(float(row[c]), dtype=torch.float32) for c in self.columns},
        }
