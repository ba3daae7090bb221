"""Regenerate ``results/LEADERBOARD.md`` and the README block from ``results/*.json``.

Nobody edits a number by hand: every cell comes from a result file that a run wrote. Running this
twice on the same inputs produces byte-identical output.

    python scripts/make_leaderboard.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import run as run_cli  # noqa: E402
from common.io import write_text  # noqa: E402

START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


def _f(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _ci(ci) -> str:
    return f" [{_f(ci[0])}, {_f(ci[1])}]" if ci and None not in ci else ""


def _params(n) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n:,}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _reported(rep: dict | None) -> str:
    if not rep:
        return "–"
    parts = [f"MAE {rep['mae']}" if "mae" in rep else "", f"r {rep['pearson_r']}" if "pearson_r" in rep else "",
             f"acc {rep['accuracy']}" if "accuracy" in rep else ""]
    where = rep.get("dataset", "")
    return ", ".join(p for p in parts if p) + (f" ({where})" if where else "")


def load_results(results_dir: str | Path) -> list[dict]:
    """All result documents, sorted by (task, dataset, method)."""
    docs = []
    for path in sorted(Path(results_dir).glob("*__*.json")):
        doc = json.loads(path.read_text())
        doc["_file"] = path.name
        docs.append(doc)
    return sorted(docs, key=lambda d: (d.get("task", ""), d["dataset"], d["method"]))


def _table(columns: list[str], rows: list[list[str]]) -> str:
    """Markdown table: header, separator, one line per row of cells."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def _profile(d: dict) -> str:
    """The profile, with the training precision when it is not fp32 (e.g. ``cpu, bf16``)."""
    precision = d.get("precision", "fp32")
    return d["profile"] if precision == "fp32" else f"{d['profile']}, {precision}"


def _lead(d: dict) -> list[str]:
    """dataset, method, profile (with precision)."""
    return [d["dataset"], d.get("method_label", d["method"]), _profile(d)]


#: What the leaderboard calls each preprocessing (``parameters`` of a result: pipeline, registration, slicing).
PREPROCESSING = {
    "mni_brain": "shared: brain, N4, affine to MNI", "mni_brain_syn": "shared: brain, N4, SyN to MNI",
    "mni_axial": "shared: brain, N4, affine to MNI; axial triplets", "monai": "source: reorient + resample, skull on",
    "nilearn_centered": "source: nilearn resample, skull on", "voxel_axis2": "source: raw voxel axis 2, skull on",
    "ants_affine_mni": "dataset mask, ANTs affine to MNI", "ants_syn_mni": "dataset mask, ANTs SyN to MNI",
}
#: Result files written before the preprocessing was recorded: what their method used then.
EARLIER_PREPROCESSING = {"resnet3d": "monai", "oasis_resblock": "nilearn_centered", "roi_ridge": "DLMUSE ROI volumes",
                         "mean_age": "none (no image)"}


def _preprocessing(d: dict) -> str:
    """The row's preprocessing, from its parameters (older result files: the method's pipeline then)."""
    params = d.get("parameters") or {}
    key = params.get("pipeline") or params.get("slicing") or params.get("registration")
    if key is None:
        key = EARLIER_PREPROCESSING.get(d["method"], "RAS axial triplets, skull on" if "vgg16" in d["method"] else "–")
    return PREPROCESSING.get(key, key)


def _subjects(d: dict) -> str:
    """``train/val/test`` counts; datasets without subject IDs count images (``n_subjects["unit"]``)."""
    n = d["n_subjects"]
    unit = f" {n['unit']}" if n.get("unit") else ""
    return f"{n.get('train', 0)}/{n.get('val', 0)}/{n.get('test', 0)}{unit}"


def _tail(d: dict) -> list[str]:
    """source reported, params, wall time."""
    return [_reported(d.get("source_reported")), _params(d.get("n_parameters")), _duration(d["wall_time_s"])]


