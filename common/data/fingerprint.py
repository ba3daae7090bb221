"""Content fingerprints of input files, the keys of every on-disk cache (volumes, images, features).

A cache entry is keyed by what a file contains, not by its path or modification time: a dataset that
is copied, moved or re-extracted (new mtimes, same bytes) keeps its cached preprocessing, and a file
whose bytes change gets a new entry. Hashing is cheap next to preprocessing (SHA-1 of the 105 MB of
IXI-HH T1 volumes: well under a second) and is memoised per process by (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_MEMO: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-1 hex digest (40 characters) of the file's bytes; ``""`` for an empty ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    if not path:
        return ""
    st = os.stat(path)
    memo_key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _MEMO:
        digest = hashlib.sha1()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _MEMO[memo_key] = digest.hexdigest()
    return _MEMO[memo_key]
