"""Device selection, the torchvision hook, crash-safe writes, data-root discovery, run logging."""

from __future__ import annotations

import pytest
import torch

from common import device as device_mod
from common.io import atomic_write, write_json
from common.paths import DataRootNotFound, find_data_root


def test_select_device_cpu_and_errors(monkeypatch):
    assert device_mod.select_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_mod.select_device("auto").type in {"cpu", "mps"}
    with pytest.raises(ValueError, match="CUDA is not available"):
        device_mod.select_device("cuda")


def test_torchvision_models_import():
    """The set-up's torchvision hook (or a matching build) makes the pure-Python models usable."""
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    assert model.fc.in_features == 512


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = write_json(tmp_path / "r.json", {"a": 1})

    def boom(fh):
        fh.write("partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"], "no temporary file left behind"


def test_write_json_turns_nan_into_null(tmp_path):
    path = write_json(tmp_path / "x.json", {"v": float("nan"), "t": torch.tensor(2.5)})
    assert '"v": null' in path.read_text() and '"t": 2.5' in path.read_text()


def test_find_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    assert find_data_root() == tmp_path
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "missing"))
    with pytest.raises(DataRootNotFound, match="fetch_data.py"):
        find_data_root()
    assert find_data_root(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("value, expected", [("64,128", (64, 128)), ((64, 128), (64, 128)), (0, (0,)), ("", ()),
                                             ("0", (0,)), ([1, "2"], (1, 2))])
def test_int_tuple_accepts_what_fire_passes(value, expected):
    from common.experiment import int_tuple

    assert int_tuple(value) == expected


def test_int_tuple_rejects_text():
    from common.experiment import int_tuple

    with pytest.raises(ValueError, match="comma-separated integers"):
        int_tuple("a,b")


def test_resolve_profile_rejects_unknown_settings():
    from common.experiment import resolve_profile

    profiles = {"cpu": {"lr": 1.0, "epochs": 2}}
    assert resolve_profile(profiles, "cpu", {"lr": None, "epochs": 5}) == {"lr": 1.0, "epochs": 5}
    with pytest.raises(ValueError, match="unknown profile"):
        resolve_profile(profiles, "gpu", {})
    with pytest.raises(ValueError, match="not a profile setting"):
        resolve_profile(profiles, "cpu", {"lrr": 3})


def test_imports_run_one_way():
    """scripts/ may import method folders and common/; a method folder imports only common/ (never scripts/
    or another method); common/ imports no method (DESIGN.md, layout)."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    methods = {"tsan", "resnet3d", "baselines", "midslice_classifier", "alz_cnn"}
    wrong = []
    for folder in sorted(methods | {"common"}):
        for path in (repo / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
                for name in names:
                    top = name.split(".")[0]
                    if top == "scripts" or (top in methods and top != folder):
                        wrong.append(f"{path.relative_to(repo)} imports {name}")
    assert not wrong, wrong


def test_weights_provenance_names_the_method_of_a_repository_checkpoint(tmp_path):
    from common.pretrained import describe_weights

    torch.save({"method": "alz_resnet18", "model_state": {}}, tmp_path / "best.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "plain.pt")
    assert describe_weights(str(tmp_path / "best.pt")) == "fine-tuned from the alz_resnet18 checkpoint best.pt"
    assert describe_weights(str(tmp_path / "plain.pt")) == "state dict from plain.pt"
    assert describe_weights("none").startswith("random initialisation")


def test_progress_in_a_log_file_is_log_lines_with_counts(caplog):
    """Where stderr is not a terminal (the main job's log files), a long loop with ``log_every_s``
    logs its count and ETA as plain lines; without it, nothing is drawn or logged."""
    import logging

    from common.runlog import progress

    with caplog.at_level(logging.INFO, logger="progress"):
        assert list(progress(range(4), desc="VGG16 features", unit="scan", log_every_s=1e-6)) == [0, 1, 2, 3]
        bar = progress(total=2, desc="preprocess", leave=False, log_every_s=1e-6)
        bar.update()
        bar.update()
        bar.close()
        list(progress(range(3), desc="quiet"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("VGG16 features: 0/4 done") and lines[-1].startswith("preprocess: 2/2 done"), lines
    assert any(line.startswith("VGG16 features: 4/4 done") for line in lines), lines
    assert not any("quiet" in line or "\r" in line or "\x1b" in line for line in lines), lines


def test_run_config_names_the_folds_of_a_cross_validated_run(tmp_path):
    """A test/analyse command given a cross-validated run instead of one of its folds says which folds to pass."""
    from common.runlog import run_config

    (tmp_path / "run" / "fold0").mkdir(parents=True)
    (tmp_path / "run" / "fold1").mkdir()
    (tmp_path / "run" / "fold0.dead-seed42").mkdir()  # TSAN's dead-output retry moved aside: not a fold
    for name in ("fold0", "fold1", "fold0.dead-seed42"):
        (tmp_path / "run" / name / "config.json").write_text('{"method": "resnet3d"}')
    assert run_config(tmp_path / "run" / "fold1") == {"method": "resnet3d"}
    with pytest.raises(FileNotFoundError, match=r"cross-validated run: pass one of its folds \(fold0, fold1\)"):
        run_config(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"\(no config.json\)$"):
        run_config(tmp_path)
