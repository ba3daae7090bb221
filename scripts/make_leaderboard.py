"""Regenerate ``results/LEADERBOARD.md`` and the README block from ``results/*.json`` and the
out-of-fold predictions in ``results/predictions/`` (paired comparisons).

Nobody edits a number by hand: every cell comes from a result file that a run wrote. Running this
twice on the same inputs produces byte-identical output.

    python scripts/make_leaderboard.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import run as run_cli  # noqa: E402
from common.io import replace_block, write_text  # noqa: E402
from common.results import prediction_key  # noqa: E402

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
    """Out-of-fold subjects of a cross-validated row; ``train/val/test`` counts otherwise (datasets
    without subject IDs count images, ``n_subjects["unit"]``)."""
    n = d["n_subjects"]
    if "out_of_fold" in n:
        return f"{n['out_of_fold']} ({d['n_folds']} folds)"
    unit = f" {n['unit']}" if n.get("unit") else ""
    return f"{n.get('train', 0)}/{n.get('val', 0)}/{n.get('test', 0)}{unit}"


def cpu_kind(d: dict) -> str | None:
    """Short name of the CPU kind that made a result (``"EPYC, AVX2"``, ``"EPYC, AVX-512"``, ``"Xeon, AMX"``):
    the vendor's model family and the widest instruction set among the flags the result records
    (``environment.cpu``), or None where the result records no CPU (older files, GPU runs).

    fp32 rows of the same commit are meant to be bit-identical across these kinds (README, Precision
    and machine independence); the column lets a reader check which machine made each row.
    """
    cpu = (d.get("environment") or {}).get("cpu") or {}
    if not cpu.get("cpu_model"):
        return None
    model = str(cpu["cpu_model"])
    family = next((name for name in ("EPYC", "Xeon", "Ryzen", "Core") if name in model), model.split("(")[0].strip())
    flags = {k for k, v in (cpu.get("cpu_flags") or {}).items() if v}
    isa = ("AMX" if "amx_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None)
    return f"{family}, {isa}" if isa else family


def _commit(d: dict) -> str:
    """The commit of a row, with the CPU kind that ran it where the result records one."""
    kind = cpu_kind(d)
    return str(d.get("commit", "?"))[:8] + (f" ({kind})" if kind else "")


def _tail(d: dict) -> list[str]:
    """source reported, params, wall time, commit (CPU)."""
    return [_reported(d.get("source_reported")), _params(d.get("n_parameters")), _duration(d["wall_time_s"]), _commit(d)]


def read_predictions(source) -> pd.DataFrame:
    """A per-subject predictions table (a path or a text buffer), IDs kept as text."""
    return pd.read_csv(source, dtype={"participant_id": str, "session_id": str}, keep_default_na=False, na_values=[""])


def _predictions(d: dict, results_dir: Path) -> pd.DataFrame | None:
    """The row's out-of-fold predictions (``results/predictions/...``), or None."""
    path = results_dir / str(d.get("predictions"))
    if not d.get("predictions") or not path.is_file():
        return None
    return read_predictions(path)


def _keyed(table: pd.DataFrame) -> pd.DataFrame:
    """The table indexed by :func:`common.results.prediction_key` (subject and session, or image)."""
    return table.assign(_key=prediction_key(table)).set_index("_key")


def paired(docs: list[dict], results_dir: Path, loss) -> dict[tuple[str, str], dict]:
    """Paired statistics for every pair of rows on their common subjects: ``loss(table) -> per-subject
    loss`` (absolute error, or 0/1 error); :func:`common.metrics.paired_difference`, plus McNemar
    for classifiers."""
    from common.metrics import mcnemar_test, paired_difference

    tables = {d["method"]: _predictions(d, results_dir) for d in docs}
    out = {}
    for i, a in enumerate(docs):
        for b in docs[i + 1:]:
            ta, tb = tables[a["method"]], tables[b["method"]]
            if ta is None or tb is None:
                continue
            ta, tb = _keyed(ta), _keyed(tb)
            common = ta.index.intersection(tb.index)
            if len(common) < 2:
                continue
            la, lb = loss(ta.loc[common]), loss(tb.loc[common])
            stats = paired_difference(la, lb)
            if a.get("task") == "classification":
                stats["mcnemar"] = mcnemar_test(la == 0, lb == 0)
            out[(a["method"], b["method"])] = stats
    return out


def _abs_error(t: pd.DataFrame) -> np.ndarray:
    return np.abs(t["predicted_age"].to_numpy(float) - t["age"].to_numpy(float))


