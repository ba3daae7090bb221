"""Locating the data: ``--data_root``, else ``$DATA_ROOT``, else ``../shared/data``, else ``data/``."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


class DataRootNotFound(FileNotFoundError):
    """No data folder could be found; the message says how to get one."""


def find_data_root(data_root: str | None = None) -> Path:
    """Resolve the data folder (one sub-folder per dataset).

    Order: the explicit argument, ``$DATA_ROOT``, ``<repo>/../shared/data``, ``<repo>/data``.

    Raises:
        DataRootNotFound: if none exists, naming ``scripts/fetch_data.py``.
    """
    candidates = [data_root] if data_root else []
    if os.environ.get("DATA_ROOT"):
        candidates.append(os.environ["DATA_ROOT"])
    if data_root or os.environ.get("DATA_ROOT"):
        path = Path(candidates[0]).expanduser()
        if path.is_dir():
            return path
        raise DataRootNotFound(f"data root {path} does not exist; run `python scripts/fetch_data.py` "
                               "or point DATA_ROOT at a folder with one sub-folder per dataset")
    for path in (REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "data"):
        if path.is_dir():
            return path
    raise DataRootNotFound("no data found: set DATA_ROOT, or run `python scripts/fetch_data.py` to download "
                           "the public datasets into data/ (or `--from DIR` to link a local copy)")
