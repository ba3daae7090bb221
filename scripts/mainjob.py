"""What the main job (scripts/reproduce.sh) runs per method, and how long it took last time.

    python scripts/mainjob.py eta resnet3d ixi_hh     # seconds the last run took (from results/), or "?"
    python scripts/mainjob.py report results/mainjob_steps.tsv results/BENCHMARKS.md
                                                     # the main job's measured wall time, split per step
    python scripts/mainjob.py methods                # the main job's methods, in the order it runs them
    python scripts/mainjob.py datasets tsan          # the datasets the main job runs a method on

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

#: The main job's methods, in the order it runs them, and the datasets each runs on: the whole job
#: is every (method, dataset) pair here. ``scripts/reproduce.sh`` reads it; the report names the pairs
#: that no invocation of the commit has finished.
MAINJOB_DATASETS = {
    "reference": ("ixi_hh", "ds000228"), "resnet3d": ("ixi_hh", "ds000228"), "resnet3d_permuted_ages": ("ixi_hh",),
    "oasis_resblock": ("ixi_hh", "ds000228"), "vgg16_svr": ("ixi_hh", "ds000228"), "tsan": ("ixi_hh", "ds000228"),
    "midslice_classifier": ("ds000228",), "alz_cnn": ("alzheimer4",), "midslice_from_alz": ("ds000228",),
}


def mainjob_datasets() -> list[str]:
    """Every dataset of the whole main job, in the order of their first step."""
    return list(dict.fromkeys(d for datasets in MAINJOB_DATASETS.values() for d in datasets))


def mainjob_steps() -> list[str]:
    """Every step of the whole main job, named as in the record (``"<method> on <dataset>"``)."""
    return [f"{method} on {dataset}" for method, datasets in MAINJOB_DATASETS.items() for dataset in datasets]


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

    The job of one commit can take several invocations (a stopped job goes on where it stopped, on
    the next machine a session gets): ``scripts/reproduce.sh`` appends every invocation of the same
    commit to one record, and the report sums them, naming each invocation's machine.

    Args:
        steps_tsv: the record ``scripts/reproduce.sh`` writes, one block per invocation: an
            ``invocation`` line (UTC start), then ``profile``, ``commit`` and ``machine`` (CPU model,
            cores) lines, then per step ``step<TAB>seconds<TAB>status<TAB>reused folds`` (``status``
            ok or FAILED; reused folds: finished folds taken over from an earlier invocation: their
            time is in that invocation's line of the step when it finished the step, and in no line when it
            was stopped during it (the result files' per-fold ``wall_time_s`` still hold it)), and a
            ``total`` line when the invocation ended. A block without ``total`` was still running or was
            stopped; its steps done are counted. A record written before invocations were kept has no
            ``invocation`` line: it is one block. Steps of :func:`mainjob_steps` that no invocation
            finished (a job limited by ``METHODS`` / ``DATASETS``, or not yet done) are named in the
            headline, which then says the time is for part of the job, never a total.
        out_md: the Markdown file to write (``results/BENCHMARKS.md``).

    Returns:
        The Markdown text written.

    Raises:
        ValueError: a line that is not four tab-separated fields, or blocks of different commits.
    """
    blocks: list[dict] = []
    for line in Path(steps_tsv).read_text().splitlines():
        fields = line.split("\t")
        if len(fields) != 4:
            raise ValueError(f"{steps_tsv}: expected 4 tab-separated fields, got {line!r}")
        key = fields[0]
        if not blocks or key == "invocation" or (key == "profile" and "profile" in blocks[-1]["meta"]):
            blocks.append({"meta": {}, "rows": []})
        if key in ("invocation", "total", "machine", "commit", "profile"):
            blocks[-1]["meta"][key] = fields[1]
        else:
            blocks[-1]["rows"].append(fields)
    commits = {b["meta"].get("commit", "?") for b in blocks}
    if len(commits) > 1:
        raise ValueError(f"{steps_tsv}: invocations of different commits {sorted(commits)}; one record per commit")
    for b in blocks:
        b["seconds"] = float(b["meta"]["total"]) if "total" in b["meta"] else sum(float(r[1]) for r in b["rows"])
    total = sum(b["seconds"] for b in blocks)
    reused = sum(int(r[3] or 0) for b in blocks for r in b["rows"])
    stopped = [i + 1 for i, b in enumerate(blocks) if "total" not in b["meta"]]
    machines = sorted({b["meta"].get("machine", "?") for b in blocks})
    meta = blocks[0]["meta"] if blocks else {}
    done = {r[0] for b in blocks for r in b["rows"] if r[2] == "ok"}
    whole_job = mainjob_steps()
    missing = [step for step in whole_job if step not in done]
    if missing:  # invocations limited by METHODS / DATASETS: not the whole job, whatever they took
        headline = (f"**Part of the job: {total / 60:.1f} min for the steps run so far at this commit; "
                    f"{len(missing)} of its {len(whole_job)} method steps not yet run** (budget for the "
                    f"whole job: 150 min; not yet run: {', '.join(missing)}"
                    + (f"; invocation {', '.join(map(str, stopped))} was still running or was stopped" if stopped else "")
                    + ")")
    elif not stopped and len(blocks) == 1:
        headline = f"**Total: {total / 60:.1f} min** (budget: 150 min)"
    elif not stopped:
        headline = f"**Total: {total / 60:.1f} min over {len(blocks)} invocations** (budget: 150 min)"
    else:
        headline = (f"**Not finished: {total / 60:.1f} min for the steps done so far** (budget: 150 min; invocation "
                    f"{', '.join(map(str, stopped))} was still running or was stopped, and the job goes on where it "
                    "stopped when run again)")
    lines = ["# Main job wall time", "",
             f"Measured end to end by `scripts/reproduce.sh` itself (profile {meta.get('profile', '?')}, commit "
             f"{meta.get('commit', '?')}, {'; '.join(machines)}). Written by `python scripts/mainjob.py report`; "
             "do not edit by hand.", "",
             headline + (f"; {reused} finished folds were reused from an earlier invocation of the same commit "
                         "(their time is counted where that invocation finished the step; a step stopped midway "
                         "has no line)" if reused else
                         "; nothing reused (cold start)"), ""]
    if len(blocks) > 1:
        lines += ["| invocation | started (UTC) | machine | minutes | ended |", "|---|---|---|---|---|"]
        lines += [f"| {i + 1} | {b['meta'].get('invocation', '?')} | {b['meta'].get('machine', '?')} | "
                  f"{b['seconds'] / 60:.1f} | {'yes' if 'total' in b['meta'] else 'stopped'} |" for i, b in enumerate(blocks)]
        lines.append("")
    lines += ["| step | minutes | status | folds reused |" + (" invocation |" if len(blocks) > 1 else ""),
              "|---|---|---|---|" + ("---|" if len(blocks) > 1 else "")]
    for i, b in enumerate(blocks):
        lines += [f"| {r[0]} | {float(r[1]) / 60:.1f} | {r[2]} | {r[3] or 0} |" + (f" {i + 1} |" if len(blocks) > 1 else "")
                  for r in b["rows"]]
    text = "\n".join(lines) + "\n"
    Path(out_md).write_text(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "eta":
        seconds = last_wall_time(sys.argv[2], sys.argv[3], Path(__file__).resolve().parents[1] / "results")
        print("?" if seconds is None else f"{seconds:.0f}")
    elif len(sys.argv) == 4 and sys.argv[1] == "report":
        print(report(sys.argv[2], sys.argv[3]))
    elif sys.argv[1:] == ["methods"]:
        print(" ".join(MAINJOB_DATASETS))
    elif sys.argv[1:] == ["datasets"]:
        print(" ".join(mainjob_datasets()))
    elif len(sys.argv) == 3 and sys.argv[1] == "datasets" and sys.argv[2] in MAINJOB_DATASETS:
        print(" ".join(MAINJOB_DATASETS[sys.argv[2]]))
    else:
        sys.exit("usage: python scripts/mainjob.py eta METHOD DATASET | report STEPS_TSV OUT_MD | methods | datasets [METHOD]")
