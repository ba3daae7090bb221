"""2D image datasets laid out one folder per class (``<root>/<split>/<class>/<image>``).

Used for the 4-class Alzheimer slices (published ``train/`` and ``test/`` folders, no subject IDs).
Class names come from the folder names of the first split, sorted; every image is opened and fully
decoded once, and unreadable, truncated or non-image files, and files in a class folder unknown to
the first split, are excluded with a reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from common.data.checks import BadImageError, check_file
from common.data.manifest import Exclusions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def load_image_checked(path: str | Path, min_size: int = 8) -> np.ndarray:
    """Decode an image file to grayscale uint8 (H, W).

    Colour images are converted with PIL's ITU-R 601-2 luma transform (``convert("L")``).

    Raises:
        BadImageError: empty, not an image, truncated/corrupt, or smaller than ``min_size`` pixels.
    """
    path = check_file(path)
    try:
        with Image.open(path) as img:
            img.load()  # full decode: catches truncated files that Image.open alone accepts
            gray = np.asarray(img.convert("L"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image file (PIL cannot identify it)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(path, f"truncated or corrupt image ({type(err).__name__}: {err})") from None
    if min(gray.shape) < min_size:
        raise BadImageError(path, f"image too small {gray.shape}")
    return gray


def scan_image_folder(root: str | Path, splits: tuple[str, ...] = ("train", "test"), dataset: str | None = None,
                      check: bool = True) -> tuple[pd.DataFrame, list[str], Exclusions]:
    """Index ``root/<split>/<class>/*`` images.

    Args:
        root: dataset folder.
        splits: split folders; class names are taken from the first.
        dataset: name used in exclusion records (default: the folder name).
        check: decode every image (:func:`load_image_checked`) and exclude bad ones.

    Returns:
        ``(frame, class_names, exclusions)``; frame columns ``image, image_path, split, label,
        label_index``; ``image`` is the path relative to ``root`` (the image identifier).

    Raises:
        FileNotFoundError: ``root/<first split>`` is missing or has no class folders.
    """
    root = Path(root)
    dataset = dataset or root.name
    exclusions = Exclusions()
    first = root / splits[0]
    if not first.is_dir():
        raise FileNotFoundError(f"{first} not found: expected {root}/<split>/<class>/<image> folders")
    class_names = sorted(p.name for p in first.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_names:
        raise FileNotFoundError(f"{first} has no class folders")
    rows = []
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            exclusions.add(dataset, folder, f"split folder {split}/ is missing", "source")
            continue
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            known = class_dir.name in class_names
            for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
                rel = str(path.relative_to(root))
                if not known:
                    exclusions.add(dataset, rel, f"unknown class folder {class_dir.name!r} (classes: {class_names})",
                                   "source")
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    exclusions.add(dataset, rel, f"not an image file name ({path.suffix or 'no suffix'})", "source")
                    continue
                if check:
                    try:
                        load_image_checked(path)
                    except BadImageError as err:
                        exclusions.add(dataset, rel, err.problem, "image check")
                        continue
                rows.append({"image": rel, "image_path": str(path), "split": split, "label": class_dir.name,
                             "label_index": class_names.index(class_dir.name)})
    frame = pd.DataFrame(rows, columns=["image", "image_path", "split", "label", "label_index"])
    return frame, class_names, exclusions
