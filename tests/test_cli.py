"""Every command-line entry point answers --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CLIS = [
    ("resnet3d.train", ["train"]), ("resnet3d.train", ["test"]), ("common.predict", []),
    ("midslice_classifier.train", ["train"]), ("midslice_classifier.train", ["test"]),
    ("midslice_classifier.from_brain_age", []),
    ("baselines.oasis_resblock.train", ["train"]), ("baselines.oasis_resblock.train", ["test"]),
    ("baselines.vgg16_svr.train", []), ("baselines.reference", ["mean_age"]), ("baselines.reference", ["roi_ridge"]),
    ("scripts.make_splits", []), ("scripts.make_leaderboard", []), ("scripts.fetch_data", []),
    ("scripts.check_resume", []), ("scripts.bench", []), ("scripts.compare_rerun", []),
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


def test_help_as_a_real_command_shows_the_profile_defaults():
    """One real entry point end to end: ``python -m resnet3d.train train --help`` lists the flags and the
    profiles' defaults."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PAGER": "cat", "TERM": "dumb"}
    proc = subprocess.run([sys.executable, "-m", "resnet3d.train", "train", "--help"], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--image_size" in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    table = proc.stdout.split("PROFILE DEFAULTS", 1)[1]
    assert "--epochs" in table and "100" in table and "16" in table, table


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


#: Every wrapper a user runs (the sourced helpers and the test command itself aside).
WRAPPERS = sorted(str(p.relative_to(REPO)) for p in REPO.glob("**/*.sh") if ".venv" not in p.parts
                  and str(p.relative_to(REPO)) not in {"scripts/env.sh", "scripts/setup_env.sh", "scripts/method_args.sh",
                                                       "scripts/test.sh"})


def _tree_state() -> tuple:
    """What a command must not change: tracked and untracked files, and every file under runs/ and results/."""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    files = sorted((str(p), p.stat().st_mtime_ns) for d in ("runs", "results") for p in (REPO / d).rglob("*") if p.is_file())
    return status, files


#: Wrappers run for real (each a cold interpreter importing torch and MONAI, about 5 s): one per way a wrapper
#: hands --help to Python (run_cli, test_run, a script path). The others run with a recording stand-in for
#: the venv's python, which checks the bash side; the Python side of their help is ``test_help``, in process.
REAL_WRAPPERS = ("resnet3d/train.sh", "resnet3d/test.sh", "scripts/gpu_check.sh")

#: The stand-in python: answers setup_env.sh's site-packages query, records every other call as one line of
#: NUL-terminated arguments.
_RECORDING_PYTHON = """#!/usr/bin/env bash
if [[ "${1:-}" == -c ]]; then echo "$BRAINMRI_FAKE_SITE"; exit 0; fi
printf '%s\\0' "$@" >> "$BRAINMRI_PYTHON_CALLS"; printf '\\n' >> "$BRAINMRI_PYTHON_CALLS"
"""


def _recording_venv(root: Path) -> Path:
    """A virtualenv folder that setup_env.sh accepts as installed (requirements stamp and torchvision check
    present) whose ``bin/python`` is the recording stand-in."""
    import hashlib

    (root / "bin").mkdir(parents=True)
    (root / "site").mkdir()
    python = root / "bin" / "python"
    python.write_text(_RECORDING_PYTHON)
    python.chmod(0o755)
    (root / ".requirements.sha256").write_text(hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest() + "\n")
    (root / ".torchvision_hook_checked").touch()
    return root


def _cli_of_call(argv: list[str]) -> tuple[str, list[str]]:
    """``(module, command)`` of a recorded ``python -m MODULE [COMMAND] [--] --help`` or
    ``python scripts/x.py [--] --help`` call."""
    if argv[0] == "-m":
        module, rest = argv[1], argv[2:]
    else:
        module, rest = argv[0].removesuffix(".py").replace("/", "."), argv[1:]
    return module, [a for a in rest if not a.startswith("-")]


@pytest.fixture(scope="module")
def wrapper_help(tmp_path_factory) -> dict:
    """`bash <wrapper> --epochs=1 --help` for every wrapper, from a fresh folder each and without an activated
    venv: ``{wrapper: (returncode, output, caller folder, recorded python calls or None when run for real)}``,
    plus the tree state before and after all of them under ``"_tree"``. They run two at a time
    (each is one mostly single-threaded Python start-up)."""
    from concurrent.futures import ThreadPoolExecutor

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "VENV")}
    env.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "RUN_NAME": "must-not-exist", "DATASET": "no_such_dataset",
                "PAGER": "cat"})

    def run(wrapper: str) -> tuple[int, str, Path, list | None]:
        cwd = tmp_path_factory.mktemp("caller")
        wrapper_env = dict(env)
        calls = None
        if wrapper not in REAL_WRAPPERS:
            venv = _recording_venv(tmp_path_factory.mktemp("venv"))
            calls = venv / "calls"
            calls.touch()
            wrapper_env.update({"VENV": str(venv), "BRAINMRI_FAKE_SITE": str(venv / "site"),
                                "BRAINMRI_PYTHON_CALLS": str(calls)})
        proc = subprocess.run(["bash", str(REPO / wrapper), "--epochs=1", "--help"], cwd=cwd, capture_output=True,
                              text=True, env=wrapper_env, timeout=300)
        recorded = None if calls is None else [line.split("\0")[:-1] for line in calls.read_text().splitlines()]
        return proc.returncode, proc.stdout + proc.stderr, cwd, recorded

    before = _tree_state()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(WRAPPERS, pool.map(run, WRAPPERS)))
    return {**results, "_tree": (before, _tree_state())}


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_every_wrapper_help_shows_help_and_changes_nothing(wrapper, wrapper_help):
    """`bash <wrapper> --epochs=1 --help`, from another folder and without an activated venv, exits 0, changes
    no file (no run folder, no result) and shows help: its own, or the help of a CLI that ``test_help``
    checks (each Python call it makes is ``python -m MODULE [COMMAND] [--] --help`` or a script's)."""
    returncode, out, cwd, calls = wrapper_help[wrapper]
    assert returncode == 0, out[-2000:]
    assert "Traceback" not in out
    for call in calls or []:
        assert call[-1] == "--help", calls
        assert _cli_of_call(call) in [(m, c) for m, c in CLIS], f"{wrapper} hands --help to {call}, not in CLIS"
    if not calls:
        assert "NAME" in out and ("FLAGS" in out or "POSITIONAL" in out or "COMMANDS" in out), out[-2000:]
    before, after = wrapper_help["_tree"]
    assert after == before, "a wrapper's help changed files"
    assert list(cwd.iterdir()) == [], "help wrote into the caller's folder"


