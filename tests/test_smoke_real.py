"""End-to-end smoke run on the real data in ../shared/data: a few subjects, one epoch, small size.

Skipped, with the reason shown, only when that folder is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import torch

from common import predict as predict_cli
from common.cv import pool_folds
from resnet3d import train as train_cli
from tests.conftest import fold_result

REPO_RESULTS = "results"


def test_resnet3d_smoke_on_real_ixi(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(shared_data))
    results = tmp_path / "results"
    shutil.copytree(f"{REPO_RESULTS}/splits", results / "splits")
    run_dir = train_cli.train(dataset="ixi_hh", profile="cpu", epochs=1, batch_size=2, image_size=32, spacing_mm=6.0,
                              widths="8,16,16,32", max_per_split=4, pipeline="monai", run_name="smoke", fold=0,
                              runs_dir=str(tmp_path / "runs"),
                              results_dir=str(results), cache_dir=str(tmp_path / "cache"))
    run = tmp_path / "runs" / "resnet3d" / "ixi_hh" / "smoke" / "fold0"
    assert run_dir == str(run)
    for name in ["config.json", "metrics.csv", "best.pt", "last.pt", "predictions_val.csv", "predictions_test.csv",
                 "metrics_test.json", "scatter_test.png", "training_curves.png", "exclusions.csv"]:
        assert (run / name).exists(), name
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard events"
    result = fold_result(run, "resnet3d__ixi_hh")
    assert result["n_subjects"] == {"train": 4, "val": 4, "test": 4} and result["fold"] == 0
    assert result["profile"] == "cpu" and result["split_sha256"]
    test = pd.read_csv(run / "predictions_test.csv")
    assert len(test) == 4 and test["predicted_age"].notna().all()
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["bias_correction"]["fitted_on"] == "val"
    assert ckpt["preprocess"]["shape"] == [32, 32, 32] or tuple(ckpt["preprocess"]["shape"]) == (32, 32, 32)

    # Prediction for users: a labelled scan, an unlabeled one, and a broken file (reported, not fatal).
    manifest = pd.read_csv(shared_data / "ixi_hh" / "IXI_Demog.csv")
    t1 = shared_data / "ixi_hh" / "T1"
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes((t1 / "IXI012-HH-1211_T1.nii.gz").read_bytes()[:5000])
    table = pd.DataFrame({
        "image_path": [str(t1 / "IXI012-HH-1211_T1.nii.gz"), str(t1 / "IXI013-HH-1212_T1.nii.gz"),
                       str(t1 / "IXI637-HH-2785_T1.nii.gz"), str(broken)],
        "age": [manifest.set_index("MRID").loc["IXI012-HH-1211", "Age"],
                manifest.set_index("MRID").loc["IXI013-HH-1212", "Age"], "", "40"],
    })
    table.to_csv(tmp_path / "inputs.csv", index=False)
    out = predict_cli.main(model_path=str(run / "best.pt"), inputs=str(tmp_path / "inputs.csv"),
                           output_dir=str(tmp_path / "pred"), cache_dir=str(tmp_path / "cache"))
    pred = pd.read_csv(out)
    assert len(pred) == 3 and pred["predicted_age_corrected"].notna().all()
    excluded = pd.read_csv(tmp_path / "pred" / "excluded.csv")
    assert len(excluded) == 1 and "truncated" in excluded["reason"].iloc[0]
    assert (tmp_path / "pred" / "metrics.json").exists() and (tmp_path / "pred" / "scatter.png").exists()


def test_midslice_and_brain_age_groups_smoke_on_real_ds000228(shared_data, tmp_path, monkeypatch):
    from midslice_classifier import from_brain_age
    from midslice_classifier import train as midslice_cli

    monkeypatch.setenv("DATA_ROOT", str(shared_data))
    results = tmp_path / "results"
    shutil.copytree(f"{REPO_RESULTS}/splits", results / "splits")
    run = midslice_cli.train(epochs=1, max_per_split=4, run_name="smoke", fold=0, runs_dir=str(tmp_path / "runs"),
                             results_dir=str(results), cache_dir=str(tmp_path / "cache"))
    for name in ["best.pt", "metrics.csv", "predictions_test.csv", "metrics_test.json", "confusion_test.png"]:
        assert (tmp_path / "runs" / "midslice_resnet18" / "ds000228" / "smoke" / "fold0" / name).exists(), name
    assert (tmp_path / "cache" / "midslice" / "montage.png").exists()
    doc = fold_result(run, "midslice_resnet18__ds000228")
    assert doc["task"] == "classification" and doc["metrics"]["n"] == 4
    assert set(pd.read_csv(f"{run}/predictions_test.csv").columns) == {
        "participant_id", "label", "pred", "prob_Ages3-5", "prob_Ages7-12", "prob_Adults"}

    fold0 = train_cli.train(dataset="ds000228", profile="cpu", epochs=1, batch_size=2, image_size=32, spacing_mm=6.0,
                            widths="8,16,16,32", max_per_split=4, pipeline="monai", run_name="smoke", fold=0,
                            runs_dir=str(tmp_path / "runs"), results_dir=str(results), cache_dir=str(tmp_path / "cache"))
    # pooled over the one fold run here (the main job pools all five)
    (pooled,) = pool_folds([fold0], Path(fold0).parent, results)
    assert json.loads(pooled.read_text())["n_subjects"]["out_of_fold"] == 4
    from_brain_age.main(results_dir=str(results))
    derived = json.loads((results / "resnet3d_agegroups__ds000228.json").read_text())
    assert derived["metrics"]["n"] == 4 and derived["readme_folder"] == "midslice_classifier"
    shutil.rmtree(Path(fold0).parent)  # another machine: the committed predictions, no run folder
    from_brain_age.main(results_dir=str(results))
    again = json.loads((results / "resnet3d_agegroups__ds000228.json").read_text())
    assert again["metrics"] == derived["metrics"]