def _zero_one(t: pd.DataFrame) -> np.ndarray:
    return (t["label"].to_numpy() != t["pred"].to_numpy()).astype(float)


def ranks(docs: list[dict], pairs: dict) -> dict[str, int | None]:
    """Rank of each row: 1 + the number of rows that are better with a paired 95% CI of the
    difference that excludes 0 (so rows are separated only by real differences); None for a row
    that could not be paired with any other (no per-subject predictions on common subjects)."""
    out = {}
    for d in docs:
        better = 0
        if len(docs) > 1 and not any(d["method"] in key for key in pairs):
            out[d["method"]] = None
            continue
        for e in docs:
            if e is d:
                continue
            forward = (e["method"], d["method"]) in pairs
            key, sign = ((e["method"], d["method"]), 1) if forward else ((d["method"], e["method"]), -1)
            stats = pairs.get(key)
            if stats is None:
                continue
            lo, hi = (sign * v for v in stats["delta_ci95"])
            if max(lo, hi) < 0:  # e's loss minus d's loss is below 0 everywhere in the CI: e is better
                better += 1
        out[d["method"]] = 1 + better
    return out


def _rank(rank: int | None) -> str:
    return "–" if rank is None else str(rank)


def _bands(m: dict) -> str:
    return ", ".join(f"{k}: {_f(v['mae'], 1)} (n={v['n']})" for k, v in m.get("mae_by_age", {}).items()) or "–"


def correction_label(correction: dict) -> str:
    """The formula of a row's bias correction. A fold whose fitted Cole slope is ~0 falls back to the
    identity (:meth:`common.metrics.BiasCorrection.fit`), so the folds of one row can differ; then the
    label says how many folds used each formula, e.g. ``cole in 3 of 5 folds, identity in 2``."""
    per_fold = [f.get("formula", "cole") for f in correction.get("per_fold") or []]
    if len(set(per_fold)) <= 1:
        return correction.get("formula") or (per_fold[0] if per_fold else "?")
    counts = pd.Series(per_fold).value_counts()
    first, *rest = counts.items()
    return f"{first[0]} in {first[1]} of {len(per_fold)} folds, " + ", ".join(f"{f} in {n}" for f, n in rest)


def brain_age_section(dataset: str, docs: list[dict], results_dir: Path) -> list[str]:
    """Ranked table, per-row detail and the paired comparisons of one dataset's brain-age rows."""
    docs = sorted(docs, key=lambda d: d["metrics"]["raw"]["mae"])
    pairs = paired(docs, results_dir, _abs_error)
    rank = ranks(docs, pairs)
    n = max(d["n_subjects"].get("out_of_fold", 0) for d in docs)
    columns = ["rank", "method", "profile", "preprocessing", "subjects", "MAE [95% CI]", "folds mean ± SD",
               "MAE / mean-age MAE", "Pearson r", "R²", "corrected MAE (formula)", "validation: raw → corrected MAE",
               "Spearman(gap, age) raw → corrected", "source reported", "params", "wall time", "commit (CPU)"]
    rows = []
    for d in docs:
        m = d["metrics"]
        raw, cor = m["raw"], m["corrected"]
        best = rank[d["method"]] == 1
        label = f"**{d.get('method_label', d['method'])}**" if best else d.get("method_label", d["method"])
        val = m.get("correction_on_validation", {})
        formula = correction_label(m.get("bias_correction") or {})
        rows.append([_rank(rank[d["method"]]), label, _profile(d), _preprocessing(d), _subjects(d),
                     f"{_f(raw['mae'])}{_ci(raw.get('mae_ci95'))}",
                     f"{_f(m.get('fold_mae_mean'))} ± {_f(m.get('fold_mae_sd'))}",
                     f"{_f(m.get('mae_ratio_to_mean_predictor'))} ({_f(m.get('mean_predictor_mae'))})",
                     _f(raw["pearson_r"], 3), _f(raw["r2"], 3), f"{_f(cor['mae'])} ({formula})",
                     f"{_f(val.get('raw_mae'))} → {_f(val.get('corrected_mae_leave_one_out'))}",
                     f"{_f(raw['spearman_gap_age'])} → {_f(cor['spearman_gap_age'])}", *_tail(d)])
    out = [f"### Brain age on {dataset}: {n} subjects, each predicted once out-of-fold (5-fold cross-validation)", "",
           "Listed by pooled MAE (years). Rank = 1 + the number of rows whose paired 95% CI of the MAE difference "
           "shows them better, so rows are separated only by real differences (a row can rank above one listed "
           "before it, and ranks can skip); rank 1 in bold. Corrected MAE: the method's source formula, fitted on each fold's "
           "validation split; validation column: mean validation MAE over folds, raw and corrected by a "
           "leave-one-out fit on the other validation subjects (does the correction help, without test data).", "",
           _table(columns, rows), "", "MAE by age band (raw, years):", ""]
    out += [f"- {d.get('method_label', d['method'])}: {_bands(d['metrics']['raw'])}" for d in docs]
    if pairs:
        out += ["", f"Paired comparisons on {dataset} (ΔMAE = first − second, years; paired bootstrap 95% CI over "
                "subjects; Wilcoxon signed-rank p on absolute errors; * CI excludes 0):", "",
                _table(["first", "second", "ΔMAE [95% CI]", "Wilcoxon p", "n"], _pair_rows(docs, pairs))]
    return out


