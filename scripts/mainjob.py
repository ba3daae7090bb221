"""What the main job (scripts/reproduce.sh) runs per method, and how long it took last time.

    python scripts/mainjob.py eta resnet3d ixi_hh     # seconds the last run took (from results/), or "?"
    python scripts/mainjob.py report runs/logs/mainjob_steps.tsv results/BENCHMARKS.md
                                                     # the main job's measured wall time, split per step

Kept free of heavy imports so that the main job can ask it before every step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: Result-file prefixes of each main-job method (``scripts/reproduce.sh`` names).
MAINJOB_METHODS = {
    "reference": ("mean_age__", "roi_ridge__"), "resnet3d": ("resnet3d__",),
    "resnet3d_permuted_ages": ("resnet3d_permuted_ages__",), "oasis_resblock": ("oasis_resblock__",),
    "vgg16_svr": ("vgg16_svr_",), "midslice_classifier": ("midslice_resnet18__",), "alz_cnn": ("alz_",),
    "tsan": ("tsan_stage1__", "tsan_stage2__"),  # the non-default stage-2 variants are not in the main job
    "midslice_from_alz": ("midslice_resnet18_from_alz_resnet18__",),
}

#: A single-split result's time, times this, estimates its cross-validated run (5 folds of similar size).
SINGLE_SPLIT_TO_CV = 5

#: Datasets that keep their published train/test folders (no cross-validation): their single-split
#: result is the whole step, not one fold of five.
PUBLISHED_SPLIT_DATASETS = ("alzheimer4",)

#: Methods whose result files of one dataset come from one process (each file carries its total time).
ONE_RUN_PER_DATASET = {"vgg16_svr"}


def last_wall_time(method: str, dataset: str, results_dir: str | Path = "results") -> float | None:
    """Seconds the committed results of ``method`` on ``dataset`` took (None: no result yet). A result
    of the old single-split protocol (no ``folds`` entry) on a cross-validated dataset counts once per
    fold; one on a dataset with published folders (``PUBLISHED_SPLIT_DATASETS``) counts once."""
    scale = 1 if dataset in PUBLISHED_SPLIT_DATASETS else SINGLE_SPLIT_TO_CV
    times = []
    for prefix in MAINJOB_METHODS.get(method, ()):
        for path in Path(results_dir).glob(f"{prefix}*{dataset}.json" if prefix.endswith("_") else f"{prefix}{dataset}.json"):
            if path.stem.split("__")[-1] == dataset:
                doc = json.loads(path.read_text())
                times.append(float(doc.get("wall_time_s") or 0.0) * (1 if "folds" in doc else scale))
    if not times:
        return None
    return max(times) if method in ONE_RUN_PER_DATASET else sum(times)


def report(steps_tsv: str | Path, out_md: str | Path) -> str:
    """Write the main job's measured wall time, split per step, to ``out_md``.

    Args:
        steps_tsv: the lines ``scripts/reproduce.sh`` appends per step: ``step<TAB>seconds<TAB>status
            <TAB>reused folds`` (``status`` ok or FAILED; reused folds: finished folds a resumed job took over
            instead of training, so its time is not the cold-cache time), ``profile``, ``commit`` and
            ``machine`` (CPU model, cores) lines, and at the end a ``total`` line. Without ``total`` the job
            is still running (or was stopped): the report says so and sums the steps done.
        out_md: the Markdown file to write (``results/BENCHMARKS.md``).

    Returns:
        The Markdown text written.

    Raises:
        ValueError: a line that is not four tab-separated fields.
    """
    rows, meta = [], {}
    for line in Path(steps_tsv).read_text().splitlines():
        fields = line.split("\t")
        if len(fields) != 4:
            raise ValueError(f"{steps_tsv}: expected 4 tab-separated fields, got {line!r}")
        if fields[0] in ("total", "machine", "commit", "profile"):
            meta[fields[0]] = fields[1]
        else:
            rows.append(fields)
    finished = "total" in meta
    total = float(meta["total"]) if finished else sum(float(r[1]) for r in rows)
    reused = sum(int(r[3] or 0) for r in rows)
    lines = ["# Main job wall time", "",
             f"Measured end to end by `scripts/reproduce.sh` itself (profile {meta.get('profile', '?')}, commit "
             f"{meta.get('commit', '?')}, {meta.get('machine', '?')}). Written by `python scripts/mainjob.py report`; "
             "do not edit by hand.", "",
             (f"**Total: {total / 60:.1f} min** (budget: 150 min)" if finished else
              f"**Not finished: {total / 60:.1f} min for the {len(rows)} steps done so far** (budget: 150 min; the job "
              "was still running or was stopped, and goes on where it stopped when run again)") + (
                 f"; {reused} finished folds were reused from an earlier, interrupted invocation of the same commit, "
                 "so this is not a cold-cache time" if reused else "; nothing reused (cold start)"), "",
             "| step | minutes | status | folds reused |", "|---|---|---|---|"]
    lines += [f"| {r[0]} | {float(r[1]) / 60:.1f} | {r[2]} | {r[3] or 0} |" for r in rows]
    text = "\n".join(lines) + "\n"
    Path(out_md).write_text(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "eta":
        seconds = last_wall_time(sys.argv[2], sys.argv[3], Path(__file__).resolve().parents[1] / "results")
        print("?" if seconds is None else f"{seconds:.0f}")
    elif len(sys.argv) == 4 and sys.argv[1] == "report":
        print(report(sys.argv[2], sys.argv[3]))
    else:
        sys.exit("usage: python scripts/mainjob.py eta METHOD DATASET | report STEPS_TSV OUT_MD")
