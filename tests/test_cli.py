"""Every command-line entry point answers --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CLIS = [
    ("resnet3d.train", ["train"]), ("resnet3d.train", ["test"]), ("resnet3d.predict", []),
    ("midslice_classifier.train", ["train"]), ("midslice_classifier.train", ["test"]),
    ("midslice_classifier.from_brain_age", []),
    ("baselines.oasis_resblock.train", ["train"]), ("baselines.oasis_resblock.train", ["test"]),
    ("baselines.vgg16_svr.train", []), ("baselines.reference", ["mean_age"]), ("baselines.reference", ["roi_ridge"]),
    ("scripts.make_splits", []), ("scripts.make_leaderboard", []), ("scripts.fetch_data", []),
    ("scripts.check_resume", []), ("scripts.bench", []),
    ("alz_cnn.train", ["train"]), ("alz_cnn.train", ["test"]), ("alz_cnn.train", ["compare"]),
    ("alz_cnn.train", ["summarize"]),
    ("tsan.train", ["pretrain_sorter"]), ("tsan.train", ["train_first_stage"]), ("tsan.train", ["train_second_stage"]),
    ("tsan.train", ["test_first_stage"]), ("tsan.train", ["test_second_stage"]), ("tsan.train", ["analyse_second_stage"]),
]


@pytest.mark.parametrize("module, command", CLIS, ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_help(module, command, capsys):
    """Every fire CLI prints its help (from the docstrings) and exits 0."""
    import importlib

    import fire

    cli = importlib.import_module(module).CLI
    with pytest.raises(SystemExit) as exit_info:
        fire.Fire(cli, command=[*command, "--help"], name=module)
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err  # fire writes help to stderr
    assert "NAME" in text and ("FLAGS" in text or "COMMANDS" in text or "POSITIONAL" in text)


def test_help_as_a_real_command():
    """One real entry point end to end: ``python -m resnet3d.train train --help``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PAGER": "cat", "TERM": "dumb"}
    proc = subprocess.run([sys.executable, "-m", "resnet3d.train", "train", "--help"], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--image_size" in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr


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
    fetch_data.main(dest=str(tmp_path / "data"), from_dir=str(tmp_path / "src"))
    assert (tmp_path / "data" / "ds000228").is_symlink()
    (tmp_path / "src" / "ixi_hh").mkdir()
    proc = subprocess.run([sys.executable, "scripts/fetch_data.py", "--from", str(tmp_path / "src"),
                           f"--dest={tmp_path / 'data'}"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "ixi_hh").is_symlink(), "--from DIR works on the command line"


@pytest.mark.parametrize("wrapper, flag", [("resnet3d/train.sh", "--image_size"),
                                           ("baselines/vgg16_svr/train.sh", "--keep_triplets"),
                                           ("alz_cnn/compare_transfer.sh", "--models"),
                                           ("tsan/train_first_stage.sh", "--nb_filter"),
                                           ("tsan/train_second_stage.sh", "--variant")])
def test_wrapper_help_shows_help_and_never_trains(wrapper, flag, tmp_path):
    """`bash <method>/train.sh --help` must print the CLI help, not start a run with the defaults."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RUN_NAME": "must-not-exist", "DATASET": "no_such_dataset"}
    proc = subprocess.run(["bash", wrapper, "--epochs=1", "--help"], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert flag in proc.stdout + proc.stderr
    assert not list(REPO.glob("runs/*/*/must-not-exist")), "no run folder was created"