def _pair_rows(docs: list[dict], pairs: dict, mcnemar: bool = False) -> list[list[str]]:
    labels = {d["method"]: d.get("method_label", d["method"]) for d in docs}
    rows = []
    for (a, b), st in pairs.items():
        lo, hi = st["delta_ci95"]
        star = "*" if lo > 0 or hi < 0 else ""
        digits = 3 if mcnemar else 2
        row = [labels[a], labels[b], f"{_f(st['delta'], digits)} [{_f(lo, digits)}, {_f(hi, digits)}]{star}",
               _p(st["wilcoxon_p"]) if not mcnemar else _p(st["mcnemar"]["p"]), str(st["n"])]
        if mcnemar:
            row.insert(4, f"{st['mcnemar']['only_a']} / {st['mcnemar']['only_b']}")
        rows.append(row)
    return rows


def _p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _collapsed(m: dict) -> bool:
    """A classifier that gives (nearly) every subject one class: at least 95% of its predictions in
    one column of the confusion matrix."""
    matrix = np.asarray(m.get("confusion_matrix") or [[0]], float)
    return bool(matrix.sum() and matrix.sum(0).max() / matrix.sum() >= 0.95)


def classification_section(dataset: str, docs: list[dict], results_dir: Path) -> list[str]:
    """Ranked table and McNemar comparisons of one dataset's classifiers; rows that emulate a source's
    leaky protocol follow in a table of their own, never ranked."""
    leaky = [d for d in docs if d["method"].endswith(LEAKY_SUFFIX)]
    docs = sorted((d for d in docs if d not in leaky), key=lambda d: -d["metrics"]["balanced_accuracy"])
    pairs = paired(docs, results_dir, _zero_one)
    rank = ranks(docs, pairs)
    columns = ["rank", "method", "profile", "split", "subjects", "accuracy [95% CI]", "balanced accuracy [95% CI]",
               "macro-F1", "per-class recall", "majority-class rate", "source reported", "params", "wall time", "commit (CPU)"]
    rows = []
    for d in docs:
        m = d["metrics"]
        recall = ", ".join(f"{c} {_f(v)}" for c, v in m["per_class_recall"].items())
        split = ("out-of-fold" if d.get("n_folds") else "subject-level") if d.get("subject_split", True) \
            else "**not subject-split**"
        label = d.get("method_label", d["method"])
        label = f"**{label}**" if rank[d["method"]] == 1 and len(docs) > 1 else label
        if _collapsed(m):
            label += " ⚠ collapsed (one class)"
        rows.append([_rank(rank[d["method"]]), label, _profile(d), split, _subjects(d),
                     f"{_f(m['accuracy'], 3)}{_ci3(m.get('accuracy_ci95'))}",
                     f"{_f(m['balanced_accuracy'], 3)}{_ci3(m.get('balanced_accuracy_ci95'))}",
                     _f(m["macro_f1"], 3), recall, _f(m["majority_class_rate"], 3), *_tail(d)])
    out = [f"### Classification on {dataset}", "",
           "Ranked by balanced accuracy; rank from paired comparisons of the error rate (a row ranks below another "
           "only when the paired 95% CI excludes 0); ⚠ marks a classifier that predicts one class for at least 95% "
           "of the subjects.", "", _table(columns, rows)]
    if pairs:
        out += ["", f"Paired comparisons on {dataset} (Δ error rate = first − second; paired bootstrap 95% CI; exact "
                "McNemar test on the discordant subjects, or images where the dataset has no subject IDs):", "",
                _table(["first", "second", "Δ error [95% CI]", "McNemar p", "only first / only second right", "n"],
                       _pair_rows(docs, pairs, mcnemar=True))]
    if leaky:
        out += ["", "**Leaky protocol, emulated: not a generalisation result.** Copies of the same slices are in the "
                "training and the test split (the source's image-level split of an augmented set); the number measures "
                "recall of seen slices. Compare it with the honest rows above, not with a method.", "",
                _table(["method", "profile", "test images", "accuracy [95% CI]", "balanced accuracy",
                        "test images whose original is in training", "accuracy on them", "accuracy on the others",
                        "source reported",
                        "commit (CPU)"],
                       [[d.get("method_label", d["method"]) + (" ⚠ collapsed (one class)" if _collapsed(d["metrics"]) else ""),
                         _profile(d), str(d["n_subjects"].get("test", "–")),
                         f"{_f(d['metrics']['accuracy'], 3)}{_ci3(d['metrics'].get('accuracy_ci95'))}",
                         _f(d["metrics"]["balanced_accuracy"], 3),
                         _f(d["metrics"].get("test_images_with_original_in_train"), 3),
                         _f(d["metrics"].get("original_in_train", {}).get("accuracy"), 3),
                         _f(d["metrics"].get("original_not_in_train", {}).get("accuracy"), 3),
                         _reported(d.get("source_reported")), _commit(d)] for d in leaky])]
    return out