def test_recorded_calls_name_the_cli():
    """The recording stand-in's argv parsing, on the three forms the wrappers use."""
    assert _cli_of_call(["-m", "tsan.train", "train_first_stage", "--", "--help"]) == ("tsan.train", ["train_first_stage"])
    assert _cli_of_call(["-m", "common.predict", "--help"]) == ("common.predict", [])
    assert _cli_of_call(["scripts/bench.py", "--", "--help"]) == ("scripts.bench", [])


def _checked(module: str, command: list[str], argv: list[str]):
    import importlib

    from common.cli import _select, check_arguments

    cli = importlib.import_module(module).CLI
    fn, _, rest = _select(cli, [*command, *argv])
    return check_arguments(fn, rest, Path("/somewhere"))


@pytest.mark.parametrize("module, command", CLIS, ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_every_cli_refuses_unknown_and_short_flags_before_any_work(module, command):
    from common.cli import UsageError

    with pytest.raises(UsageError, match="unknown flag --no_such_setting"):
        _checked(module, command, ["--no_such_setting=1"])
    with pytest.raises(UsageError, match="short flags are not supported"):
        _checked(module, command, ["-x", "1"])


def test_typos_and_wrong_types_name_the_closest_flag():
    from common.cli import UsageError

    with pytest.raises(UsageError, match=r"unknown flag --epoch; did you mean --epochs\?"):
        _checked("resnet3d.train", ["train"], ["--epoch=3", "--max_per_split=4"])
    with pytest.raises(UsageError, match="--epochs takes an integer, not 'three'"):
        _checked("resnet3d.train", ["train"], ["--epochs=three"])
    with pytest.raises(UsageError, match="--lr takes a number"):
        _checked("resnet3d.train", ["train"], ["--lr", "fast"])
    with pytest.raises(UsageError, match="did you mean 'train'"):
        _checked("resnet3d.train", ["trian"], [])
    # accepted: values of the right type, booleans, None, and path flags made absolute against the caller's folder
    assert _checked("resnet3d.train", ["train"], ["--epochs", "3", "--resume", "--run_name=None", "--runs_dir=r"]) == [
        "--epochs=3", "--resume", "--run_name=None", "--runs_dir=/somewhere/r"]


def test_a_typo_fails_at_once_and_writes_nothing():
    before = _tree_state()
    proc = subprocess.run([sys.executable, "-m", "resnet3d.train", "train", "--epoch=3", "--max_per_split=4"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "error: unknown flag --epoch; did you mean --epochs? (see --help)", proc.stderr
    assert _tree_state() == before


def test_expected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    cmd = [sys.executable, "-m", "resnet3d.train", "test", f"--run_dir={tmp_path / 'nowhere'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "config.json" in proc.stderr
    debug = subprocess.run([*cmd, "--debug"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_smoke_runs_variants_and_dirty_trees_never_replace_published_results(monkeypatch, tmp_path):
    from common import runlog
    from common.experiment import publication
    from resnet3d.train import PROFILES

    repo_results = REPO / "results"
    monkeypatch.setattr(runlog, "git_commit", lambda: "abc")
    assert publication(True, repo_results, PROFILES, "cpu", {"epochs": None}) is True
    assert publication(True, repo_results, PROFILES, "cpu", {}, max_per_split=4) is False, "smoke: not published"
    assert publication(True, repo_results, PROFILES, "cpu", {"epochs": 3}) is False, "fewer epochs: not published"
    with pytest.raises(ValueError, match=r"--lr=0.1 \(profile: 0.0003\) differ from the cpu profile"):
        publication(True, repo_results, PROFILES, "cpu", {"lr": 0.1})
    monkeypatch.setattr(runlog, "git_commit", lambda: "abc-dirty")
    with pytest.raises(ValueError, match="uncommitted changes"):
        publication(True, repo_results, PROFILES, "cpu", {})
    # any other results folder takes anything
    assert publication(True, tmp_path, PROFILES, "cpu", {"lr": 0.1}, max_per_split=4) is True


def test_python_entry_points_work_from_any_folder_with_the_venv_python(tmp_path):
    """The set-up puts the repository on the venv's import path, so `.venv/bin/python -m ...` needs no
    activation and no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    venv_python = REPO / ".venv" / "bin" / "python"
    if not venv_python.exists():
        pytest.skip("no .venv here (bash scripts/test.sh creates it)")
    proc = subprocess.run([str(venv_python), "-m", "common.predict", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, env={**env, "PAGER": "cat"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_results_and_docs_written_by_runs_do_not_make_the_code_dirty(tmp_path):
    """The main job publishes results/ and README blocks as it goes; the next method must still see
    clean code (else its row is marked -dirty and refused)."""
    from common.runlog import OUTPUT_PATHSPECS

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    for rel in ("results/r.json", "README.md", "m/README.md", "alz_cnn/figures/f.png", "m/code.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("a\n")
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    for rel in ("results/r.json", "README.md", "m/README.md", "alz_cnn/figures/f.png"):
        (tmp_path / rel).write_text("b\n")
    status = ["status", "--porcelain", "--untracked-files=no", "--", ".", *OUTPUT_PATHSPECS]
    assert git(*status).strip() == ""
    (tmp_path / "m" / "code.py").write_text("b\n")
    assert "m/code.py" in git(*status)
