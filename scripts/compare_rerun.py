"""Compare re-run result rows with the committed version of the same rows, subject by subject.

A rerun of a method (new code, another machine, another seed) replaces its result file and its
out-of-fold predictions. Whether the new row differs from the old one is a paired question on the
same subjects, not a comparison of two confidence intervals. For every row in ``results/`` whose
predictions differ from those at a git revision (default ``HEAD``), this prints one line:

- brain age: MAE before -> after, the paired difference of absolute errors (after - before; negative:
  the rerun is better) with its paired bootstrap 95% CI and the Wilcoxon signed-rank p
  (:func:`common.metrics.paired_difference`), the mean |change of the predicted age| and the
  correlation between the two sets of predictions;
- classifiers: accuracy and balanced accuracy before -> after, the paired difference of error rates
  with its CI and the exact McNemar test (:func:`common.metrics.mcnemar_test`).

    python scripts/compare_rerun.py                 # the working tree's results against HEAD
    python scripts/compare_rerun.py --rev=30cdca1   # against any commit
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import run as run_cli  # noqa: E402
from common.metrics import mcnemar_test, paired_difference  # noqa: E402
from scripts.make_leaderboard import _abs_error, _ci, _f, _keyed, _p, _zero_one, load_results, read_predictions  # noqa: E402


def _git_show(results_dir: Path, rev: str, relpath: str) -> str | None:
    """The text of ``results_dir/relpath`` at ``rev``, or None where that revision has no such file.

    Raises:
        ValueError: ``results_dir`` is not inside a git repository, or ``rev`` names no commit.
    """
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(results_dir), *args], capture_output=True, text=True)

    prefix = git("rev-parse", "--show-prefix")
    if prefix.returncode:
        raise ValueError(f"{results_dir} is not inside a git repository: {prefix.stderr.strip()}")
    if git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode:
        raise ValueError(f"--rev={rev!r} names no commit of the repository holding {results_dir}")
    shown = git("show", f"{rev}:{prefix.stdout.strip()}{relpath}")
    return shown.stdout if shown.returncode == 0 else None


def compare_row(new_doc: dict, old_doc: dict, new_table: pd.DataFrame, old_table: pd.DataFrame) -> dict:
    """Paired statistics of one rerun row against its earlier version, on the subjects both predict.

    Args:
        new_doc, old_doc: the two result files (``results/<method>__<dataset>.json``).
        new_table, old_table: their per-subject predictions (``participant_id``, optional
            ``session_id``, or ``image`` where a dataset has no subject IDs; ``age`` and
            ``predicted_age`` in years for brain age, ``label`` and ``pred`` for classifiers).

    Returns:
        ``n`` (common subjects), ``before``/``after`` (MAE in years, or accuracy and balanced accuracy),
        ``paired`` (:func:`common.metrics.paired_difference` of after - before), and for brain age
        ``mean_abs_change`` (years) and ``r`` between the predictions, for classifiers ``mcnemar``.

    Raises:
        ValueError: fewer than 2 subjects in common.
    """
    new_t, old_t = _keyed(new_table), _keyed(old_table)
    common = new_t.index.intersection(old_t.index)
    if len(common) < 2:
        raise ValueError(f"{new_doc['method']} on {new_doc['dataset']}: fewer than 2 subjects in common")
    new_t, old_t = new_t.loc[common], old_t.loc[common]
    out = {"n": len(common), "commit_before": str(old_doc.get("commit", "?"))[:8],
           "commit_after": str(new_doc.get("commit", "?"))[:8]}
    if new_doc.get("task") == "classification":
        new_err, old_err = _zero_one(new_t), _zero_one(old_t)
        out.update(before={k: old_doc["metrics"].get(k) for k in ("accuracy", "balanced_accuracy")},
                   after={k: new_doc["metrics"].get(k) for k in ("accuracy", "balanced_accuracy")},
                   paired=paired_difference(new_err, old_err), mcnemar=mcnemar_test(new_err == 0, old_err == 0))
    else:
        new_err, old_err = _abs_error(new_t), _abs_error(old_t)
        new_pred, old_pred = new_t["predicted_age"].to_numpy(float), old_t["predicted_age"].to_numpy(float)
        out.update(before={"mae": float(old_err.mean())}, after={"mae": float(new_err.mean())},
                   paired=paired_difference(new_err, old_err),
                   mean_abs_change=float(np.mean(np.abs(new_pred - old_pred))),
                   r=float(np.corrcoef(new_pred, old_pred)[0, 1]) if np.std(new_pred) * np.std(old_pred) > 0
                   else float("nan"))
    return out


def main(rev: str = "HEAD", results_dir: str = "results") -> str:
    """A markdown table per task of every result row whose predictions differ from ``rev``'s (the
    command line prints it).

    Args:
        rev: the git revision holding the earlier rows (a commit, a tag, ``HEAD~3``...).
        results_dir: the result folder (inside a git checkout) with the new rows.

    Returns:
        The markdown (rows unchanged since ``rev``, rows new since ``rev`` and rows whose ``rev``
        version has no predictions file are listed by name).

    Raises:
        ValueError: ``results_dir`` is not in a git checkout or ``rev`` names no commit.
        FileNotFoundError: ``results_dir`` does not exist.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no result folder at {root}")
    regression, classification, unchanged, new, unpaired = [], [], [], [], []
    for doc in load_results(root):
        if not doc.get("predictions") or not (root / doc["predictions"]).is_file():
            continue
        name = f"{doc['method']} on {doc['dataset']}"
        old_text = _git_show(root, rev, doc["predictions"])
        old_json = _git_show(root, rev, doc["_file"])
        if old_json is None:
            new.append(name)
            continue
        if old_text is None:  # the row existed, without per-subject predictions to pair with
            unpaired.append(name)
            continue
        new_text = (root / doc["predictions"]).read_text()
        if new_text == old_text:
            unchanged.append(name)
            continue
        s = compare_row(doc, json.loads(old_json), read_predictions(io.StringIO(new_text)),
                        read_predictions(io.StringIO(old_text)))
        d = s["paired"]
        lead = [doc["method"], doc["dataset"], str(s["n"]), f"{s['commit_before']} → {s['commit_after']}"]
        if doc.get("task") == "classification":
            b, a = s["before"], s["after"]
            classification.append(lead + [
                f"{_f(b['accuracy'], 3)} → {_f(a['accuracy'], 3)}",
                f"{_f(b['balanced_accuracy'], 3)} → {_f(a['balanced_accuracy'], 3)}",
                f"{d['delta']:+.3f}{_ci(d['delta_ci95'])}",
                f"{s['mcnemar']['only_b']} / {s['mcnemar']['only_a']}", _p(s["mcnemar"]["p"])])
        else:
            regression.append(lead + [
                f"{s['before']['mae']:.2f} → {s['after']['mae']:.2f}", f"{d['delta']:+.2f}{_ci(d['delta_ci95'])}",
                _p(d["wilcoxon_p"]), f"{s['mean_abs_change']:.2f}", _f(s["r"], 3)])
    lines = [f"Rerun rows against {rev}: paired on the subjects both versions predict (after - before; "
             "negative: the rerun is better)."]
    if regression:
        lines += ["", "| method | dataset | subjects | commits | MAE before → after (y) | paired ΔMAE [95% CI] "
                      "| Wilcoxon p | mean abs change of predicted age (y) | r between predictions |",
                  "|" + "---|" * 9] + ["| " + " | ".join(r) + " |" for r in regression]
    if classification:
        lines += ["", "| method | dataset | subjects | commits | accuracy before → after | balanced accuracy "
                      "before → after | paired Δ error rate [95% CI] | right only before / only after "
                      "| McNemar p |",
                  "|" + "---|" * 9] + ["| " + " | ".join(r) + " |" for r in classification]
    if not regression and not classification:
        lines += ["", "No row's predictions differ."]
    if new:
        lines += ["", f"New since {rev} (nothing to pair with): {', '.join(new)}."]
    if unpaired:
        lines += ["", f"Not paired, the {rev} row kept no per-subject predictions: {', '.join(unpaired)}."]
    if unchanged:
        lines += ["", f"Unchanged: {', '.join(unchanged)}."]
    return "\n".join(lines)


#: The command-line interface (fire).
CLI = main

if __name__ == "__main__":
    run_cli(CLI, name="scripts/compare_rerun.py")
