"""Every command-line entry point answers --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

COMMANDS = [
    ["-m", "resnet3d.train", "train", "--help"],
    ["-m", "resnet3d.train", "test", "--help"],
    ["-m", "resnet3d.predict", "--help"],
    ["-m", "midslice_classifier.train", "train", "--help"],
    ["-m", "midslice_classifier.train", "test", "--help"],
    ["-m", "midslice_classifier.from_brain_age", "--help"],
    ["scripts/make_splits.py", "--help"],
    ["scripts/make_leaderboard.py", "--help"],
    ["scripts/fetch_data.py", "--help"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:3]))
def test_help(args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PAGER": "cat", "TERM": "dumb"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "NAME" in text or "usage" in text.lower()
    assert "Traceback" not in text


def test_fetch_data_offline_fails_cleanly(tmp_path, monkeypatch):
    from scripts import fetch_data

    monkeypatch.setattr(fetch_data, "OPENNEURO_BASE", "http://127.0.0.1:9/unreachable")
    monkeypatch.setitem(fetch_data.FETCHERS, "ds000228",
                        lambda partial: fetch_data.fetch_ds000228(partial, base="http://127.0.0.1:9/unreachable"))
    with pytest.raises(fetch_data.FetchError, match="Are you online"):
        fetch_data.main(datasets="ds000228", dest=str(tmp_path))
    assert list(tmp_path.iterdir()) == [], "no half-written dataset is left behind"


def test_fetch_data_links_local_copy(tmp_path):
    from scripts import fetch_data

    (tmp_path / "src" / "ds000228").mkdir(parents=True)
    fetch_data.main(dest=str(tmp_path / "data"), **{"from": str(tmp_path / "src")})
    assert (tmp_path / "data" / "ds000228").is_symlink()
