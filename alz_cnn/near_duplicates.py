"""Near-duplicate search between the published test and train folders (a leakage check the source
never made).

Each image is reduced to a small grayscale thumbnail (area average), flattened, centred and scaled
to unit norm, so the dot product of two thumbnails is their Pearson correlation; every query image
gets its most correlated reference image. A pair is a near-duplicate when that correlation is at
least ``threshold``. Correlation ignores brightness and contrast changes, which JPEG re-encoding and
intensity augmentation introduce, while two different slices (other subject, other level) differ
in shape and correlate less.

Default setting (32x32 thumbnails, r >= 0.97), from the data: on the Alzheimer test folder the
nearest training image shares the test image's label for 64% of all test images (813/1279 at
16x16), but for 438 of the 440 pairs with r >= 0.97 and for all 367 pairs with r >= 0.98 at 32x32;
above that level a pair is, in practice, the same subject's neighbouring slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

DEFAULT_THRESHOLD = 0.97
DEFAULT_THUMBNAIL = 32


def thumbnails(images: np.ndarray, size: int = DEFAULT_THUMBNAIL) -> np.ndarray:
    """(N, C, H, W) uint8/float images -> (N, size*size) float32 rows, centred and unit-norm.

    Channels are averaged; the image is reduced to ``size`` x ``size`` by area averaging.

    Raises:
        ValueError: not a 4D array.
    """
    if images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {images.shape}")
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32).mean(1, keepdim=True)
    x = torch.nn.functional.adaptive_avg_pool2d(x, size).flatten(1)
    x = x - x.mean(1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    return (x / norm.clamp_min(1e-6)).numpy()


def nearest_neighbours(queries: np.ndarray, references: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each query thumbnail, the index of the most correlated reference thumbnail and the correlation.

    Args:
        queries: (Nq, D), references: (Nr, D) rows from :func:`thumbnails`.

    Returns:
        ``(index, correlation)``, both (Nq,).
    """
    ref = torch.from_numpy(references)
    idx, corr = [], []
    for start in range(0, len(queries), chunk):
        sim = torch.from_numpy(queries[start:start + chunk]) @ ref.T
        best = sim.max(1)
        idx.append(best.indices.numpy())
        corr.append(best.values.numpy())
    return np.concatenate(idx), np.concatenate(corr)


def find_near_duplicates(query_frame: pd.DataFrame, query_images: np.ndarray, ref_frame: pd.DataFrame,
                         ref_images: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                         size: int = DEFAULT_THUMBNAIL) -> pd.DataFrame:
    """Nearest reference image of every query image.

    Args:
        query_frame, ref_frame: rows with ``image`` and ``label`` columns, aligned with the image arrays.
        query_images, ref_images: (N, C, H, W) arrays.
        threshold: correlation at or above which a pair counts as a near-duplicate.

    Returns:
        One row per query: ``image, label, nearest_image, nearest_label, correlation, near_duplicate``.
    """
    idx, corr = nearest_neighbours(thumbnails(query_images, size), thumbnails(ref_images, size))
    return pd.DataFrame({
        "image": query_frame["image"].to_numpy(),
        "label": query_frame["label"].to_numpy(),
        "nearest_image": ref_frame["image"].to_numpy()[idx],
        "nearest_label": ref_frame["label"].to_numpy()[idx],
        "correlation": corr.round(5),
        "near_duplicate": corr >= threshold,
    })


def near_duplicate_figure(pairs: pd.DataFrame, query_images: np.ndarray, ref_images: np.ndarray,
                          ref_index: dict[str, int], path: str | Path, n: int = 6) -> Path:
    """Save a figure of the ``n`` most correlated (query, nearest reference) pairs, side by side.

    Args:
        pairs: output of :func:`find_near_duplicates`, aligned with ``query_images``.
        ref_index: reference image name -> row of ``ref_images``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = pairs.sort_values("correlation", ascending=False).head(n)
    fig, axes = plt.subplots(2, len(top), figsize=(2.2 * max(len(top), 1), 4.8), squeeze=False)
    for j, (row_index, row) in enumerate(top.iterrows()):
        for i, (img, name, label) in enumerate([(query_images[pairs.index.get_loc(row_index)], row["image"], row["label"]),
                                                (ref_images[ref_index[row["nearest_image"]]], row["nearest_image"],
                                                 row["nearest_label"])]):
            ax = axes[i, j]
            ax.imshow(np.asarray(img)[0], cmap="gray")
            ax.set_title(f"{'test' if i == 0 else 'train'}: {label}\n{Path(name).name}", fontsize=7)
            ax.axis("off")
        axes[1, j].text(0.5, -0.08, f"r = {row['correlation']:.4f}", transform=axes[1, j].transAxes, ha="center",
                        fontsize=8)
    fig.suptitle("Test images (top) and their nearest training image (bottom)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
