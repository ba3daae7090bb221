"""Noise floor: how much a method's test MAE moves when only the seed changes (same code, data,
fold and profile), shown beside the leaderboard so that a difference smaller than it is not read as
a result.

    python scripts/noise_floor.py                                   # resnet3d and TSAN stage 1, IXI-HH fold 0, seeds 42,43,44
    python scripts/noise_floor.py --methods=resnet3d --seeds=42,43

Seed 42 is the main job's own fold model (``runs/<method>/<dataset>/<reuse_run>/fold<k>``) when that
run is finished and made by the current commit; every other seed trains ``noise-seed<s>/fold<k>``
(reused when finished by the current commit, so the script can be rerun after an interruption).
Writes ``<results_dir>/noise_floor.json``. Each method's entry carries its own commit, and a method not
run this time keeps the entry it has there (same dataset, fold, seeds and profile), so the methods can
be measured in different sessions: ``--methods=tsan_stage1`` now, ``--methods=resnet3d`` later.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from common.cli import run as run_cli  # noqa: E402
from common.cv import fold_folder  # noqa: E402
from common.io import write_json  # noqa: E402
from common.runlog import git_commit, setup_logging  # noqa: E402
from tsan.train import RETRY_SEED_STRIDE, STAGE1_ATTEMPTS  # noqa: E402

log = logging.getLogger("noise_floor")

#: method -> (module, training command) of the one-fold trainers measured.
TRAINERS = {"resnet3d": ("resnet3d.train", "train"), "tsan_stage1": ("tsan.train", "train_first_stage")}


def _finished(run_dir: Path, commit: str, seed: int) -> bool:
    """A run folder tested by ``commit`` for ``seed`` (its ``metrics_test.json`` written): trained with
    ``seed`` itself or, after a dead output, with one of its retry seeds (``tsan.train.RETRY_SEED_STRIDE``)."""
    cfg = run_dir / "config.json"
    if not (run_dir / "metrics_test.json").is_file() or not cfg.is_file():
        return False
    c = json.loads(cfg.read_text())
    seeds = {seed + k * RETRY_SEED_STRIDE for k in range(STAGE1_ATTEMPTS)}
    return c.get("git_commit") == commit and int(c.get("seed", -1)) in seeds and not commit.endswith("-dirty")


def _kept_entries(path: Path, dataset: str, fold: int, seeds: list[int], profile: str) -> dict:
    """The method entries of an existing ``noise_floor.json`` measured on the same dataset, fold, seeds
    and profile (each with its commit; a file written before entries had one lends them its own), or
    nothing when the file is missing or measured something else."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    if (old.get("dataset"), old.get("fold"), old.get("seeds"), old.get("profile")) != (dataset, fold, seeds, profile):
        log.info("%s measured another setting (%s fold %s, seeds %s, %s); its entries are replaced", path,
                 old.get("dataset"), old.get("fold"), old.get("seeds"), old.get("profile"))
        return {}
    return {m: {**r, "commit": r.get("commit", old.get("commit", "?"))} for m, r in old.get("methods", {}).items()}


def main(methods: str = "resnet3d,tsan_stage1", dataset: str = "ixi_hh", fold: int = 0, seeds: str = "42,43,44",
         reuse_run: str = "main-cpu", profile: str = "cpu", data_root: str | None = None, runs_dir: str = "runs",
         results_dir: str = "results", cache_dir: str = ".cache") -> dict:
    """Train each method on one fold with each seed and write the spread of the test MAE.

    Args:
        methods: comma-separated keys of :data:`TRAINERS`.
        dataset: dataset with committed folds.
        fold: the outer fold.
        seeds: comma-separated seeds (at least 2).
        reuse_run: the main job's run name, whose fold model stands for seed 42 when finished.
        profile: the profile (the main job's, ``cpu`` here).
        data_root, runs_dir, results_dir, cache_dir: as the training commands.

    Returns:
        The document written to ``<results_dir>/noise_floor.json``: per method the test MAE per seed
        (years), their SD (ddof 1) and the run folders.

    Raises:
        ValueError: an unknown method, or fewer than 2 seeds.
    """
    setup_logging()
    names = [m for m in str(methods).split(",") if m]
    unknown = [m for m in names if m not in TRAINERS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {sorted(TRAINERS)}")
    seed_list = [int(s) for s in str(seeds).split(",") if str(s).strip()]
    if len(seed_list) < 2:
        raise ValueError("the noise floor needs at least 2 seeds")
    commit = git_commit()
    doc = {"dataset": dataset, "fold": int(fold), "seeds": seed_list, "profile": profile,
           "methods": _kept_entries(Path(results_dir) / "noise_floor.json", dataset, int(fold), seed_list, profile)}
    for method in names:
        module, command = TRAINERS[method]
        train = getattr(importlib.import_module(module), command)
        maes, runs, trained = [], [], []
        for seed in seed_list:
            own = fold_folder(Path(runs_dir) / method / dataset / f"noise-seed{seed}", fold)
            main_run = fold_folder(Path(runs_dir) / method / dataset / reuse_run, fold)
            run = next((r for r in (main_run, own) if _finished(r, commit, seed)), None)
            if run is None:
                log.info("%s on %s fold %d, seed %d: training", method, dataset, fold, seed)
                run = Path(train(dataset=dataset, profile=profile, seed=seed, fold=fold, run_name=f"noise-seed{seed}",
                                 data_root=data_root, runs_dir=runs_dir, results_dir=results_dir, cache_dir=cache_dir,
                                 resume=own.exists(), publish=False))
            else:
                log.info("%s on %s fold %d, seed %d: reusing %s", method, dataset, fold, seed, run)
            maes.append(float(json.loads((run / "metrics_test.json").read_text())["raw"]["mae"]))
            runs.append(str(run))
            trained.append(int(json.loads((run / "config.json").read_text())["seed"]))  # a dead-output retry's seed
        doc["methods"][method] = {"mae": maes, "sd": float(np.std(maes, ddof=1)), "runs": runs, "trained_seeds": trained,
                                  "commit": commit}
        if len(set(trained)) < len(trained):
            log.warning("%s: two runs trained with the same seed (%s): the spread is over fewer models", method, trained)
        log.info("%s: test MAE %s, SD %.2f y", method, ", ".join(f"{m:.2f}" for m in maes), doc["methods"][method]["sd"])
    write_json(Path(results_dir) / "noise_floor.json", doc)
    return doc


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="scripts/noise_floor.py")
