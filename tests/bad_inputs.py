"""The bad-input corpus: generated into a temporary folder by the tests (no committed binaries).

Each case maps to the phrase its error or exclusion message must contain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import write_volume

#: NIfTI cases -> expected phrase in the message.
VOLUME_CASES = {
    "truncated": "truncated or corrupt",
    "not_nifti": "not a readable NIfTI",
    "empty": "empty (0 bytes)",
    "2d": "expected a 3D volume",
    "4d": "expected a 3D volume",
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "blank": "blank volume",
    "tiny_spacing": "implausible voxel spacing",
    "huge_spacing": "implausible voxel spacing",
}

#: participants.tsv problems -> expected phrase in the exclusion log (see :func:`write_bad_bids`).
TABLE_CASES = {
    "sub-dup": "2 times in participants.tsv",
    "sub-noimage": "has no T1w image",
    "sub-noid": "not in participants.tsv",
    "sub-text": "is not a number",
}

#: 2D image cases -> expected phrase.
IMAGE_CASES = {
    "truncated.jpg": "truncated or corrupt",
    "text.jpg": "not an image file",
    "empty.jpg": "empty (0 bytes)",
    "notes.txt": "not an image file name",
}


def write_volume_corpus(folder: Path) -> dict[str, Path]:
    """One file per :data:`VOLUME_CASES` key, plus ``ok``; returns ``{case: path}``."""
    return {kind: write_volume(folder / f"{kind}.nii.gz", kind=kind, seed=i)
            for i, kind in enumerate(["ok", *VOLUME_CASES])}


def write_bad_bids(root: Path, n_good: int = 12) -> Path:
    """A BIDS study with ``n_good`` usable subjects and every table and volume problem.

    Good subjects have ages 20..75 with a decimal comma on some rows and ``n/a`` on one extra row;
    bad volumes (one per :data:`VOLUME_CASES`) belong to labelled subjects ``sub-bad<kind>``.
    """
    rows = ["participant_id\tage\tsex"]
    for i in range(n_good):
        age = f"{20 + 5 * i},5" if i % 3 == 0 else f"{20 + 5 * i}.0"
        rows.append(f"sub-{i:02d}\t{age}\t{'MF'[i % 2]}")
        write_volume(root / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz", seed=i)
    for j, kind in enumerate(VOLUME_CASES):
        pid = f"sub-bad{kind.replace('_', '')}"
        rows.append(f"{pid}\t{30 + j}\tF")
        write_volume(root / pid / "anat" / f"{pid}_T1w.nii.gz", kind=kind, seed=100 + j)
    rows += ["sub-na\tn/a\tM", "sub-empty\t\tF", "sub-dup\t40\tM", "sub-dup\t41\tM", "sub-noimage\t50\tF", "sub-text\tforty\tF"]
    for pid in ("sub-na", "sub-empty", "sub-dup", "sub-noid", "sub-text"):
        write_volume(root / pid / "anat" / f"{pid}_T1w.nii.gz", seed=200 + len(pid))
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def write_bad_image_folder(root: Path) -> Path:
    """``train/`` and ``test/`` class folders with good JPEGs and every :data:`IMAGE_CASES` file,
    plus an unknown class folder in ``test/``."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("ClassA", "ClassB"):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(2):
                Image.fromarray(rng.integers(0, 255, (32, 28), dtype=np.uint8)).save(d / f"img{k}.jpg")
    bad = root / "train" / "ClassA"
    raw = (bad / "img0.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    (bad / "text.jpg").write_text("not a picture")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.txt").write_text("readme")
    unknown = root / "test" / "ClassZ"
    unknown.mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 28), dtype=np.uint8)).save(unknown / "img.jpg")
    return root
