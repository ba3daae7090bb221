"""What the main job (scripts/reproduce.sh) runs per method, and how long it took last time.

    python scripts/mainjob.py eta resnet3d ixi_hh     # seconds the last run took (from results/), or "?"

Kept free of heavy imports so that the main job can ask it before every step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: Result-file prefixes of each main-job method (``scripts/reproduce.sh`` names).
MAINJOB_METHODS = {
    "reference": ("mean_age__", "roi_ridge__"), "resnet3d": ("resnet3d__",), "oasis_resblock": ("oasis_resblock__",),
    "vgg16_svr": ("vgg16_svr_",), "midslice_classifier": ("midslice_resnet18__",), "alz_cnn": ("alz_",),
    "tsan": ("tsan_stage1__", "tsan_stage2__"),  # the non-default stage-2 variants are not in the main job
}

#: Methods whose result files of one dataset come from one process (each file carries its total time).
ONE_RUN_PER_DATASET = {"vgg16_svr"}


def last_wall_time(method: str, dataset: str, results_dir: str | Path = "results") -> float | None:
    """Seconds the committed results of ``method`` on ``dataset`` took (None: no result yet)."""
    times = []
    for prefix in MAINJOB_METHODS.get(method, ()):
        for path in Path(results_dir).glob(f"{prefix}*{dataset}.json" if prefix.endswith("_") else f"{prefix}{dataset}.json"):
            if path.stem.split("__")[-1] == dataset:
                times.append(float(json.loads(path.read_text()).get("wall_time_s") or 0.0))
    if not times:
        return None
    return max(times) if method in ONE_RUN_PER_DATASET else sum(times)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "eta":
        sys.exit("usage: python scripts/mainjob.py eta METHOD DATASET")
    seconds = last_wall_time(sys.argv[2], sys.argv[3], Path(__file__).resolve().parents[1] / "results")
    print("?" if seconds is None else f"{seconds:.0f}")
