"""Build (or check) the shared subject-level cross-validation folds ``results/splits/<dataset>.csv``
(``participant_id,fold``; common/splits.py).

Every method trains and evaluates on these files. An existing fold file is never rewritten
unless ``--force`` is given; it is checked for leakage and for subjects missing from it.

    python scripts/make_splits.py --datasets=ixi_hh,ds000228
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import run as run_cli  # noqa: E402
from common.data.manifest import subjects_table  # noqa: E402
from common.data.sources import load_dataset  # noqa: E402
from common.io import write_text  # noqa: E402
from common.paths import find_data_root  # noqa: E402
from common.runlog import setup_logging
from common.splits import FOLD_METHOD, N_FOLDS, VAL_RULE, load_folds, make_age_stratified_folds, split_path  # noqa: E402

log = logging.getLogger("make_splits")


def main(datasets: str = "ixi_hh,ds000228", data_root: str | None = None, seed: int = 42,
         results_dir: str = "results", force: bool = False) -> None:
    """Write one age-stratified, subject-level fold file per dataset.

    Args:
        datasets: comma-separated dataset folder names under the data root.
        data_root: data folder (default: $DATA_ROOT, ../shared/data, data/).
        seed: random seed of the within-block assignment (recorded in the file header).
        results_dir: where ``splits/<dataset>.csv`` is written.
        force: overwrite an existing fold file (changes every method's results).
    """
    setup_logging()
    root = find_data_root(data_root)
    names = datasets.split(",") if isinstance(datasets, str) else list(datasets)
    for name in names:
        manifest, _ = load_dataset(name, root)
        subjects = subjects_table(manifest)
        labelled = subjects.dropna(subset=["age"])
        path = split_path(name, results_dir)
        if path.exists() and not force:
            folds = load_folds(name, results_dir)
            missing = sorted(set(labelled["participant_id"]) - set(folds["participant_id"]))
            if missing:
                log.warning("%s: %d labelled participants are not in %s (kept out; use --force to rebuild): %s",
                            name, len(missing), path, missing[:10])
            log.info("%s: existing folds OK (%s)", name, _sizes(folds))
            continue
        folds = make_age_stratified_folds(labelled, seed=seed)
        header = (f"# {N_FOLDS} cross-validation folds of {name}: {FOLD_METHOD}; seed={seed}; {len(folds)} participants "
                  f"with age ({len(subjects) - len(labelled)} without age left out). Outer fold k = test; {VAL_RULE}; "
                  f"train = the rest (common/splits.py)\n")
        write_text(path, header + folds.to_csv(index=False))
        log.info("%s: wrote %s (%s)", name, path, _sizes(folds))


def _sizes(folds) -> dict[int, int]:
    """Participants per fold."""
    return {int(k): int(v) for k, v in folds["fold"].value_counts().sort_index().items()}


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="scripts/make_splits.py")
