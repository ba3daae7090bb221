"""The standard manifest table every dataset source produces (see DESIGN.md, "Data contract").

One row per image: ``dataset, participant_id, session_id, image_path, mask_path, age, sex, site,
label``. ``age`` is a float in years (NaN when unknown), ``sex`` is ``"M"``/``"F"``/``""``,
``session_id``/``mask_path``/``label`` may be empty strings.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common.distributed import is_main_process

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "dataset",
    "participant_id",
    "session_id",
    "image_path",
    "mask_path",
    "age",
    "sex",
    "site",
    "label",
]

_SEX_MAP = {
    "m": "M", "male": "M", "1": "M",
    "f": "F", "female": "F", "2": "F",
}


def parse_age(value: object) -> float:
    """Parse one age cell into float years.

    Accepts numbers, numeric strings with a decimal comma (``"34,5"``) and the BIDS missing
    marker ``"n/a"`` (and empty/None), which give NaN.

    Raises:
        ValueError: for text that is neither a number nor a missing marker, or a negative age.
    """
    if value is None:
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)):
        age = float(value)
    else:
        text = str(value).strip()
        if text.lower() in {"", "n/a", "na", "nan", "none", "-"}:
            return float("nan")
        try:
            age = float(text.replace(",", "."))
        except ValueError:
            raise ValueError(f"age {text!r} is not a number") from None
    if np.isfinite(age) and age < 0:
        raise ValueError(f"age {age} is negative")
    return age if np.isfinite(age) else float("nan")


def parse_sex(value: object) -> str:
    """Map common sex codings (M/F, male/female, 1/2 as in IXI.xls SEX_ID) to ``"M"``/``"F"``/``""``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = str(value).strip().lower()
    if text.endswith(".0"):
        text = text[:-2]
    return _SEX_MAP.get(text, "")


@dataclass
class Exclusions:
    """Collects excluded inputs with a reason; written as CSV so nothing is dropped silently."""

    rows: list[dict] = field(default_factory=list)

    def add(self, dataset: str, item: str, reason: str, stage: str) -> None:
        """Record that ``item`` (a path or an ID) was excluded at ``stage`` for ``reason``."""
        self.rows.append({"dataset": dataset, "item": str(item), "stage": stage, "reason": reason})
        log.warning("excluded %s (%s, %s): %s", item, dataset, stage, reason)

    def extend(self, other: Exclusions) -> None:
        self.rows.extend(other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, path: str | Path) -> Path:
        """Write ``dataset,item,stage,reason`` rows to ``path`` (created even when empty; under
        torchrun by rank 0 only)."""
        path = Path(path)
        if not is_main_process():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["dataset", "item", "stage", "reason"])
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def make_manifest(rows: list[dict]) -> pd.DataFrame:
    """Build a manifest DataFrame with the standard columns, types and empty-string defaults.

    Raises:
        ValueError: if a row lacks ``participant_id`` or ``image_path``, or (participant_id,
            session_id) pairs repeat with the same image.
    """
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in MANIFEST_COLUMNS:
        if col != "age":
            df[col] = df[col].fillna("").astype(str)
    df["age"] = pd.to_numeric(df["age"], errors="coerce").astype(float)
    if (df["participant_id"] == "").any() or (df["image_path"] == "").any():
        raise ValueError("manifest rows need participant_id and image_path")
    dup = df.duplicated(["participant_id", "session_id", "image_path"])
    if dup.any():
        raise ValueError(f"duplicated manifest rows: {df.loc[dup, 'image_path'].tolist()[:5]}")
    return df.sort_values(["participant_id", "session_id", "image_path"]).reset_index(drop=True)


def subjects_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per participant: ``participant_id, age`` (mean over sessions), ``sex``, ``n_images``."""
    return (
        manifest.groupby("participant_id", sort=True)
        .agg(age=("age", "mean"), sex=("sex", "first"), n_images=("image_path", "size"))
        .reset_index()
    )