def brain_age_table(docs: list[dict]) -> str:
    columns = ["dataset", "method", "profile", "preprocessing", "subjects train/val/test", "test MAE [95% CI]",
               "MAE / mean-age MAE", "Pearson r", "R²", "MAE corrected", "Spearman(gap, age) raw → corrected",
               "source reported", "params", "wall time"]
    rows = []
    for d in docs:
        m = d["metrics"]
        raw, cor = m["raw"], m["corrected"]
        rows.append([*_lead(d), _preprocessing(d), _subjects(d), f"{_f(raw['mae'])}{_ci(raw.get('mae_ci95'))}",
                     f"{_f(m.get('mae_ratio_to_mean_predictor'))} (mean-age MAE {_f(m.get('mean_predictor_mae'))})",
                     _f(raw["pearson_r"], 3), _f(raw["r2"], 3), _f(cor["mae"]),
                     f"{_f(raw['spearman_gap_age'])} → {_f(cor['spearman_gap_age'])}", *_tail(d)])
    return _table(columns, rows)


def classification_table(docs: list[dict]) -> str:
    columns = ["dataset", "method", "profile", "split", "subjects train/val/test", "test accuracy [95% CI]",
               "balanced accuracy", "macro-F1", "per-class recall", "majority-class rate", "source reported", "params",
               "wall time"]
    rows = []
    for d in docs:
        m = d["metrics"]
        recall = ", ".join(f"{c} {_f(v)}" for c, v in m["per_class_recall"].items())
        split = "subject-level" if d.get("subject_split", True) else "**not subject-split**"
        rows.append([*_lead(d), split, _subjects(d), f"{_f(m['accuracy'], 3)}{_ci3(m.get('accuracy_ci95'))}",
                     _f(m["balanced_accuracy"], 3), _f(m["macro_f1"], 3), recall, _f(m["majority_class_rate"], 3),
                     *_tail(d)])
    return _table(columns, rows)


def _ci3(ci) -> str:
    return f" [{_f(ci[0], 3)}, {_f(ci[1], 3)}]" if ci and None not in ci else ""


def render(docs: list[dict]) -> str:
    """The leaderboard markdown (without the README markers)."""
    brain = [d for d in docs if d.get("task") == "brain_age"]
    classification = [d for d in docs if d.get("task") == "classification"]
    out = []
    if brain or not classification:
        out += ["### Brain age (test split of the shared subject-level splits; bias correction fitted on validation)", ""]
        out.append(brain_age_table(brain) if brain else "_no results yet_")
    if classification:
        out += ["", "### Classification (test split; checkpoint chosen on validation)", "",
                classification_table(classification)]
    if out[0] == "":
        out = out[1:]
    notes = sorted({f"{d['method']} / {d['dataset']}: {n}" for d in docs for n in d.get("notes", [])})
    if notes:
        out += ["", "Notes carried by the result files:", ""] + [f"- {n}" for n in notes]
    devices = sorted({d.get("device", "?") for d in docs})
    out += ["", f"Devices: {', '.join(devices)}. Generated by `python scripts/make_leaderboard.py` from "
            f"`results/*.json`; do not edit by hand."]
    return "\n".join(out) + "\n"


def replace_block(path: Path, start: str, end: str, body: str) -> bool:
    """Replace the text between ``start`` and ``end`` in ``path``; returns True if it changed.

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


def main(results_dir: str = "results", readme: str = "README.md", method_readmes: bool = True) -> None:
    """Write ``<results_dir>/LEADERBOARD.md`` and replace the generated README blocks.

    Args:
        results_dir: folder with ``<method>__<dataset>.json`` files.
        readme: README whose block between ``<!-- leaderboard:start -->`` and
            ``<!-- leaderboard:end -->`` is replaced (skipped when the file has no markers).
        method_readmes: also fill ``<!-- results:start -->``/``<!-- results:end -->`` in each
            method's README (next to ``readme``) with that method's rows.
    """
    docs = load_results(results_dir)
    body = render(docs)
    board = Path(results_dir) / "LEADERBOARD.md"
    text = "# Leaderboard\n\n" + body
    if not board.exists() or board.read_text() != text:
        write_text(board, text)
    replace_block(Path(readme), START, END, body)
    if method_readmes:
        root = Path(readme).parent
        for folder in sorted({d.get("readme_folder", d["method"]) for d in docs}):
            mine = [d for d in docs if d.get("readme_folder", d["method"]) == folder]
            replace_block(root / folder / "README.md", "<!-- results:start -->", "<!-- results:end -->", render(mine))
    print(f"wrote {board}")


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="scripts/make_leaderboard.py")
