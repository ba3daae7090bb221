"""Fill the shared preprocessing cache (brain extraction, N4, registration to the MNI152 brain) for
whole datasets, once for every method, and write its QC.

    python scripts/preprocess.py --datasets=ixi_hh,ds000228
    python scripts/preprocess.py --datasets=ixi_hh --transform=SyN      # TSAN's paper pipeline

Writes ``<cache_dir>/standard-<transform>-v<version>/qc/<dataset>.csv`` (one row per scan: brain
volume, Dice of the registered brain mask with the MNI brain mask, similarity to the template, a
``flagged`` column for outliers to look at, the exclusion reason of a scan that failed a step) and
``<dataset>_montage.png`` (the flagged scans and the first others, template outline drawn on each).
Under torchrun the scans are split between the ranks.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.cli import run as run_cli  # noqa: E402
from common.data.manifest import Exclusions  # noqa: E402
from common.data.preprocess import STANDARD_PIPELINES, VolumeSpec, prepare_volumes  # noqa: E402
from common.data.registration import flag_low_outliers  # noqa: E402
from common.data.sources import load_dataset  # noqa: E402
from common.data.standardize import StandardCache  # noqa: E402
from common.io import write_csv  # noqa: E402
from common.paths import find_data_root  # noqa: E402
from common.runlog import setup_logging

log = logging.getLogger("preprocess")


def main(datasets: str = "ixi_hh,ds000228", transform: str = "Affine", data_root: str | None = None,
         cache_dir: str = ".cache", workers: int = 2, montage: int = 12) -> dict:
    """Preprocess every scan of ``datasets`` into the shared cache and write the QC tables.

    Args:
        datasets: comma-separated dataset folder names under the data root.
        transform: ``Affine`` (the main job's pipeline) or ``SyN`` (TSAN's ``paper`` pipeline).
        data_root: data folder (default: $DATA_ROOT, ../shared/data, data/).
        cache_dir: the preprocessing cache (the methods read it from here).
        workers: parallel processes.
        montage: scans shown in the QC montage besides the flagged ones.

    Returns:
        Per dataset: scans, excluded, flagged, and the wall time in seconds.
    """
    setup_logging()
    pipeline = {v: k for k, v in STANDARD_PIPELINES.items()}.get(transform)
    if pipeline is None:
        raise ValueError(f"unknown transform {transform!r}; choose from {sorted(STANDARD_PIPELINES.values())}")
    root = find_data_root(data_root)
    # the 2 mm grid of the standard brain itself: this entry is the cache every method resamples from
    spec = VolumeSpec(shape=(91, 109, 91), spacing_mm=(2.0, 2.0, 2.0), pipeline=pipeline)
    cache = StandardCache(cache_dir, transform)
    summary = {}
    names = datasets.split(",") if isinstance(datasets, str) else list(datasets)
    for name in names:
        manifest, exclusions = load_dataset(name, root)
        t0 = time.time()
        failed = Exclusions()
        ready = prepare_volumes(manifest, spec, cache_dir, failed, workers=workers)
        wall = time.time() - t0
        rows = []
        for row in manifest.itertuples(index=False):
            entry = {"participant_id": row.participant_id, "session_id": row.session_id, "image_path": row.image_path}
            qc_path = cache.path_for(row.image_path).with_suffix(".json")
            if qc_path.exists():
                entry |= pd.read_json(qc_path, typ="series").to_dict()
            rows.append(entry)
        qc = pd.DataFrame(rows)
        reasons = {r["item"]: r["reason"] for r in failed.rows}
        qc["excluded"] = [reasons.get(p, "") for p in qc["image_path"]]
        ok = qc["excluded"] == ""
        qc["flagged"] = False
        for col in ("template_dice", "similarity"):
            if col in qc and ok.any():
                qc.loc[ok, "flagged"] |= flag_low_outliers(qc.loc[ok, col].astype(float))
        out_dir = cache.dir / "qc"
        write_csv(out_dir / f"{name}.csv", qc)
        shown = qc[ok & qc["flagged"]].index.tolist() + qc[ok & ~qc["flagged"]].index[:montage].tolist()
        if shown:
            _montage(cache, qc.loc[shown], out_dir / f"{name}_montage.png")
        summary[name] = {"scans": len(manifest), "excluded": int((~ok).sum()), "flagged": int(qc["flagged"].sum()),
                         "wall_s": round(wall, 1), "ready": len(ready)}
        log.info("%s: %d scans, %d excluded, %d flagged for review, %.0f s (QC: %s)", name, len(manifest),
                 (~ok).sum(), qc["flagged"].sum(), wall, out_dir / f"{name}.csv")
    return summary


def _montage(cache: StandardCache, rows: pd.DataFrame, out_path: Path) -> None:
    """QC montage of the standard brains of ``rows`` (arrays written next to the montage, then removed)."""
    import tempfile

    from common.data.registration import qc_montage

    with tempfile.TemporaryDirectory() as tmp:
        paths, labels = [], []
        for i, row in enumerate(rows.itertuples(index=False)):
            brain = cache.get(row.image_path).brain
            p = Path(tmp) / f"{i}.npy"
            np.save(p, brain[None])
            paths.append(str(p))
            labels.append(f"{row.participant_id}{' FLAG' if row.flagged else ''}")
        qc_montage(paths, labels, out_path)


if __name__ == "__main__":
    run_cli(main, name="scripts/preprocess.py")