def _ci3(ci) -> str:
    return f" [{_f(ci[0], 3)}, {_f(ci[1], 3)}]" if ci and None not in ci else ""


#: Balanced accuracy a transfer model must exceed on a dataset to be ranked: below it a row shows only
#: that a code path runs, not what the architecture can do (alzheimer4: 4 classes, chance 0.25; the bar
#: the AltzCNN issue set for "clearly above chance"). Such rows are named under the table as not trained
#: enough. The source's own model (AltzCNN) is exempt: its honest row is the finding, whatever it scores.
TRAINED_ENOUGH = {"alzheimer4": 0.40}
EXEMPT_FROM_TRAINED_ENOUGH = ("alz_altzcnn",)

#: Suffix of a result that emulates a source's leaky protocol (alz_cnn ``leaky``): shown apart, never ranked.
LEAKY_SUFFIX = "_leaky_emulation"


def left_out_reason(d: dict) -> str | None:
    """Why a result is not in the ranked tables: ``single-split`` (a subject-split row that is not
    cross-validated, beside cross-validated ones), ``not trained enough`` (a classifier at or below
    ``TRAINED_ENOUGH`` balanced accuracy on its dataset, unless exempt), or None (shown)."""
    if d.get("subject_split", True) and not d.get("n_folds"):
        return "single-split"
    bar = TRAINED_ENOUGH.get(d.get("dataset"))
    if (d.get("task") == "classification" and bar is not None and not d["method"].endswith(LEAKY_SUFFIX)
            and not d["method"].startswith(EXEMPT_FROM_TRAINED_ENOUGH) and d["metrics"].get("balanced_accuracy", 0.0) <= bar):
        return "not trained enough"
    return None


