"""Crash-safe file writes: write to a temporary file in the target folder, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path`` and rename it into place.

    A crash never leaves a truncated ``path``: either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` to ``path``."""
    return atomic_write(path, lambda fh: fh.write(text))


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN written as null)."""
    return write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, frame) -> Path:
    """Atomically write a pandas DataFrame as CSV without the index."""
    return atomic_write(path, lambda fh: frame.to_csv(fh, index=False))


def save_torch(path: str | Path, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj``."""
    return atomic_write(path, lambda fh: torch.save(obj, fh), mode="wb")


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _clean(obj.item())
    return obj


def replace_block(path: Path, start: str, end: str, body: str) -> bool:
    """Replace the text between ``start`` and ``end`` in ``path`` (a generated block of a README); returns True if it changed.

    Files without both markers are left alone. Unchanged content is not rewritten.
    """
    if not path.exists():
        return False
    content = path.read_text()
    if start not in content or end not in content:
        return False
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{body}{end}{tail}"
    if new == content:
        return False
    write_text(path, new)
    return True
