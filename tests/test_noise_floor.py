"""scripts/noise_floor.py: the seed-to-seed SD of the test MAE, the main job's seed-42 fold model
reused, and the leaderboard line it feeds."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from scripts import make_leaderboard, noise_floor


def _fake_trainer(calls: list):
    def train(*, dataset, seed, fold, run_name, runs_dir, **_):
        run = Path(runs_dir) / "fake" / dataset / run_name / f"fold{fold}"
        run.mkdir(parents=True, exist_ok=True)
        trained = seed + 1000 if seed == 44 else seed  # seed 44 "died" and was retrained with its retry seed
        (run / "config.json").write_text(json.dumps({"git_commit": "c0ffee1", "seed": trained}))
        (run / "metrics_test.json").write_text(json.dumps({"raw": {"mae": 5.0 + seed - 42}}))
        calls.append(seed)
        return str(run)
    return train


def test_noise_floor_sd_over_seeds_and_reuse(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(noise_floor, "git_commit", lambda: "c0ffee1")
    monkeypatch.setitem(noise_floor.TRAINERS, "fake", ("fake_module", "train"))
    monkeypatch.setattr(noise_floor.importlib, "import_module", lambda name: types.SimpleNamespace(train=_fake_trainer(calls)))
    main_fold = tmp_path / "runs" / "fake" / "ixi_hh" / "main-cpu" / "fold0"  # the main job's finished seed-42 model
    main_fold.mkdir(parents=True)
    (main_fold / "config.json").write_text(json.dumps({"git_commit": "c0ffee1", "seed": 42}))
    (main_fold / "metrics_test.json").write_text(json.dumps({"raw": {"mae": 7.0}}))
    dirs = dict(runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))
    doc = noise_floor.main(methods="fake", seeds="42,43,44", **dirs)
    assert calls == [43, 44], "seed 42 is the main job's fold model"
    r = doc["methods"]["fake"]
    assert r["mae"] == [7.0, 6.0, 7.0] and r["sd"] == pytest.approx(np.std([7.0, 6.0, 7.0], ddof=1))
    assert r["trained_seeds"] == [42, 43, 1044]
    assert json.loads((tmp_path / "results" / "noise_floor.json").read_text()) == doc
    noise_floor.main(methods="fake", seeds="42,43,44", **dirs)
    assert calls == [43, 44], "finished seeds of the same commit are reused, a retried one too"
    lines = make_leaderboard.noise_floor_lines(doc)
    assert any("fake: MAE 7.00, 6.00, 7.00; SD 0.58 y" in line for line in lines), lines
    twice = {**doc, "methods": {"fake": {**r, "trained_seeds": [42, 43, 43]}}}
    assert any("a dead-output retry repeated a seed" in line for line in make_leaderboard.noise_floor_lines(twice))
    with pytest.raises(ValueError, match="unknown methods"):
        noise_floor.main(methods="nope", **dirs)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        noise_floor.main(methods="fake", seeds="42", **dirs)


def test_noise_floor_methods_measured_in_different_sessions_are_merged(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(noise_floor.importlib, "import_module", lambda name: types.SimpleNamespace(train=_fake_trainer(calls)))
    monkeypatch.setitem(noise_floor.TRAINERS, "fake", ("fake_module", "train"))
    monkeypatch.setitem(noise_floor.TRAINERS, "other", ("fake_module", "train"))
    dirs = dict(runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))
    monkeypatch.setattr(noise_floor, "git_commit", lambda: "aaaaaaa1")
    noise_floor.main(methods="fake", seeds="42,43", **dirs)
    monkeypatch.setattr(noise_floor, "git_commit", lambda: "bbbbbbb2")
    doc = noise_floor.main(methods="other", seeds="42,43", **dirs)
    assert sorted(doc["methods"]) == ["fake", "other"], "the method measured earlier is kept"
    assert doc["methods"]["fake"]["commit"] == "aaaaaaa1" and doc["methods"]["other"]["commit"] == "bbbbbbb2"
    lines = make_leaderboard.noise_floor_lines(doc)
    assert any("fake:" in line and "(commit aaaaaaa1)" in line for line in lines), lines
    doc = noise_floor.main(methods="other", seeds="42,44", **dirs)
    assert sorted(doc["methods"]) == ["other"], "entries of other seeds are not mixed in"