def shown(docs: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(shown, left_out)``, split by :func:`left_out_reason`."""
    keep = [d for d in docs if left_out_reason(d) is None]
    return keep, [d for d in docs if d not in keep]


def render(docs: list[dict], results_dir: str | Path = "results") -> str:
    """The leaderboard markdown (without the README markers)."""
    results_dir = Path(results_dir)
    docs, left_out = shown(docs)
    out = []
    for task, section in (("brain_age", brain_age_section), ("classification", classification_section)):
        for dataset in sorted({d["dataset"] for d in docs if d.get("task") == task}):
            out += section(dataset, [d for d in docs if d.get("task") == task and d["dataset"] == dataset], results_dir)
            out.append("")
    if not out:
        out = ["_no results yet_", ""]
    out += _note_lines(docs)
    single = sorted(d["_file"] for d in left_out if left_out_reason(d) == "single-split")
    if single:
        out += [f"Not shown (single-split results of the earlier protocol): {', '.join(single)}.", ""]
    weak = [d for d in left_out if left_out_reason(d) == "not trained enough"]
    if weak:
        out += ["Not shown, not trained enough (balanced accuracy at or below "
                + ", ".join(f"{v:.2f} on {k}" for k, v in TRAINED_ENOUGH.items()) + "; numbers in the method's README): "
                + "; ".join(f"{d.get('method_label', d['method'])} on {d['dataset']}, {_profile(d)}: balanced accuracy "
                            f"{_f(d['metrics']['balanced_accuracy'], 3)}" for d in sorted(weak, key=lambda d: d["_file"]))
                + ".", ""]
    noise = results_dir / "noise_floor.json"
    if noise.is_file():
        out += noise_floor_lines(json.loads(noise.read_text())) + [""]
    devices = sorted({d.get("device", "?") for d in docs})
    out += [f"Devices: {', '.join(devices)}. Generated by `python scripts/make_leaderboard.py` from "
            f"`results/*.json` and `results/predictions/`; do not edit by hand."]
    return "\n".join(out) + "\n"


def _note_lines(docs: list[dict]) -> list[str]:
    """The result files' notes, each said once: a note every row of a dataset carries goes under the
    dataset, the others under their method."""
    shared: dict[str, set[str]] = {}
    for dataset in sorted({d["dataset"] for d in docs}):
        rows = [set(d.get("notes", [])) for d in docs if d["dataset"] == dataset]
        if len(rows) > 1:
            shared[dataset] = set.intersection(*rows)
    per_method: dict[str, set[str]] = {}
    for d in docs:
        own = set(d.get("notes", [])) - shared.get(d["dataset"], set())
        if own:
            per_method.setdefault(d.get("method_label", d["method"]), set()).update(own)
    if not per_method and not any(shared.values()):
        return []
    lines = ["Notes carried by the result files (each said once):", ""]
    lines += [f"- every row on {dataset}: {n}" for dataset, ns in shared.items() for n in sorted(ns)]
    lines += [f"- {label}: {n}" for label in sorted(per_method) for n in sorted(per_method[label])]
    return lines + [""]


def noise_floor_lines(doc: dict) -> list[str]:
    """The seed-to-seed spread of ``results/noise_floor.json`` (scripts/noise_floor.py)."""
    lines = [f"Noise floor ({doc['dataset']}, fold {doc['fold']}, seeds {', '.join(map(str, doc['seeds']))}; test MAE "
             "of the same method and data with only the seed changed):", ""]
    for method, r in sorted(doc["methods"].items()):
        trained = r.get("trained_seeds", doc["seeds"])
        note = (f" (trained with seeds {', '.join(map(str, trained))}: a dead-output retry repeated a seed, so fewer "
                "distinct models)") if len(set(trained)) < len(trained) else ""
        commit = str(r.get("commit", doc.get("commit", "?")))[:8]
        lines.append(f"- {method}: MAE {', '.join(_f(v) for v in r['mae'])}; SD {_f(r['sd'])} y (commit {commit}){note}")
    return lines


def main(results_dir: str = "results", readme: str = "README.md", method_readmes: bool = True,
         allow_dirty: bool = False) -> None:
    """Write ``<results_dir>/LEADERBOARD.md`` and replace the generated README blocks.

    Args:
        results_dir: folder with ``<method>__<dataset>.json`` files.
        readme: README whose block between ``<!-- leaderboard:start -->`` and
            ``<!-- leaderboard:end -->`` is replaced (skipped when the file has no markers).
        method_readmes: also fill ``<!-- results:start -->``/``<!-- results:end -->`` in each
            method's README (next to ``readme``) with that method's rows.
        allow_dirty: publish rows made by code with uncommitted changes (a local look; the
            committed leaderboard never holds one).

    Raises:
        ValueError: a shown result file made by code with uncommitted changes, unless ``allow_dirty``.
    """
    docs = load_results(results_dir)
    dirty = [d["_file"] for d in shown(docs)[0] if str(d.get("commit", "")).endswith("-dirty")]
    if dirty and not allow_dirty:
        raise ValueError(f"result files from uncommitted code cannot be published (commit the code and rerun, or "
                         f"--allow_dirty for a local look): {dirty}")
    body = render(docs, results_dir)
    board = Path(results_dir) / "LEADERBOARD.md"
    text = "# Leaderboard\n\n" + body
    if not board.exists() or board.read_text() != text:
        write_text(board, text)
    replace_block(Path(readme), START, END, body)
    if method_readmes:
        root = Path(readme).parent
        for folder in sorted({d.get("readme_folder", d["method"]) for d in docs}):
            mine = [d for d in docs if d.get("readme_folder", d["method"]) == folder]
            replace_block(root / folder / "README.md", "<!-- results:start -->", "<!-- results:end -->",
                          render(mine, results_dir))
    print(f"wrote {board}")


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="scripts/make_leaderboard.py")
